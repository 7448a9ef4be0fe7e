"""A stand-in for torchair, the vendor's torch.compile backend for the NPU: the two calls the harness
makes (`torchair.CompilerConfig()`, `torchair.get_npu_backend(compiler_config=...)`), with torchair's
names. The backend it returns runs the captured graph as captured (torch.compile's "eager"), so on
the emulated NPU `compiled` exercises the harness's wiring and Dynamo's capture, not GE's compiler.
"""


class CompilerConfig:
    """torchair.CompilerConfig: options for GE; none are read here."""


def get_npu_backend(*, compiler_config: CompilerConfig | None = None):
    def backend(graph_module, example_inputs):
        return graph_module.forward

    return backend
