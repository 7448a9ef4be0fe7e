"""MSDA's interface, contract and gate (../shared/MSDA.md): the reference against finite differences, every
bad-input item for every implementation and for ms_deform_attn, legal but unusual input, the drop-in's
argument order, plug-ins under MSDA's own entry-point group, and mutant ports carrying the published
differences failing the regression problem that pins each."""

from __future__ import annotations

import dataclasses
import importlib.util

import pandas as pd
import pytest
import torch

from bench import traffic
from bench.cases import outside_envelope
from bench.run import main as bench_main
from bench.shapes import SUITES, MSDAShape
from bench.timing import TimingSettings
from impls import external, msda
from impls.msda import extensions, mx_driving
from impls.msda.grid_sample import grid_sample as published_core
from parity import compare, gate, runner
from parity.msda.problems import MSDAProblem
from parity.msda.regressions import REGRESSIONS
from impls.registry import UnsupportedInput
from parity.operators import OPERATORS
from parity.summary import markdown, summarise
from parity.thresholds import Thresholds
from reports.build import main as reports_main

# Those that run here (the CUDA extensions' own tests are below).
IMPLEMENTATIONS = [name for name in msda.names() if name != "reference" and msda.get(name).available("cpu")]
THRESHOLDS = Thresholds.load(operator="msda")


def arguments(problem: MSDAProblem, dtype=torch.float32, device="cpu"):
    """The five arguments of an implementation call on problem."""
    value, locations, weights, _ = problem.tensors(dtype, device)
    return (value, *problem.index_tensors(device), locations, weights)


def passes(impl, problem, dtype=torch.float32) -> bool:
    rows = runner.run([impl], [dtype], [problem], torch.device("cpu"), THRESHOLDS, progress=False, isolate=False)
    return bool(rows["pass"].all())


def test_reference_backward_matches_finite_differences():
    problem = dataclasses.replace(REGRESSIONS["per_level_split"], batch=1, queries=2)
    value, shapes, starts, locations, weights = arguments(problem, torch.float64)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    reference = msda.get("reference")
    assert torch.autograd.gradcheck(lambda v, loc, w: reference(v, shapes, starts, loc, w), leaves)


def test_reference_samples_pixel_centres_x_first():
    """A location at pixel (r, c)'s centre reads exactly that pixel: x = (c + 0.5) / W, y = (r + 0.5) / H."""
    levels = ((2, 3), (1, 2))
    value = torch.arange(8, dtype=torch.float64).reshape(1, 8, 1, 1)
    shapes, starts = MSDAProblem(1, levels, 1, 1, 1, 1).index_tensors("cpu")
    locations = torch.tensor([[(2.5 / 3, 1.5 / 2)], [(0.5 / 2, 0.5)]], dtype=torch.float64).reshape(1, 1, 1, 2, 1, 2)
    weights = torch.tensor([1.0, 10.0], dtype=torch.float64).reshape(1, 1, 1, 2, 1)
    for name in ["reference", *IMPLEMENTATIONS]:
        impl = msda.get(name)
        # float64 where it computes in it, else float32: both hold these sums exactly.
        dtype = torch.float64 if impl.supports(torch.float64) else torch.float32
        output = impl(value.to(dtype), shapes, starts, locations.to(dtype), weights.to(dtype))
        # Level 0 pixel (1, 2) is value[5]; level 1 pixel (0, 0) is value[6].
        torch.testing.assert_close(output, torch.tensor([[[5.0 + 60.0]]], dtype=dtype), msg=name)


def _replaced(args, index, tensor):
    args = list(args)
    args[index] = tensor
    return args


GOOD = arguments(MSDAProblem(batch=2, levels=((3, 4), (2, 2)), queries=5, heads=2, channels=3, points=2))
BAD = {
    "value rank": (_replaced(GOOD, 0, GOOD[0].flatten(2)), r"value must have rank 4"),
    "spatial_shapes rank": (_replaced(GOOD, 1, GOOD[1].flatten()), r"spatial_shapes must have rank 2"),
    "level_start_index rank": (_replaced(GOOD, 2, GOOD[2][None]), r"level_start_index must have rank 1"),
    "locations rank": (_replaced(GOOD, 3, GOOD[3].flatten(4)), r"sampling_locations must have rank 6"),
    "weights rank": (_replaced(GOOD, 4, GOOD[4].flatten(3)), r"attention_weights must have rank 5"),
    "locations batch": (_replaced(GOOD, 3, GOOD[3][:1]), r"sampling_locations N is 1, expected 2"),
    "locations heads": (_replaced(GOOD, 3, GOOD[3][:, :, :1]), r"sampling_locations M is 1, expected 2"),
    "locations levels": (_replaced(GOOD, 3, GOOD[3][:, :, :, :1]), r"sampling_locations L is 1, expected 2"),
    "locations pair": (_replaced(GOOD, 3, GOOD[3][..., :1]), r"last dimension must be 2 \(x, y\)"),
    "weights points": (_replaced(GOOD, 4, GOOD[4][..., :1]), r"attention_weights shape .* must be sampling_locations'"),
    "S": (_replaced(GOOD, 0, GOOD[0][:, :-1]), r"value has S=15 positions but spatial_shapes sums to .* = 16"),
    "start index": (_replaced(GOOD, 2, torch.tensor([0, 11])), r"level_start_index must be the running sum .*\[0, 12\]"),
    "level size": (_replaced(GOOD, 1, torch.tensor([[4, 4], [0, 2]])), r"spatial_shapes must hold positive level sizes"),
    "index dtype": (_replaced(GOOD, 1, GOOD[1].float()), r"spatial_shapes must be an integer tensor"),
    "start dtype": (_replaced(GOOD, 2, GOOD[2].float()), r"level_start_index must be an integer tensor"),
    "mixed dtype": (_replaced(GOOD, 4, GOOD[4].double()), r"attention_weights has dtype torch.float64 but value has"),
    "not a tensor": (_replaced(GOOD, 3, GOOD[3].tolist()), r"sampling_locations must be a torch.Tensor"),
    "index device": (_replaced(GOOD, 1, GOOD[1].to("meta")), r"spatial_shapes is on meta but value is on cpu"),
    "value device": (_replaced(GOOD, 3, GOOD[3].to("meta")), r"sampling_locations is on meta but value is on cpu"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("name", msda.names())
def test_bad_input_names_the_argument(name, case):
    args, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        msda.get(name)(*args)


@pytest.mark.parametrize("case", list(BAD))
def test_drop_in_checks_before_any_work(case):
    args, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        msda.ms_deform_attn(*args, 64)


def test_a_dtype_the_implementation_does_not_declare_is_refused():
    narrow = msda.register("float64_only", dtypes=[torch.float64])(published_core.fn)
    try:
        with pytest.raises(ValueError, match=r"value dtype torch.float32 is not supported by float64_only"):
            narrow(*GOOD)
    finally:
        msda.IMPLEMENTATIONS.remove("float64_only")


@pytest.mark.parametrize("step", [0, -1, 2.0])
def test_im2col_step_must_be_a_positive_int(step):
    with pytest.raises(ValueError, match="im2col_step must be a positive int"):
        msda.ms_deform_attn(*GOOD, step)


@pytest.mark.parametrize("impl", ["auto", *IMPLEMENTATIONS])
def test_drop_in_gives_the_reference_whatever_im2col_step(impl):
    truth = msda.get("reference")(*GOOD)
    for step in (1, 64):
        torch.testing.assert_close(msda.ms_deform_attn(*GOOD, step, impl=impl), truth)


def test_auto_picks_an_implementation_with_a_backward_for_gradients():
    value, shapes, starts, locations, weights = (t.clone() for t in GOOD)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    output = msda.ms_deform_attn(value, shapes, starts, locations, weights, 64)
    gradients = torch.autograd.grad(output.sum(), leaves)
    assert all(g.shape == t.shape for g, t in zip(gradients, leaves))
    assert msda.auto(value.device, value.dtype, backward=True).name in IMPLEMENTATIONS


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_non_contiguous_views_give_the_same_numbers(name):
    impl = msda.get(name)
    value, shapes, starts, locations, weights = GOOD
    # Views with other strides: heads and queries swapped in memory, and a broadcast of one weight row.
    value_view = value.transpose(1, 2).contiguous().transpose(1, 2)
    locations_view = locations.transpose(1, 2).contiguous().transpose(1, 2)
    weights_view = weights[:, :1].expand_as(weights)
    assert not value_view.is_contiguous() and weights_view.stride(1) == 0
    torch.testing.assert_close(impl(value_view, shapes, starts, locations_view, weights_view),
                               impl(value, shapes, starts, locations, weights_view.contiguous()))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_empty_query_set_gives_empty_output_and_gradients(name):
    problem = dataclasses.replace(REGRESSIONS["per_level_split"], queries=0)
    found = compare.evaluate(msda.get(name), problem, torch.float32, "cpu")
    assert found["output"].shape == (2, 0, 6) and found["grad_value"].abs().sum() == 0


def swapped_xy(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Reads the last dimension as (y, x): one of mx_driving's documented layouts."""
    return published_core.fn(value, spatial_shapes, level_start_index, sampling_locations.flip(-1), attention_weights)


def softmax_inside(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Normalises the weights over L*P itself, as DCNv4's FlashDeformAttn does with logits."""
    n, q, m, l, p = attention_weights.shape
    weights = attention_weights.reshape(n, q, m, l * p).softmax(-1).reshape(n, q, m, l, p)
    return published_core.fn(value, spatial_shapes, level_start_index, sampling_locations, weights)


def levels_reversed(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Splits value by the level sizes taken in the wrong order."""
    flipped = spatial_shapes.flip(0)
    return published_core.fn(value, flipped, level_start_index, sampling_locations.flip(3), attention_weights.flip(3))


MUTANTS = {"x_first": swapped_xy, "weights_not_normalised": softmax_inside, "per_level_split": levels_reversed}


@pytest.mark.parametrize("regression", list(MUTANTS))
def test_a_port_carrying_a_published_difference_fails_its_regression_and_the_fallback_passes(regression):
    mutant = msda.register(f"mutant_{regression}")(MUTANTS[regression])
    try:
        assert not passes(mutant, REGRESSIONS[regression])
    finally:
        msda.IMPLEMENTATIONS.remove(mutant.name)
    assert passes(msda.get("grid_sample"), REGRESSIONS[regression])


def test_an_msda_port_loads_with_msdeformattn_apply_signature(tmp_path, monkeypatch):
    (tmp_path / "my_msda_port.py").write_text(
        "from impls.msda.grid_sample import grid_sample\n"
        "class MSDeformAttnFunction:\n"
        "    @staticmethod\n"
        "    def apply(value, shapes, starts, locations, weights, im2col_step):\n"
        "        assert im2col_step == 64\n"
        "        return grid_sample.fn(value, shapes, starts, locations, weights)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        (port,) = external.load(["my_msda_port:MSDeformAttnFunction"], "msda")
        assert port.operator is msda.MSDA and "MSDeformAttnFunction" in msda.names()
        torch.testing.assert_close(port(*GOOD), msda.get("reference")(*GOOD))
        with pytest.raises(ValueError, match="implements msda, not dcnv3"):
            external.load(["impls.msda.grid_sample:grid_sample"], "dcnv3")
    finally:
        msda.IMPLEMENTATIONS.remove("MSDeformAttnFunction")


def test_the_gate_runs_msda_and_writes_its_quantities(tmp_path):
    status = gate.main(["--op", "msda", "--device", "cpu", "--impl", "optimized", "--examples", "3", "--seed", "7",
                        "--out", str(tmp_path)])
    assert status == 0
    rows = pd.read_csv(tmp_path / "parity.csv")
    assert set(rows["quantity"]) == set(OPERATORS["msda"].quantities)
    assert rows["case"].nunique() == len(REGRESSIONS) + 3 and rows["pass"].all()
    assert set(rows["implementation"]) == {"optimized"}
    assert "MSDA parity" in (tmp_path / "parity.md").read_text()


def test_the_gate_refuses_an_msda_model_run():
    with pytest.raises(SystemExit):
        gate.parse_args(["--op", "msda", "--model", "internimage-mini"])


@pytest.fixture
def cpu_kernel():
    impl = msda.get("cpu_kernel")
    reason = impl.unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(reason)
    return impl


@pytest.mark.parametrize("regression", ["per_level_split", "borders_one_channel", "empty_batch"])
def test_cpu_kernel_is_an_ordinary_torch_library_operator(cpu_kernel, regression):
    """torch.library.opcheck: schema, fake kernel, autograd registration and dispatch agree."""
    value, shapes, starts, locations, weights = arguments(REGRESSIONS[regression], torch.float64)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    torch.library.opcheck(torch.ops.msda_harness.msda_forward, (leaves[0], shapes, starts, leaves[1], leaves[2]))


def test_cpu_kernel_backward_matches_finite_differences(cpu_kernel):
    problem = dataclasses.replace(REGRESSIONS["x_first"], queries=3)
    value, shapes, starts, locations, weights = arguments(problem, torch.float64)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(lambda v, loc, w: cpu_kernel(v, shapes, starts, loc, w), leaves)


def test_cpu_kernel_value_gradient_is_the_same_on_every_run(cpu_kernel):
    """No atomics: many samples colliding on a 1x2 and a 2x1 level sum in one order, run after run."""
    value, shapes, starts, locations, weights = arguments(REGRESSIONS["colliding_value_gradient"])
    value.requires_grad_()
    first, again = (torch.autograd.grad(cpu_kernel(value, shapes, starts, locations, weights).sum(), value)[0]
                    for _ in range(2))
    assert torch.equal(first, again)


def test_the_benchmark_times_msda_against_its_baseline_and_reports_it(tmp_path):
    status = bench_main(["--op", "msda", "--device", "cpu", "--suite", "msda-quick", "--mode", "forward+backward",
                         "--impl", "optimized", "--seconds", "0.01", "--min-rounds", "3", "--parity-examples", "2",
                         "--out", str(tmp_path)])
    assert status == 0
    rows = pd.read_csv(tmp_path / "results.csv")
    assert set(rows["implementation"]) == {"grid_sample", "optimized"} and set(rows["suite"]) == {"msda-quick"}
    assert {"levels", "S", "Lq", "M", "D", "P", "gbps", "speedup"} <= set(rows.columns)
    assert len(rows) == 2 * len(SUITES["msda-quick"]) and (rows[rows["baseline"]]["speedup"] == 1.0).all()
    assert set(pd.read_csv(tmp_path / "parity.csv")["quantity"]) == set(OPERATORS["msda"].quantities)
    assert reports_main([str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# MSDA benchmark") and "| optimized " in summary


def test_a_suite_of_the_other_operator_is_refused_and_op_picks_its_default_suite():
    assert TimingSettings(op="msda").suite == "msda" and TimingSettings(suite="msda-quick").op == "msda"
    assert TimingSettings().op == "dcnv3"
    with pytest.raises(ValueError, match="suite quick times dcnv3, not op msda"):
        TimingSettings(op="msda", suite="quick")


def test_bytes_moved_of_an_msda_call_by_hand():
    shape = MSDAShape("s", batch=2, levels=((2, 3), (1, 1)), queries=20, heads=2, channels=4, points=3)
    # value 2*7*2*4 = 112 (every row sampled: 20 queries of 3 points a level on 7 positions), locations
    # 2*20*2*2*3*2 = 960, weights 480, output 2*20*8 = 320 (elements)
    assert traffic.value_elements_read(shape) == 112
    forward = 112 + 960 + 480 + 320
    backward = 320 + 2 * (112 + 960 + 480)
    assert traffic.bytes_moved(shape, "forward", torch.float32) == 4 * forward
    assert traffic.bytes_moved(shape, "forward+backward", torch.float64) == 8 * (forward + backward)


def test_a_decoders_value_traffic_counts_the_rows_its_queries_read():
    decoder = next(shape for shape in SUITES["msda"] if shape.name == "detr-dec-b1")
    whole = traffic.tensor_elements(decoder)["value"]
    read = traffic.value_elements_read(decoder)
    assert 0 < read < whole / 2 and read % decoder.channels == 0
    # The gradients are written whole: backward moves forward's reads (grad_output for output) and then
    # value, locations and weights in full.
    n = traffic.tensor_elements(decoder)
    forward = traffic.bytes_moved(decoder, "forward", torch.float32)
    backward = traffic.bytes_moved(decoder, "backward", torch.float32)
    assert forward == 4 * (read + n["sampling_locations"] + n["attention_weights"] + n["output"])
    assert backward - forward == 4 * (whole + n["sampling_locations"] + n["attention_weights"])


STAND_IN_EXTENSION = '''
import torch
from impls import msda

STEPS = []


def ms_deform_attn_forward(value, shapes, starts, locations, weights, im2col_step):
    STEPS.append(im2col_step)
    return msda.get("reference").fn(value, shapes, starts, locations, weights).detach()


def ms_deform_attn_backward(value, shapes, starts, locations, weights, grad_output, im2col_step):
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    with torch.enable_grad():
        output = msda.get("reference").fn(leaves[0], shapes, starts, leaves[1], leaves[2])
        return list(torch.autograd.grad(output, leaves, grad_output))
'''


@pytest.fixture
def stand_in_deformable_detr(tmp_path, monkeypatch):
    """A module named as Deformable DETR's compiled extension, computing with the reference on any device."""
    (tmp_path / "MultiScaleDeformableAttention.py").write_text(STAND_IN_EXTENSION)
    monkeypatch.syspath_prepend(str(tmp_path))
    extensions._deformable_detr.cache_clear()
    yield
    extensions._deformable_detr.cache_clear()


def test_an_absent_extension_says_why_it_is_unavailable():
    for name in ("deformable_detr_cuda", "mmcv"):
        impl = msda.get(name)
        assert impl.device_types == ("cuda",) and set(impl.dtypes) == {torch.float64, torch.float32}
    if importlib.util.find_spec("mmcv") is not None:
        pytest.skip("mmcv is installed here: its absence cannot be shown")
    assert extensions._reason(extensions._mmcv()).startswith(
        "mmcv's MultiScaleDeformableAttnFunction is not importable: ModuleNotFoundError")


def test_deformable_detrs_extension_joins_through_its_autograd_wrapper(stand_in_deformable_detr):
    """The wrapper hands the extension Deformable DETR's arguments and im2col_step, and its backward's three
    gradients to the right tensors (run on the CPU: the stand-in computes anywhere)."""
    import MultiScaleDeformableAttention

    impl = msda.get("deformable_detr_cuda")
    assert impl.unavailable_reason("cpu") == "deformable_detr_cuda does not run on cpu (runs on cuda)"
    problem = REGRESSIONS["x_first"]
    value, shapes, starts, locations, weights = arguments(problem, torch.float64)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    found = impl.fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    truth = msda.get("reference")(leaves[0], shapes, starts, leaves[1], leaves[2])
    torch.testing.assert_close(found, truth)
    upstream = torch.randn_like(truth)
    for got, expected in zip(torch.autograd.grad(found, leaves, upstream), torch.autograd.grad(truth, leaves, upstream)):
        torch.testing.assert_close(got, expected)
    assert MultiScaleDeformableAttention.STEPS == [64]


# An implementation with mx_driving's envelope that runs here: the gate's "unsupported" verdict and the
# benchmark's skip, without an NPU.
ENVELOPED = dataclasses.replace(msda.get("grid_sample"), name="enveloped", baseline=False,
                                envelope=mx_driving.envelope)


@pytest.mark.parametrize("change, named", [
    ({"channels": 12}, "embed_dims is 12"), ({"channels": 264}, "embed_dims is 264"),
    ({"heads": 9}, "9 heads"), ({"points": 17}, "4 levels x 17 points = 68"), ({"batch": 0}, "empty"),
])
def test_mx_drivings_envelope_names_the_documented_limit_each_call_breaks(change, named):
    inside = MSDAProblem(1, ((2, 3), (1, 1), (2, 2), (1, 2)), 2, 8, 16, 16)
    assert ENVELOPED.outside_envelope(*arguments(inside)) is None
    outside = dataclasses.replace(inside, **change)
    assert named in ENVELOPED.outside_envelope(*arguments(outside))
    with pytest.raises(UnsupportedInput, match=f"enveloped does not support this call: .*{named}"):
        ENVELOPED(*arguments(outside))


def test_the_gate_marks_cases_outside_an_envelope_unsupported_not_failed():
    cases = list(REGRESSIONS.values())
    rows = runner.run([ENVELOPED], [torch.float32], cases, torch.device("cpu"), THRESHOLDS, progress=False,
                      isolate=False)
    outside = rows[rows["unsupported"] != ""]
    inside_cases = {i for i, case in enumerate(cases) if ENVELOPED.outside_envelope(*arguments(case)) is None}
    assert set(rows["case"]) == set(range(len(cases))) and set(rows["case"]) - set(outside["case"]) == inside_cases
    assert inside_cases == {cases.index(REGRESSIONS["x_first"])}
    assert outside["pass"].all() and outside["max_abs_diff"].isna().all()
    summary = summarise(rows)
    assert (summary["unsupported"] == len(cases) - 1).all() and (summary["cases"] == 1).all()
    report = markdown(summary, {}, "# gate", rows)
    assert "- enveloped: 2 case(s): value's embed_dims is 4; DrivingSDK documents" in report

    # A group none of whose cases lies inside still has its row.
    alone = summarise(rows[rows["case"] != cases.index(REGRESSIONS["x_first"])])
    assert (alone["cases"] == 0).all() and (alone["unsupported"] == len(cases) - 1).all() and alone["pass"].all()


def test_the_benchmark_skips_a_shape_outside_an_envelope_saying_why():
    """ViT-Adapter's MSDeformAttn has 12 heads, over the 8 DrivingSDK documents."""
    reasons = {shape.name: outside_envelope(ENVELOPED, shape, torch.float32) for shape in SUITES["msda"]}
    assert {name for name, reason in reasons.items() if reason} == {
        shape.name for shape in SUITES["msda-vit-adapter"]}
    assert reasons["vitadapter-injector-b1"] == "value has 12 heads; DrivingSDK documents at most 8"
