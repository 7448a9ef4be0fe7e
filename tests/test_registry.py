from __future__ import annotations

import sys
import textwrap

import pytest
import torch

import impls
from impls import registry
from parity.regressions import REGRESSIONS


def test_builtins_are_registered_with_one_baseline():
    assert {"reference", "grid_sample"} <= set(impls.names())
    assert impls.baseline().name == "grid_sample"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="no implementation named 'nope'; known: .*grid_sample.*reference"):
        impls.get("nope")


def test_implementation_describes_itself():
    impl = impls.get("grid_sample")
    assert impl.available("cpu") and impl.unavailable_reason("cpu") is None
    assert torch.bfloat16 in impl.dtypes and impl.supports(torch.float32)
    assert "grid_sample" in impl.description


def test_unavailable_device_has_a_reason_sentence():
    reason = impls.get("grid_sample").unavailable_reason("npu")
    if reason is None:
        pytest.skip("an NPU is present here")
    assert reason.startswith("no NPU: torch_npu not importable")


def test_device_type_outside_the_declared_ones_is_explained():
    impl = registry.Implementation(name="cuda_only", fn=lambda *a: None, dtypes=frozenset(), device_types=("cuda",))
    assert impl.unavailable_reason("cpu") == "cuda_only does not run on cpu (runs on cuda)"


def test_duplicate_name_is_rejected():
    with pytest.raises(ValueError, match="'grid_sample' is already registered"):
        registry.register("grid_sample")(lambda *a: None)


def test_dcnv3_is_a_drop_in_for_dcnv3_function_apply():
    problem = REGRESSIONS["padding_order"]
    input, offset, mask, _ = problem.tensors(torch.float32)
    p = problem.params
    args = (p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h, p.dilation_w,
            p.group, p.group_channels, p.offset_scale)
    auto = impls.dcnv3(input, offset, mask, *args, 256, p.remove_center)
    chosen = registry.auto(input.device, input.dtype).name
    other_step = impls.dcnv3(input, offset, mask, *args, 1, p.remove_center, impl=chosen)
    truth = impls.get("reference")(input, offset, mask, p)
    torch.testing.assert_close(auto, other_step, rtol=0, atol=0)
    torch.testing.assert_close(auto, truth, rtol=0, atol=1e-5)


def test_auto_picks_the_highest_priority_available():
    fast = registry.register("fast_fake", priority=50)(impls.get("grid_sample").fn)
    try:
        assert registry.auto(torch.device("cpu"), torch.float32) is fast
    finally:
        registry.remove("fast_fake")
    # Interpreted implementations (triton under TRITON_INTERPRET=1) are never picked.
    available = [impls.get(n) for n in impls.names() if impls.get(n).untimed_reason("cpu") is None]
    assert registry.auto(torch.device("cpu"), torch.float32).priority == max(i.priority for i in available)


def test_auto_without_a_candidate_names_the_dtype():
    with pytest.raises(ValueError, match="input dtype torch.int8 is not supported by any implementation"):
        registry.auto(torch.device("cpu"), torch.int8)


PLUGIN = """
import impls

@impls.register("{name}", dtypes=[__import__("torch").float32])
def {name}(input, offset, mask, params):
    \"\"\"A team's own kernel, from outside the repository.\"\"\"
    return impls.get("grid_sample").fn(input, offset, mask, params)
"""


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A real distribution on sys.path declaring entry points in our group."""

    def install(entry_points: dict[str, str], modules: dict[str, str]):
        for module, source in modules.items():
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / "team_kernels-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-kernels\nVersion: 0.1\n")
        lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{impls.ENTRY_POINT_GROUP}]\n{lines}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        registry.load_plugins(force=True)
        return list(entry_points)

    names = []
    yield lambda eps, mods: names.extend(install(eps, mods)) or names
    for name in names:
        registry.remove(name)
    for module in [m for m in sys.modules if m.startswith("team_")]:
        del sys.modules[module]


def test_entry_point_plugin_appears_everywhere(installed_plugin):
    installed_plugin({"team_kernel": "team_kernel"}, {"team_kernel": PLUGIN.format(name="team_kernel")})
    assert "team_kernel" in impls.names()
    plugin = impls.get("team_kernel")
    assert plugin.available("cpu") and plugin.dtypes == frozenset({torch.float32})
    problem = REGRESSIONS["offset_pair_order"]
    input, offset, mask, _ = problem.tensors(torch.float32)
    torch.testing.assert_close(plugin(input, offset, mask, problem.params),
                               impls.get("grid_sample")(input, offset, mask, problem.params))


def test_broken_plugin_is_listed_as_unavailable_with_its_error(installed_plugin):
    installed_plugin({"team_broken": "team_broken"}, {"team_broken": "raise ImportError('libascendcl.so: cannot open')"})
    reason = impls.get("team_broken").unavailable_reason("cpu")
    assert reason.startswith("plug-in 'team_broken' failed to load: ImportError: libascendcl.so")
