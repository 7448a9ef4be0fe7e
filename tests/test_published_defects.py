"""Each defect of the contract's "published code differs" list, carried by a
mutant port, must fail parity on its regression problem; the fixed fallback
must pass. This is what proves the gate can fail."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import impls
from impls import registry
from impls.grid_sample import compute_dtype, dcnv3_grid_sample
from mutants import float32_positions, offset_pair_swapped, published_padding
from parity import gate, runner
from parity.problems import Problem
from parity.regressions import REGRESSIONS
from parity.thresholds import Thresholds


MUTANTS = {
    "padding_order": (published_padding, torch.float32),
    "float64_positions": (float32_positions, torch.float64),
    "offset_pair_order": (offset_pair_swapped, torch.float32),
}
THRESHOLDS = Thresholds.load()


@pytest.fixture
def registered():
    added = []

    def add(name, fn):
        impl = registry.register(name)(fn)
        added.append(name)
        return impl

    yield add
    for name in added:
        registry.remove(name)


def passes(impl, problem, dtype) -> bool:
    rows = runner.run([impl], [dtype], [problem], torch.device("cpu"), THRESHOLDS, progress=False, isolate=False)
    return bool(rows["pass"].all())


@pytest.mark.parametrize("defect", list(MUTANTS))
def test_mutant_port_fails_on_its_regression(defect, registered):
    fn, dtype = MUTANTS[defect]
    mutant = registered(f"mutant_{defect}", fn)
    assert not passes(mutant, REGRESSIONS[defect], dtype)


@pytest.mark.parametrize("defect", list(MUTANTS))
def test_fixed_fallback_passes_the_same_regression(defect):
    _, dtype = MUTANTS[defect]
    assert passes(impls.get("grid_sample"), REGRESSIONS[defect], dtype)


def test_gate_exits_nonzero_on_a_mutant(registered, tmp_path, capsys):
    registered("mutant_offset_pair_order", offset_pair_swapped)
    status = gate.main(["--device", "cpu", "--impl", "mutant_offset_pair_order", "grid_sample", "--dtype", "float32",
                        "--examples", "6", "--out", str(tmp_path), "--no-isolate"])
    assert status == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    assert (tmp_path / "parity.csv").read_text().count("False") > 0
    # Progress, as a CI log shows it: failing rows as they happen (at most ten), a line per implementation.
    failing = [line for line in captured.err.splitlines() if line.startswith("FAIL mutant_offset_pair_order float32")]
    assert 1 <= len(failing) <= runner.Progress.SHOWN_FAILURES
    assert "parity on cpu: mutant_offset_pair_order: 16 runs (cases x dtypes, and repeats) in " in captured.err
    assert "parity on cpu: grid_sample: 16 runs (cases x dtypes, and repeats) in " in captured.err and ", 0 failing rows" in captured.err


def test_no_implementation_uses_cuda_only_amp_decorators():
    """Published defect 6: torch.cuda.amp.custom_fwd breaks off CUDA; torch.amp's form is portable."""
    sources = Path(impls.__file__).parent.rglob("*.py")
    offenders = [str(path) for path in sources if "torch.cuda.amp" in path.read_text()]
    assert offenders == []


def mutates_its_input(input, offset, mask, params):
    output = dcnv3_grid_sample(input, offset, mask, params, compute_dtype(input.dtype))
    with torch.no_grad():
        mask.mul_(0.5)
    return output


def aliases_its_input(input, offset, mask, params):
    """A 1x1 kernel's output has the input's shape: returning a view of the input is a cheat."""
    return input.view_as(input) if params.points == 1 else dcnv3_grid_sample(
        input, offset, mask, params, compute_dtype(input.dtype))


_CACHE = {}


def returns_a_cached_output(input, offset, mask, params):
    """Computes the first problem of each shape and returns that same tensor ever after."""
    key = (tuple(input.shape), input.dtype)
    if key not in _CACHE:
        _CACHE[key] = dcnv3_grid_sample(input, offset, mask, params, compute_dtype(input.dtype))
    return _CACHE[key]


@pytest.mark.parametrize("fn, message", [
    (mutates_its_input, "anti-cheat: the call changed its mask"),
    (aliases_its_input, "anti-cheat: the output shares memory with an input"),
    (returns_a_cached_output, "anti-cheat: the same output object came back for a different problem"),
])
def test_the_gate_catches_kernels_that_cheat(fn, message, registered):
    cheat = registered(f"cheat_{fn.__name__}", fn)
    same_shape = dataclasses.replace(REGRESSIONS["padding_order"], seed=11)
    one_by_one = Problem(batch=1, height=4, width=4, params=impls.DCNv3Params(1, 1, 1, 1, 0, 0, 1, 1, 1, 4),
                         offset_kind="inside", smooth=True, seed=3)
    results = runner.run([cheat], [torch.float32], [REGRESSIONS["padding_order"], same_shape, one_by_one], torch.device("cpu"),
                       THRESHOLDS, progress=False, isolate=False)
    assert not results["pass"].all()
    assert results.loc[~results["pass"], "error"].str.contains(message).all()
    honest = runner.run([impls.get("grid_sample")], [torch.float32], [REGRESSIONS["padding_order"], same_shape, one_by_one],
                      torch.device("cpu"), THRESHOLDS, progress=False, isolate=False)
    assert honest["pass"].all()


def ten_times_the_baselines_error(input, offset, mask, params):
    """The reference plus ten times grid_sample's error, element by element, gradients too."""
    truth = impls.get("reference")(*(t.double() for t in (input, offset, mask)), params)
    fallback = impls.get("grid_sample")(input, offset, mask, params).double()
    return (truth + 10 * (fallback - truth)).to(input.dtype)


def test_ten_times_the_baselines_error_fails_the_per_case_rule_though_under_the_static_ceiling(registered):
    mutant = registered("mutant_ten_times_the_baselines_error", ten_times_the_baselines_error)
    rows = runner.run([mutant], [torch.float64, torch.float32], runner.sweep(12, seed=0), torch.device("cpu"),
                    THRESHOLDS, progress=False, isolate=False)
    erring = rows[rows["baseline_max_abs_diff"] > 0]
    # Tenfold, give or take the rounding of the mutant's own sum where the baseline is off by an ulp or two.
    assert 9.5 <= (erring["max_abs_diff"] / erring["baseline_max_abs_diff"]).median() <= 10.5
    # The rows today's static table passes: the per-case rule fails every one its k x baseline decides,
    # and about a third of all (where the baseline is nearly exact, the floors let a tenfold error pass).
    static_passes = erring[erring["max_abs_diff"] <= erring["ceiling"]]
    assert len(static_passes) > 0.9 * len(erring)
    assert not static_passes.loc[static_passes["rule"] == "k x baseline", "pass"].any()
    assert (~static_passes["pass"]).mean() > 0.25
