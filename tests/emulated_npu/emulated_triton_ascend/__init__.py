"""A stand-in for triton-ascend's backend, registered the way triton-ascend registers its own (a
`triton.backends` entry point): its driver answers `utils.get_device_properties(device)` with the
dictionary triton-ascend's driver returns ({"max_shared_mem", "num_aicore", "num_vectorcore"};
third_party/ascend/backend/driver.py) for the emulated 910B3. It compiles nothing: on the emulated
NPU the harness's Triton kernel runs under Triton's interpreter (TRITON_INTERPRET=1).
"""
