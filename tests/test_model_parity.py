"""python -m parity --model: correct kernels pass a whole backbone, wrong ones fail it."""

from __future__ import annotations

import pandas as pd
import pytest

from impls import registry
from impls.grid_sample import compute_dtype, dcnv3_grid_sample
from parity import gate
from mutants import offset_pair_swapped


def group_shifted(input, offset, mask, params):
    """Each group sampled with its neighbour's offsets and masks: one group shifted."""
    def shift(t):
        return t.reshape(*t.shape[:3], params.group, -1).roll(1, dims=3).reshape(t.shape)

    return dcnv3_grid_sample(input, shift(offset), shift(mask), params, compute_dtype(input.dtype))


def raises(input, offset, mask, params):
    raise RuntimeError("kernel launch failed")


@pytest.fixture
def mutants():
    added = [registry.register(name)(fn) for name, fn in
             [("xy_swapped", offset_pair_swapped), ("group_shifted", group_shifted), ("raises", raises)]]
    yield
    for impl in added:
        registry.remove(impl.name)


def model_gate(tmp_path, *impls, dtypes=("float64", "float32", "bfloat16")):
    status = gate.main(["--model", "internimage-mini", "--impl", *impls, "--dtype", *dtypes, "--out", str(tmp_path)])
    return status, pd.read_csv(tmp_path / "model-parity.csv")


def test_correct_kernels_pass_the_whole_backbone(tmp_path, capsys):
    status, rows = model_gate(tmp_path, "optimized", "cpu_kernel")
    assert status == 0, capsys.readouterr().out
    # Every tensor of the backbone, for the baseline and both kernels, in each dtype.
    tensors = rows.groupby(["implementation", "dtype"])["tensor"].nunique()
    assert set(tensors.index.get_level_values(0)) == {"grid_sample", "optimized", "cpu_kernel"}
    assert tensors.nunique() == 1 and tensors.iloc[0] > 100
    float64 = rows[(rows["dtype"] == "float64") & ~rows["baseline"]]
    assert float64["rel_l2"].max() < 1e-13
    text = (tmp_path / "model-parity.md").read_text()
    assert "Worst relative L2 error per parameter family" in text and "PASS" in text


@pytest.mark.parametrize("mutant", ["xy_swapped", "group_shifted"])
def test_a_wrong_kernel_fails_in_every_dtype(mutant, mutants, tmp_path):
    status, rows = model_gate(tmp_path, mutant)
    assert status == 1
    failed = rows[(rows["implementation"] == mutant) & ~rows["pass"]]
    assert set(failed["dtype"]) == {"float64", "float32", "bfloat16"}
    assert {"dcn.offset", "dcn.mask", "output"} <= set(failed["family"])


def test_a_kernel_that_raises_fails_its_rows_and_the_gate_goes_on(mutants, tmp_path):
    status, rows = model_gate(tmp_path, "raises", "optimized", dtypes=("float32",))
    assert status == 1
    raised = rows[rows["implementation"] == "raises"]
    assert (~raised["pass"]).all() and raised["error"].str.contains("kernel launch failed").all()
    assert rows[rows["implementation"] == "optimized"]["pass"].all()


@pytest.mark.parametrize("argv, message", [
    (["--model", "internimage-q"], "--model: model must be one of T, S, B, L, XL, H, G, mini"),
    (["--model", "internimage-mini", "--size", "16"], "--size must be >= 32"),
    (["--model", "internimage-mini", "--batch", "0"], "--batch must be >= 1"),
])
def test_bad_model_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        gate.main(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_a_broken_baseline_fails_the_gate_instead_of_loosening_it(monkeypatch, tmp_path):
    """The bound is measured from grid_sample: where that run raises, nothing may pass against it."""
    from parity import model

    real = model.quantities
    calls = []

    def baseline_raises(*args):
        calls.append(1)
        if len(calls) == 2:  # the truth first, then grid_sample's float32 run
            raise RuntimeError("baseline broke")
        return real(*args)

    monkeypatch.setattr(model, "quantities", baseline_raises)
    status, rows = model_gate(tmp_path, "optimized", dtypes=("float32",))
    assert status == 1 and not rows["pass"].any()
