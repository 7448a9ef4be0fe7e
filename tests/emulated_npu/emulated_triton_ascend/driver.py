"""The backend's driver: active where the emulated NPU can run Triton kernels, which is under
Triton's interpreter only (triton-ascend's own driver is active wherever it sees an NPU)."""

import importlib.util
import os

from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase

# 910B3: 20 AI cores, each a cube core with two vector cores.
AI_CORES = 20


class _Utils:
    @staticmethod
    def get_device_properties(device):
        return {"max_shared_mem": 1, "num_aicore": AI_CORES, "num_vectorcore": 2 * AI_CORES}


class EmulatedAscendDriver(DriverBase):
    def __init__(self):
        self.utils = _Utils()

    @classmethod
    def is_active(cls) -> bool:
        return os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("torch_npu") is not None

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise NotImplementedError("nothing is compiled for the emulated NPU")

    def get_current_target(self):
        return GPUTarget("npu", "Ascend910B3", 0)

    def get_active_torch_device(self):
        import torch

        return torch.device("npu", 0)

    def get_current_device(self) -> int:
        return 0

    def get_benchmarker(self):
        raise NotImplementedError("the harness times with torch.npu.synchronize and pytest-benchmark")
