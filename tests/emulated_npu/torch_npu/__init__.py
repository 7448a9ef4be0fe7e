"""An emulated Ascend NPU for the harness's tests: a CPU-backed `npu` device and the slice of
torch_npu's API that the harness calls. Test-only: never installed, never imported by the product
on its own; `nox -s npu-emulated` puts tests/emulated_npu on PYTHONPATH for its commands.

The device. PyTorch's PrivateUse1 backend is renamed `npu` through its Python-backend route
(`torch.utils.backend_registration._setup_privateuseone_for_python_backend`). A tensor on it is a
wrapper subclass that carries sizes, strides and storage offset like a real device tensor and holds
a CPU tensor with the same layout; every operator on such tensors, and every factory asked for
device="npu" (the boxed PrivateUse1 fallback), runs on the CPU data and wraps what it returns.
Views share their base's CPU storage, in-place and out= operators return the tensor they wrote,
`.grad` accumulates through the autograd engine, and `torch.library` custom operators run their
own kernels with npu tensors. An operator mixing an npu tensor with a CPU tensor that is not a
0-d scalar raises, as a real device does.

Vendor behaviours that change numbers, each as torch_npu documents or implements it:
- `.to(torch.float64)` of an npu tensor gives float32 with a one-time warning
  (Ascend/pytorch `NPUNativeOpApiFunctions::to`: "Device do not support double dtype now, dtype
  cast repalce with float."; the typo is the vendor's).
- `torch.npu.conv.allow_hf32` defaults to True (op-plugin's allow_hf32 documentation; Ascend/pytorch
  LazyInitAclops.cpp sets ALLOW_CONV_HF32 to "1" unless disabled), and while it is True the
  convolution inside `npu_deformable_conv2d` runs in HF32: float32's range with an 11-bit mantissa
  (CANN's `--allow_hf32` and ENABLE_HF32_EXECUTION pages), float32 rounded to nearest-even
  (Ascend C `SetHF32`, transMode 0).

Devices: EMULATED_NPU_DEVICES of them (torch_npu.npu), a tensor's index kept through every operator,
and tensors of two devices in one operator an error, as on a real host. The device guard is C++
(torch_npu/npu/device_guard.cpp, built on import): the Python one torch's route registers reports
one device, and the autograd engine, sizing its device queues by it, could run no backward on npu:1.
The current device is per thread there, so the engine's thread for npu:1 allocates on npu:1.

What it cannot show: the vendor kernels' own arithmetic beyond those two rules, their speed, and
anything CANN compiles.
"""

from __future__ import annotations

import os
import warnings

CANN_MISSING = "EMULATED_NPU_CANN_MISSING"
if os.environ.get(CANN_MISSING) == "1":
    # What torch_npu's own import raises on a host where CANN's set_env.sh was not sourced.
    raise ImportError("libhccl.so: cannot open shared object file: No such file or directory")

import torch
from torch.utils._pytree import tree_leaves, tree_map

from torch_npu import npu

__version__ = torch.__version__.split("+")[0] + "+emulated"
DEVICE = "npu"


class _EmulatedTensor(torch.Tensor):
    """An npu tensor: device metadata outside, a CPU tensor of the same layout inside."""

    @staticmethod
    def __new__(cls, cpu: torch.Tensor, index: int):
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls, cpu.size(), strides=cpu.stride(), storage_offset=cpu.storage_offset(),
            dtype=cpu.dtype, layout=cpu.layout, device=f"{DEVICE}:{index}", requires_grad=False,
        )
        wrapper._cpu = cpu
        npu._memory.track(wrapper, cpu)
        return wrapper

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})

    # Triton's interpreter copies a device tensor's storage to the host and back.
    def untyped_storage(self):
        return self._cpu.untyped_storage()

    # torch refuses .tolist() on a wrapper subclass; a device tensor's copies its data to the host.
    def tolist(self):
        return self._cpu.tolist()

    def __repr__(self, *, tensor_contents=None):
        return f"tensor({self._cpu.tolist()}, device='{self.device}', dtype={self.dtype})"


def _is_npu(value) -> bool:
    return isinstance(value, _EmulatedTensor)


def _on_npu_device(device) -> bool:
    return device is not None and torch.device(device).type == DEVICE


def _device_index(func, args, kwargs) -> int | None:
    """The npu index the operator runs on (None: not on the npu): its npu tensors' one index, else a
    factory's device=, whose bare "npu" is the current device. Tensors of two devices, or a CPU tensor
    beside npu ones (0-d scalars aside), raise as a real device does."""
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    indices = sorted({t.device.index for t in tensors if _is_npu(t)})
    requested = kwargs.get("device")
    if _on_npu_device(requested):
        return torch.device(requested).index if torch.device(requested).index is not None else npu.current_device()
    if not indices or func in _COPIES:
        return indices[0] if indices else None
    stray = [str(t.device) for t in tensors if not _is_npu(t) and t.dim() > 0]
    if stray or len(indices) > 1:
        first, second = f"{DEVICE}:{indices[0]}", (stray or [f"{DEVICE}:{indices[1]}"])[0]
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"{first} and {second}! (when running {func})")
    return indices[0]


_warned_double = []


def _double_to_float(func, kwargs) -> dict:
    """torch_npu's `to(dtype=float64)` on the device gives float32 (see the module docstring)."""
    if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.float64:
        if kwargs.get("device") is None or _on_npu_device(kwargs["device"]):
            if not _warned_double:
                _warned_double.append(True)
                warnings.warn("Device do not support double dtype now, dtype cast repalce with float.")
            return {**kwargs, "dtype": torch.float32}
    return kwargs


def _run(func, args, kwargs):
    """Any operator: custom ones with a kernel for every device run it; aten ones, and custom ones with
    device kernels (the emulated Ascend C library's, registered for the CPU), run on the CPU data and
    are wrapped."""
    if func.namespace not in ("aten", "prim", "prims") and torch._C._dispatch_has_kernel_for_dispatch_key(
            func.name(), "CompositeExplicitAutograd"):
        # A torch.library operator's own kernel, called with the npu tensors as they are.
        return func._op_dk(torch._C.DispatchKey.CompositeExplicitAutograd, *args, **kwargs)
    index = _device_index(func, args, kwargs)
    kwargs = _double_to_float(func, kwargs)
    to_npu = index is not None and (kwargs.get("device") is None or _on_npu_device(kwargs["device"]))
    cpu_args, cpu_kwargs = tree_map(_unwrap, (args, kwargs))
    if func in _CONVOLUTIONS and npu.conv.allow_hf32:
        cpu_args = tree_map(_round_to_hf32, cpu_args)
    result = func(*cpu_args, **cpu_kwargs)
    if not to_npu:
        return result
    return _wrap_results(func, args, result, index)


def _unwrap(value):
    if _is_npu(value):
        return value._cpu
    if isinstance(value, torch.device) and value.type == DEVICE:
        return torch.device("cpu")
    if isinstance(value, str) and value.split(":")[0] == DEVICE:
        return "cpu"
    return value


def _wrap_results(func, args, result, device_index: int):
    """In-place and out= results are the tensors written (identity matters to callers); the rest wrap."""
    written = {}
    for index, argument in enumerate(func._schema.arguments):
        alias = argument.alias_info
        if alias is not None and alias.is_write and index < len(args):
            written[frozenset(alias.before_set)] = args[index]

    def wrap(value, alias):
        if alias is not None and alias.is_write and frozenset(alias.before_set) in written:
            return written[frozenset(alias.before_set)]
        return tree_map(lambda leaf: _EmulatedTensor(leaf, device_index) if isinstance(leaf, torch.Tensor) else leaf, value)

    returns = func._schema.returns
    if len(returns) == 1:
        return wrap(result, returns[0].alias_info)
    return tuple(wrap(value, ret.alias_info) for value, ret in zip(result, returns))


# Copies between the host and the device: the one place a CPU and an npu tensor meet.
_COPIES = {torch.ops.aten.copy_.default, torch.ops.aten._copy_from.default, torch.ops.aten._copy_from_and_resize.default}


# The cube unit's operators that torch.npu.conv.allow_hf32 governs, forward and backward.
_CONVOLUTIONS = {torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default}


def _round_to_hf32(value):
    """A float32 tensor rounded to HF32: 11 explicit mantissa bits, float32's exponent, nearest even."""
    if not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
        return value
    dropped = 23 - 11
    bits = value.contiguous().view(torch.int32)
    odd = (bits >> dropped) & 1
    rounded = ((bits + (1 << (dropped - 1)) - 1 + odd) >> dropped) << dropped
    return torch.where(torch.isfinite(value), rounded.view(torch.float32), value)


def _fallback(keyset, func, *args, **kwargs):
    """Operators reaching the PrivateUse1 key with no npu tensor among their inputs: factories
    (`torch.empty(..., device="npu")`), and copies from the host."""
    if func is torch.ops.aten._copy_from.default:
        source, destination = args
        _unwrap(destination).copy_(_unwrap(source))
        return destination
    if func is torch.ops.aten.copy_.default:
        destination, source = args
        _unwrap(destination).copy_(_unwrap(source))
        return destination
    return _run(func, args, kwargs)


torch.utils.backend_registration._setup_privateuseone_for_python_backend(DEVICE, backend_module=npu)
npu.device_guard.emulated_npu_register_guard()
_fallbacks = torch.library.Library("_", "IMPL")
_fallbacks.fallback(_fallback, dispatch_key="PrivateUse1", with_keyset=True)
# torch.tensor(data, device=...) copies with the Python key excluded, and torch 2.13's boxed
# Python fallback cannot serve aten::copy_ there (an internal assert): a kernel of its own.
_kernels = torch.library.Library("aten", "IMPL")
_kernels.impl("copy_", lambda self, src, non_blocking=False: _fallback(None, torch.ops.aten.copy_.default, self, src),
              "PrivateUse1")


def _dcnv2_models():
    """tests/dcnv2_models.py: the documented semantics of the DCNv2 kernel, one source for both uses."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "dcnv2_models.py")
    spec = importlib.util.spec_from_file_location("_emulated_dcnv2_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_models = _dcnv2_models()


def npu_deformable_conv2d(self, weight, offset, bias, kernel_size, stride, padding, dilation=(1, 1, 1, 1),
                          groups=1, deformable_groups=1, modulated=True):
    """torch_npu.npu_deformable_conv2d -> (output, sampled), positional in the documented prototype's order.

    DeformableOffsets samples in float32; the convolution over the sampled windows is an npu
    convolution, so it runs in HF32 while `torch.npu.conv.allow_hf32` is True. Half inputs are
    computed in float32 and not cast back.
    """
    self, weight, offset = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (self, weight, offset))
    _, sampled = _models.npu_deformable_conv2d(self, weight, offset, None, kernel_size, stride, padding,
                                               dilation, groups, deformable_groups, modulated)
    output = torch.nn.functional.conv2d(sampled, weight, bias, stride=tuple(kernel_size), groups=groups)
    return output, sampled


def _autoload():
    """torch's `torch.backends` entry point: torch >= 2.5 imports this package during `import torch`."""
