"""torch_npu.npu.utils.get_cann_version, as torch_npu defines it (module names: CANN, RUNTIME, ...)."""

EMULATED_CANN = "8.3.RC1 (emulated)"


def get_cann_version(module: str = "CANN") -> str:
    return EMULATED_CANN
