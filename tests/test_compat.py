"""compat/DCNv3: InternImage's `import DCNv3` answered by the harness, installed as a user would."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import torch

import impls
from impls import internimage_compat, internimage_cuda, registry
from parity.compare import differences, expected
from parity.regressions import REGRESSIONS

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "compat" / "DCNv3"
CONVENTION = Path(__file__).with_name("internimage_convention.py")
FAKE_EXTENSION = r"""
#include <Python.h>
static PyObject *forward(PyObject *self, PyObject *args) { return PyUnicode_FromString("compiled"); }
static PyMethodDef methods[] = {{"dcnv3_forward", forward, METH_VARARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "DCNv3", NULL, -1, methods};
PyMODINIT_FUNC PyInit_DCNv3(void) { return PyModule_Create(&module); }
"""


@pytest.fixture
def shim(monkeypatch):
    """`import DCNv3` from compat/DCNv3, fresh, with no implementation announced yet."""
    monkeypatch.syspath_prepend(str(SHIM))
    monkeypatch.delitem(sys.modules, "DCNv3", raising=False)
    monkeypatch.setattr(internimage_compat, "_announced", set())
    monkeypatch.delenv(internimage_compat.IMPL_VARIABLE, raising=False)
    internimage_cuda._extension.cache_clear()
    yield importlib.import_module("DCNv3")
    sys.modules.pop("DCNv3", None)
    internimage_cuda._extension.cache_clear()


def _extension_arguments(problem, with_remove_center: bool):
    """The scalars in InternImage's order, im2col_step included, remove_center only where asked."""
    *leading, offset_scale, remove_center = problem.params.scalars()
    return [*leading, offset_scale, 256] + ([remove_center] if with_remove_center else [])


@pytest.mark.parametrize("name", ["colliding_input_gradient", "declared_dtypes_nonsquare", "offset_pair_order"])
def test_shim_forward_and_backward_match_the_reference(shim, name):
    problem = REGRESSIONS[name]
    # InternImage's 1.0 builds take no remove_center; a problem that needs it must use the 1.1 call.
    for with_remove_center in [True] + ([] if problem.params.remove_center else [False]):
        input, offset, mask, grad_output = problem.tensors(torch.float64)
        scalars = _extension_arguments(problem, with_remove_center)
        output = shim.dcnv3_forward(input, offset, mask, *scalars)
        *before_grad, im2col_step = scalars[:12]
        grads = shim.dcnv3_backward(input, offset, mask, *before_grad, grad_output, im2col_step, *scalars[12:])
        assert isinstance(grads, list) and len(grads) == 3
        truth = expected(problem, torch.float64)
        actual = {"output": output, "grad_input": grads[0], "grad_offset": grads[1], "grad_mask": grads[2]}
        if problem.smooth:
            comparable = problem.offset_gradient_mask(offset)
            actual["grad_offset"] = torch.where(comparable, grads[1], torch.zeros_like(grads[1]))
        for quantity, reference in truth.items():
            assert differences(actual[quantity], reference)[0] <= 1e-12, (name, quantity, with_remove_center)


def test_shim_says_once_which_implementation_computes(shim, capsys):
    problem = REGRESSIONS["offset_pair_order"]
    input, offset, mask, _ = problem.tensors(torch.float32)
    for _ in range(2):
        shim.dcnv3_forward(input, offset, mask, *_extension_arguments(problem, True))
    best = impls.registry.auto(input.device, torch.float32).name
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("DCNv3")]
    assert lines == [f"DCNv3 (dcnv3-harness): {best} on cpu float32 (the best available)"]


def test_shim_takes_its_implementation_from_the_environment(shim, monkeypatch, capsys):
    problem = REGRESSIONS["offset_pair_order"]
    input, offset, mask, _ = problem.tensors(torch.float64)
    calls = []
    grid_sample = impls.get("grid_sample")
    spy = registry.Implementation("spy", lambda *args: calls.append(args) or grid_sample.fn(*args),
                                  grid_sample.dtypes, ("cpu",))
    registry.add(spy)
    try:
        monkeypatch.setenv("DCNV3_IMPL", "spy")
        shim.dcnv3_forward(input, offset, mask, *_extension_arguments(problem, True))
    finally:
        registry.remove("spy")
    assert len(calls) == 1 and "spy on cpu float64 (DCNV3_IMPL=spy)" in capsys.readouterr().err
    monkeypatch.setenv("DCNV3_IMPL", "no_such_kernel")
    with pytest.raises(ValueError, match="DCNV3_IMPL=no_such_kernel: no implementation named"):
        shim.dcnv3_forward(input, offset, mask, *_extension_arguments(problem, True))
    monkeypatch.setenv("DCNV3_IMPL", "internimage_cuda")
    with pytest.raises(ValueError, match="DCNV3_IMPL=internimage_cuda: internimage_cuda does not run on cpu"):
        shim.dcnv3_forward(input, offset, mask, *_extension_arguments(problem, True))


def test_shim_rejects_bad_input_before_any_work(shim):
    problem = REGRESSIONS["offset_pair_order"]
    input, offset, mask, grad_output = problem.tensors(torch.float64)
    scalars = _extension_arguments(problem, True)
    with pytest.raises(ValueError, match="group_channels"):
        shim.dcnv3_forward(input, offset, mask, *scalars[:9], scalars[9] + 1, *scalars[10:])
    with pytest.raises(ValueError, match="grad_output must have the output's shape"):
        shim.dcnv3_backward(input, offset, mask, *scalars[:11], grad_output[:, :1], 256, False)
    with pytest.raises(ValueError, match="grad_output must be torch.float64"):
        shim.dcnv3_backward(input, offset, mask, *scalars[:11], grad_output.float(), 256, False)


def test_internimage_cuda_never_measures_the_shim(shim):
    assert shim.HARNESS_SHIM
    assert "this harness's shim" in internimage_cuda._extension()


def _compile_fake_extension(folder: Path) -> Path:
    """A compiled module named DCNv3, standing in for InternImage's CUDA build."""
    source = folder / "fake_dcnv3.c"
    source.write_text(FAKE_EXTENSION)
    built = folder / ("DCNv3" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["gcc", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}", str(source), "-o",
                    str(built)], check=True)
    return built


def test_shim_steps_aside_for_a_compiled_dcnv3(shim, tmp_path, monkeypatch, capsys):
    compiled = _compile_fake_extension(tmp_path)
    # The shim first on sys.path, the compiled build after it: the shim must still give way.
    monkeypatch.setattr(sys, "path", [str(SHIM), *[p for p in sys.path if p != str(SHIM)], str(tmp_path)])
    sys.modules.pop("DCNv3")  # the fixture removes whatever is imported next
    module = importlib.import_module("DCNv3")
    assert module.__file__ == str(compiled) and module.dcnv3_forward() == "compiled"
    assert f"compiled extension {compiled} is installed; the dcnv3-harness shim steps aside" in capsys.readouterr().err
    internimage_cuda._extension.cache_clear()
    assert internimage_cuda._extension() is module


def _user_venv(where: Path) -> Path:
    """A venv with pip whose Python also sees this interpreter's packages (torch), as a user's would."""
    venv.create(where, with_pip=True)
    packages = next(where.glob("lib/python*/site-packages"))
    (packages / "host.pth").write_text(site.getsitepackages()[0] + "\n")
    return where / "bin" / "python"


def test_internimage_calling_convention_through_the_installed_shim(tmp_path):
    """README's install, then InternImage's calling convention (import DCNv3, pkg_resources' version,
    both argument lists) in a fresh process, forward and gradients against the reference."""
    python = _user_venv(tmp_path / "venv")
    # From a copy: pip's in-tree build would leave build/ and *.egg-info in the checkout.
    source = tmp_path / "checkout"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".nox", "build", "*.egg-info", "__pycache__", "reports", ".hypothesis", ".benchmarks"))
    shutil.copytree(ROOT / "reports", source / "reports", ignore=shutil.ignore_patterns("*-*", "__pycache__"))
    shim = source / "compat" / "DCNv3"
    install = [str(python), "-m", "pip", "install", "--quiet", str(source), str(shim)]
    subprocess.run(install, check=True, cwd=tmp_path)
    # optimized: pure PyTorch, so the installed copy builds no C++ here; the in-process tests cover "auto".
    env = {**os.environ, "DCNV3_IMPL": "optimized", "PYTHONPATH": ""}
    run = subprocess.run([str(python), str(CONVENTION)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert result["dcn_version"] == 1.1 and result["module"].startswith(str(tmp_path / "venv"))
    assert len(result["max_abs_diff"]) == 4 * len(REGRESSIONS) - 1  # one problem has no comparable grad_offset
    assert "DCNv3 (dcnv3-harness): optimized on cpu float64 (DCNV3_IMPL=optimized)" in run.stderr

    # With InternImage's compiled build present, installing the shim again is refused, naming it.
    packages = next((tmp_path / "venv").glob("lib/python*/site-packages"))
    compiled = _compile_fake_extension(packages)
    refused = subprocess.run([str(python), "-m", "pip", "install", str(shim)], cwd=tmp_path,
                             capture_output=True, text=True)
    assert refused.returncode != 0
    assert f"InternImage's compiled extension is installed ({compiled})" in refused.stdout + refused.stderr


@pytest.mark.parametrize("name", [n for n in impls.names() if impls.get(n).gradients is not None])
def test_shim_backward_calls_a_kernels_own_backward(shim, monkeypatch, name):
    """The same three gradients as autograd through the implementation, and its forward not run again."""
    impl = impls.get(name)
    reason = impl.unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(reason)
    forwards = []
    spy = registry.Implementation("spy", lambda *args: forwards.append(1) or impl.fn(*args), impl.dtypes, ("cpu",),
                                  gradients=impl.gradients)
    registry.add(spy)
    problem = REGRESSIONS["colliding_input_gradient"]
    input, offset, mask, grad_output = problem.tensors(torch.float32)
    monkeypatch.setenv("DCNV3_IMPL", "spy")
    try:
        grads = shim.dcnv3_backward(input, offset, mask, *_extension_arguments(problem, False)[:11], grad_output,
                                    256, problem.params.remove_center)
    finally:
        registry.remove("spy")
    assert forwards == []
    leaves = [t.clone().requires_grad_() for t in (input, offset, mask)]
    expected_grads = torch.autograd.grad(impl(*leaves, problem.params), leaves, grad_output)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
