"""Deployment: forward-only implementations under the gate and the benchmark, the ONNX export to the
standard DeformConv, and ONNX Runtime and OpenVINO as implementations."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

import impls
import impls.nn
from bench.run import main as bench_main
from impls import dcnv2_mapping, internimage, onnx_export, registry
from parity import compare, runner
from parity.gate import main as gate_main
from parity.regressions import REGRESSIONS
from parity.thresholds import Thresholds

ONNX_RUNTIME = impls.get("onnxruntime")
OPENVINO = impls.get("openvino")
needs_onnxruntime = pytest.mark.skipif(not ONNX_RUNTIME.available("cpu"),
                                       reason=str(ONNX_RUNTIME.unavailable_reason("cpu")))
needs_openvino = pytest.mark.skipif(not OPENVINO.available("cpu"), reason=str(OPENVINO.unavailable_reason("cpu")))


@pytest.fixture
def forward_only_port():
    """grid_sample's kernel registered as a forward-only implementation that auto would pick first."""
    port = registry.register("forward_only_port", priority=1000, forward_only=True)(impls.get("grid_sample").fn)
    yield port
    registry.remove("forward_only_port")


def operands(problem=REGRESSIONS["padding_order"], dtype=torch.float32):
    return problem.tensors(dtype)[:3], problem.params


def test_a_forward_only_implementation_refuses_tensors_that_need_a_gradient(forward_only_port):
    (input, offset, mask), params = operands()
    with pytest.raises(ValueError, match="forward_only_port has no backward: call it under torch.no_grad()"):
        forward_only_port(input, offset.requires_grad_(), mask, params)
    with torch.no_grad():
        assert forward_only_port(input, offset, mask, params).shape == (*offset.shape[:3], params.channels)


def test_auto_picks_a_forward_only_implementation_only_where_no_gradient_is_needed(forward_only_port):
    (input, offset, mask), p = operands()
    geometry = (p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h, p.dilation_w,
                p.group, p.group_channels, p.offset_scale, 64, p.remove_center)
    assert registry.auto(input.device, input.dtype) is forward_only_port
    assert registry.auto(input.device, input.dtype, backward=True) is not forward_only_port
    output = impls.dcnv3(input.requires_grad_(), offset, mask, *geometry)
    assert output.grad_fn is not None  # a differentiable implementation ran
    with torch.no_grad():
        torch.testing.assert_close(impls.dcnv3(input, offset, mask, *geometry),
                                   forward_only_port(input, offset, mask, p), rtol=0, atol=0)


def test_the_gate_checks_only_the_output_of_a_forward_only_implementation(forward_only_port):
    cases = [REGRESSIONS["padding_order"], REGRESSIONS["colliding_input_gradient"]]
    rows = runner.run([forward_only_port], [torch.float32], cases, torch.device("cpu"), Thresholds.load(),
                      progress=False, isolate=False)
    mine = rows[rows["implementation"] == "forward_only_port"]
    assert set(mine["quantity"]) == {"output"} and len(mine) == len(cases) and mine["pass"].all()
    with pytest.raises(ValueError, match="has no backward: none of grad_input can be checked"):
        compare.assert_matches_reference(forward_only_port, cases[0], torch.float32, quantities=["grad_input"])


def test_the_benchmark_times_a_forward_only_implementation_forward_and_the_report_says_so(forward_only_port, tmp_path):
    from reports.build import main as reports_main

    status = bench_main(["--device", "cpu", "--suite", "quick", "--shape", "q14-G2D8", "--impl", "forward_only_port",
                         "--dtype", "float32", "--seconds", "0.01", "--min-rounds", "2", "--parity-examples", "0",
                         "--no-isolate", "--out", str(tmp_path)])
    assert status == 0
    rows = pd.read_csv(tmp_path / "results.csv")
    assert set(rows.loc[rows["implementation"] == "forward_only_port", "mode"]) == {"forward"}
    assert set(rows.loc[rows["implementation"] == "grid_sample", "mode"]) == {"forward", "backward", "forward+backward"}
    assert json.loads((tmp_path / "environment.json").read_text())["forward_only"] == ["forward_only_port"]
    assert reports_main([str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    backward = summary.split("## Latency p50 and speedup per shape: float32, backward")[1].split("##")[0]
    assert "forward_only_port" in backward and "forward only" in backward


def test_the_legacy_exporter_is_refused_with_a_sentence():
    layer = impls.nn.DCNv3(channels=8, group=2).eval()
    with pytest.raises(Exception, match="through the dynamo-based exporter only"):
        torch.onnx.export(layer, (torch.rand(1, 5, 6, 8),), "/dev/null", dynamo=False)


def exported_layer(**options):
    """An InternImage DCNv3 layer with non-zero offsets, its input, and its ONNX model."""
    layer = impls.nn.DCNv3(channels=16, group=2, **options).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    input = torch.randn(2, 9, 11, 16, generator=generator)
    return layer, input, onnx_export.export_quietly(layer, (input,))


@needs_onnxruntime
@pytest.mark.parametrize("options", [dict(), dict(offset_scale=2.0, remove_center=True), dict(kernel_size=5, pad=2),
                                     dict(dilation=2, pad=2)], ids=["plain", "scaled-remove-center", "k5", "dilated"])
def test_a_layer_exports_to_one_standard_deform_conv_that_onnx_runtime_runs(options):
    """The layer's own geometry; strides, uneven padding and non-square kernels are the gate's cases
    of the onnxruntime implementation, which exports the operator alone."""
    import onnxruntime

    layer, input, proto = exported_layer(**options)
    nodes = list(proto.graph.node)
    deform = [node for node in nodes if node.op_type == "DeformConv"]
    assert len(deform) == 1 and {node.domain for node in nodes} <= {""}
    attributes = {a.name: a for a in deform[0].attribute}
    assert attributes["group"].i == 16 and attributes["offset_group"].i == 2
    weight = next(i for i in proto.graph.initializer if i.name == deform[0].input[1])
    assert list(weight.dims) == [16, 1, *[layer.kernel_size] * 2]
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ran = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: input.numpy()})[0])
    with torch.no_grad():
        expected = layer.double()(input.double())
    torch.testing.assert_close(ran.double(), expected, rtol=0, atol=2e-5)


@needs_onnxruntime
def test_the_round_trip_gate_passes_and_writes_the_model(tmp_path):
    assert gate_main(["--export", "onnx", "--out", str(tmp_path)]) == 0
    rows = pd.read_csv(tmp_path / "export-parity.csv")
    assert len(rows) == 4 and rows["pass"].all() and (rows["rel_l2"] > 0).all()
    import onnx

    model = onnx.load(tmp_path / "model.onnx")
    layers = len(internimage.dcnv3_layers(internimage.build("mini")))
    assert sum(node.op_type == "DeformConv" for node in model.graph.node) == layers


@needs_onnxruntime
def test_the_round_trip_gate_fails_an_export_that_reads_the_pairs_the_wrong_way(monkeypatch, tmp_path):
    """Published defect 5 in the export: offsets handed to DeformConv as (dx, dy) instead of (dy, dx)."""
    right = dcnv2_mapping.deform_conv_operands

    def pairs_swapped(input, offset, mask, params):
        ops = right(input, offset, mask, params)
        batch, _, out_h, out_w = ops.offset.shape
        swapped = ops.offset.reshape(batch, -1, 2, out_h, out_w).flip(2).reshape(ops.offset.shape)
        return dcnv2_mapping.DeformConvOperands(ops.input, swapped, ops.mask, ops.weight)

    monkeypatch.setattr(dcnv2_mapping, "deform_conv_operands", pairs_swapped)
    assert gate_main(["--export", "onnx", "--out", str(tmp_path)]) == 1
    rows = pd.read_csv(tmp_path / "export-parity.csv")
    assert not rows["pass"].any() and (rows["rel_l2"] > 100 * rows["bound"]).all()


def test_the_round_trip_gate_names_a_missing_runtime(monkeypatch, capsys):
    missing = dataclasses.replace(ONNX_RUNTIME, requires=lambda device: "onnxruntime is not importable")
    monkeypatch.setitem(registry._REGISTRY, "onnxruntime", missing)
    with pytest.raises(SystemExit) as stopped:
        gate_main(["--export", "onnx"])
    assert stopped.value.code == 2
    assert "--export onnx needs ONNX Runtime: onnxruntime is not importable" in capsys.readouterr().err


@needs_onnxruntime
def test_onnx_runtime_exports_each_shape_once():
    from impls import onnx_runtime

    (input, offset, mask), params = operands(REGRESSIONS["padding_order"])
    onnx_runtime._session.cache_clear()
    first = ONNX_RUNTIME(input, offset, mask, params)
    second = ONNX_RUNTIME(input + 1, offset, mask, params)
    assert onnx_runtime._session.cache_info().misses == 1 and onnx_runtime._session.cache_info().hits == 1
    assert not torch.equal(first, second)


@needs_openvino
def test_openvino_computes_in_float32_with_a_model_per_shape():
    import openvino

    from impls import openvino_runtime

    (input, offset, mask), params = operands(REGRESSIONS["padding_order"])
    openvino_runtime._compiled.cache_clear()
    OPENVINO(input, offset, mask, params)
    OPENVINO(input, offset, mask, params)
    info = openvino_runtime._compiled.cache_info()
    assert info.misses == 1 and info.hits == 1
    ops = dcnv2_mapping.deform_conv_operands(input, offset, mask, params)
    compiled = openvino_runtime._compiled(*(tuple(t.shape) for t in (ops.input, ops.offset, ops.mask)), params,
                                          torch.get_num_threads())
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32


@needs_openvino
def test_the_model_gate_checks_only_the_outputs_of_a_forward_only_implementation(tmp_path):
    assert gate_main(["--device", "cpu", "--model", "internimage-mini", "--impl", "openvino", "--dtype", "float32",
                      "--out", str(tmp_path)]) == 0
    rows = pd.read_csv(tmp_path / "model-parity.csv")
    mine = rows[rows["implementation"] == "openvino"]
    assert len(mine) == 4 and mine["tensor"].str.startswith("output.").all() and mine["pass"].all()
