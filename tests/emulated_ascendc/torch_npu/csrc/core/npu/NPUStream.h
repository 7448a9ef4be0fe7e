// The one call of torch_npu's stream API the kernel's host code makes (Ascend/pytorch,
// torch_npu/csrc/core/npu/NPUStream.h: getCurrentNPUStream(), NPUStream::stream(need_empty)),
// for the emulated build (tests/emulated_ascendc): the emulated launch runs at once, on no stream.
#pragma once

namespace c10_npu {

struct NPUStream {
    void* stream(bool need_empty = true) const
    {
        (void)need_empty;
        return nullptr;
    }
};

inline NPUStream getCurrentNPUStream()
{
    return NPUStream();
}

}  // namespace c10_npu
