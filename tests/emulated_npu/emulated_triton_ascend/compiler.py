"""The backend's compiler half, which Triton's backend discovery requires; it compiles nothing."""

from triton.backends.compiler import BaseBackend


class EmulatedAscendBackend(BaseBackend):
    @staticmethod
    def supports_target(target) -> bool:
        return target.backend == "npu"

    def hash(self) -> str:
        return "emulated-ascend"

    def _refuse(self, *args, **kwargs):
        raise NotImplementedError("the emulated NPU runs Triton kernels under TRITON_INTERPRET=1 only")

    parse_options = add_stages = load_dialects = get_module_map = _refuse
