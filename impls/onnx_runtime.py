"""DCNv3 on ONNX Runtime: the operator exported to ONNX as a deployed model has it (impls/onnx_export.py:
the mapping's plain ONNX ops, then one standard DeformConv node), run by an InferenceSession.

Every new shape and parameter set is exported once (torch.onnx.export, about 2 s here) and its session
kept, so the gate treats it like an implementation that compiles per shape. Forward only: a deployed
model has no backward. float32, the dtype ONNX Runtime's DeformConv kernels are checked in here; the
CPU provider everywhere onnxruntime >= 1.25.0 imports (1.24 has no DeformConv kernel), the CUDA provider
where onnxruntime-gpu offers it. Tensors are bound in place (I/O binding), with as many intra-op threads
as torch uses, so its timing is comparable with the others'.
"""

from __future__ import annotations

import functools

import torch

from impls import devices, onnx_export
from impls.params import DCNv3Params
from impls.registry import register

MINIMUM_VERSION = (1, 25, 0)
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@functools.lru_cache(maxsize=None)
def _load_error() -> str | None:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter writes its graph with it)
    except Exception as error:
        return f"onnxruntime and onnxscript are not importable: {devices.describe(error)}"
    found = tuple(int(part) for part in onnxruntime.__version__.split(".")[:3] if part.isdigit())
    if found < MINIMUM_VERSION:
        return f"onnxruntime {onnxruntime.__version__} has no DeformConv kernel (1.25.0 and newer have)"
    if not hasattr(torch.onnx, "ops"):
        return f"torch {torch.__version__} has no torch.onnx.ops to export DeformConv with (torch >= 2.8)"
    return None


def _requires(device: torch.device) -> str | None:
    reason = _load_error()
    if reason is None:
        import onnxruntime

        if PROVIDERS[device.type] not in onnxruntime.get_available_providers():
            return f"this onnxruntime has no {PROVIDERS[device.type]}"
    return reason


class _Operator(torch.nn.Module):
    def __init__(self, params: DCNv3Params):
        super().__init__()
        self.params = params

    def forward(self, input, offset, mask):
        return onnx_export.deform_conv(input, offset, mask, self.params)


@functools.lru_cache(maxsize=256)
def _session(input_shape, offset_shape, mask_shape, params: DCNv3Params, device: torch.device, threads: int):
    import onnxruntime

    examples = tuple(torch.zeros(shape) for shape in (input_shape, offset_shape, mask_shape))
    proto = onnx_export.export_quietly(_Operator(params).eval(), examples)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    provider = PROVIDERS[device.type]
    if device.type == "cuda":
        provider = (provider, {"device_id": device.index or 0})
    return onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=[provider])


def _bind(bind, name: str, tensor: torch.Tensor) -> None:
    import numpy

    bind(name, tensor.device.type, tensor.device.index or 0, numpy.float32, list(tensor.shape), tensor.data_ptr())


@register("onnxruntime", dtypes=(torch.float32,), device_types=("cpu", "cuda"), requires=_requires,
          priority=-10, compiles_per_shape=True, forward_only=True)
def onnx_runtime(input, offset, mask, params):
    """The operator exported to ONNX (one standard DeformConv), run by ONNX Runtime; forward only."""
    output = input.new_empty(*offset.shape[:3], params.channels)
    if output.numel() == 0:
        return output
    leaves = [t.contiguous() for t in (input, offset, mask)]
    session = _session(*(tuple(t.shape) for t in leaves), params, input.device, torch.get_num_threads())
    binding = session.io_binding()
    for node, tensor in zip(session.get_inputs(), leaves):
        _bind(binding.bind_input, node.name, tensor)
    _bind(binding.bind_output, session.get_outputs()[0].name, output)
    devices.synchronize(input.device)
    session.run_with_iobinding(binding)
    return output
