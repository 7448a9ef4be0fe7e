"""Every item of the contract's bad-input list, for every implementation and for dcnv3()."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import impls
from impls import DCNv3Params, registry
from parity import runner
from parity.regressions import REGRESSIONS
from parity.thresholds import Thresholds

PARAMS = DCNv3Params(3, 3, 1, 1, 1, 1, 1, 1, group=2, group_channels=3)


def good(params=PARAMS, batch=2, height=5, width=6, dtype=torch.float32):
    out_h, out_w = params.output_size(height, width)
    return (
        torch.zeros(batch, height, width, params.channels, dtype=dtype),
        torch.zeros(batch, out_h, out_w, params.group * params.points * 2, dtype=dtype),
        torch.zeros(batch, out_h, out_w, params.group * params.points, dtype=dtype),
    )


def replace(tensors, index, tensor):
    tensors = list(tensors)
    tensors[index] = tensor
    return tensors


CASES = {
    "input rank": (replace(good(), 0, torch.zeros(5, 6, 6)), r"input must have rank 4"),
    "offset rank": (replace(good(), 1, torch.zeros(2, 5, 6 * 36)), r"offset must have rank 4"),
    "mask rank": (replace(good(), 2, torch.zeros(2, 5, 6, 3, 6)), r"mask must have rank 4"),
    "channels": (replace(good(), 0, torch.zeros(2, 5, 6, 7)), r"input channels C=7 != group\*group_channels = 2\*3 = 6"),
    "offset last dim": (replace(good(), 1, torch.zeros(2, 5, 6, 35)), r"offset last dimension is 35, expected group\*P\*2 = 36"),
    "mask last dim": (replace(good(), 2, torch.zeros(2, 5, 6, 17)), r"mask last dimension is 17, expected group\*P = 18"),
    "offset spatial": (replace(good(), 1, torch.zeros(2, 4, 6, 36)), r"offset spatial size is \(4, 6\), expected \(Ho, Wo\) = \(5, 6\)"),
    "mask spatial": (replace(good(), 2, torch.zeros(2, 5, 7, 18)), r"mask spatial size is \(5, 7\)"),
    "offset batch": (replace(good(), 1, torch.zeros(1, 5, 6, 36)), r"offset batch is 1, input batch is 2"),
    "mask batch": (replace(good(), 2, torch.zeros(3, 5, 6, 18)), r"mask batch is 3, input batch is 2"),
    "empty output": ((torch.zeros(1, 1, 1, 6), torch.zeros(1, 1, 1, 36), torch.zeros(1, 1, 1, 18)),
                     r"input spatial size \(H=1, W=1\) gives an empty output"),
    "offset dtype": (replace(good(), 1, torch.zeros(2, 5, 6, 36, dtype=torch.float64)), r"offset has dtype torch.float64 but input has torch.float32"),
    "mask dtype": (replace(good(), 2, torch.zeros(2, 5, 6, 18, dtype=torch.float16)), r"mask has dtype torch.float16"),
    "offset device": (replace(good(), 1, torch.zeros(2, 5, 6, 36, device="meta")), r"offset is on meta but input is on cpu"),
    "mask device": (replace(good(), 2, torch.zeros(2, 5, 6, 18, device="meta")), r"mask is on meta but input is on cpu"),
    "unsupported dtype": (good(dtype=torch.int32), r"input dtype torch.int32 is not supported by .*\(supports .*float32"),
}
EMPTY_OUTPUT_PARAMS = DCNv3Params(3, 3, 1, 1, 0, 0, 1, 1, group=2, group_channels=3)


def params_for(case):
    return EMPTY_OUTPUT_PARAMS if case == "empty output" else PARAMS


@pytest.mark.parametrize("name", impls.names())
@pytest.mark.parametrize("case", list(CASES))
def test_implementation_rejects_bad_input_before_any_work(name, case):
    tensors, message = CASES[case]
    with pytest.raises(ValueError, match=message):
        impls.get(name)(*tensors, params_for(case))


@pytest.mark.parametrize("case", list(CASES))
def test_dcnv3_rejects_bad_input(case):
    tensors, message = CASES[case]
    params = params_for(case)
    if case == "unsupported dtype":
        message = r"input dtype torch.int32 is not supported"
    with pytest.raises(ValueError, match=message):
        impls.dcnv3(*tensors, *dataclasses.astuple(params)[:11], 64, params.remove_center)


def test_a_declared_dtype_that_is_not_the_computed_one_fails_the_gate():
    """Published defect 3: a kernel's dtype list must be true. The gate runs every declared dtype of every
    implementation and fails an output of another dtype than the input's (parity/compare.checked_call)."""
    def computes_in_float32(input, offset, mask, params):
        return impls.get("grid_sample")(input.float(), offset.float(), mask.float(), params)

    port = registry.register("computes_in_float32")(computes_in_float32)
    try:
        rows = runner.run([port], [torch.float32, torch.float16], [REGRESSIONS["padding_order"]], torch.device("cpu"),
                          Thresholds.load(), progress=False, isolate=False)
    finally:
        registry.remove("computes_in_float32")
    by_dtype = rows.groupby("dtype")["pass"].all()
    assert by_dtype["float32"] and not by_dtype["float16"]
    assert rows.loc[rows["dtype"] == "float16", "error"].str.contains("a torch.float16 input gave a torch.float32 output").all()


def test_non_finite_values_propagate_rather_than_raise():
    input, offset, mask = good()
    input[0, 2, 3, 0] = float("nan")
    output = impls.get("grid_sample")(input, offset, mask.fill_(1.0 / 9), PARAMS)
    assert torch.isnan(output[0, 2, 3, 0])
    assert torch.isfinite(output[1]).all()


@pytest.mark.parametrize("name", impls.names())
def test_an_empty_batch_gives_empty_outputs_and_gradients(name):
    """N = 0 (a detection model's empty crop list) is legal: empty results, as PyTorch ops give (the output
    alone from an implementation with no backward)."""
    impl = impls.get(name)
    if not impl.available("cpu"):
        pytest.skip(impl.unavailable_reason("cpu"))
    for params in (PARAMS, dataclasses.replace(PARAMS, stride_h=2, remove_center=True)):
        for dtype in sorted(impl.dtypes, key=str):
            leaves = [t.requires_grad_(not impl.forward_only) for t in good(params, batch=0, dtype=dtype)]
            output = impl(*leaves, params)
            assert output.shape == (0, *params.output_size(5, 6), params.channels) and output.dtype == dtype
            if impl.forward_only:
                continue
            grads = torch.autograd.grad(output, leaves, torch.ones_like(output))
            assert [g.shape for g in grads] == [t.shape for t in leaves]


def test_non_finite_parameters_are_rejected_by_dcnv3():
    with pytest.raises(ValueError, match="offset_scale must be finite, got nan"):
        impls.dcnv3(*good(), *dataclasses.astuple(PARAMS)[:10], float("nan"), 64, False)
