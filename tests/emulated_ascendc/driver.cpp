// The kernels of impls/ascendc/dcnv3_kernel.h on the emulated Ascend C API, behind a C ABI for ctypes
// (tests/emulated_ascendc/__init__.py): the device code and its host-side checks without torch, so that a
// planted bug rebuilds in seconds. The host code proper (dcnv3_ascendc.asc) is built and run on the
// emulated NPU by build_library().
#include <algorithm>
#include <cstdio>

#include "kernel_operator.h"
#include "dcnv3_kernel.h"

namespace {

enum Counter { COPIES_IN, COPIES_OUT, BYTES_IN, BYTES_OUT, BARRIERS, FLAGS, VECTOR_OPS, SCALAR_UB, UB_BYTES,
               STORES_MIN, STORES_MAX };

void Register(const float* buffer, size_t floats)
{
    ascendc_emulation::GlobalBuffers().push_back({reinterpret_cast<const uint8_t*>(buffer), floats * 4});
}

void Track(const float* region, size_t floats)
{
    ascendc_emulation::Tracked().push_back({reinterpret_cast<const uint8_t*>(region), floats * 4,
                                           std::vector<uint32_t>(floats, 0)});
}

}  // namespace

// shape: batch, height, width, out_h, out_w; geometry: kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
// dilation_h, dilation_w, group, group_channels. Forward writes outputs[0]; backward outputs[0..2] (grad_input
// zeroed by the caller, as the host code does). Returns 0, or 1 with the failure in `error`.
extern "C" int dcnv3_emulated_run(int backward, const int64_t* shape, const int64_t* geometry, double offsetScale,
                                  int removeCenter, int64_t blockPixels, int64_t blocks, float* input, float* offset,
                                  float* mask, float* gradOutput, float** outputs, uint64_t* counters, char* error,
                                  size_t errorSize)
{
    try {
        DCNv3Tiling tiling = dcnv3_device::MakeTiling(shape[0], shape[1], shape[2], shape[3], shape[4], geometry[0],
                                                      geometry[1], geometry[2], geometry[3], geometry[4], geometry[5],
                                                      geometry[6], geometry[7], geometry[8], geometry[9], offsetScale,
                                                      removeCenter != 0);
        std::fill(counters, counters + STORES_MAX + 1, 0);
        std::string invalid = dcnv3_device::SetLaunch(tiling, blockPixels, blocks, backward != 0);
        if (!invalid.empty()) {
            std::snprintf(error, errorSize, "%s", invalid.c_str());
            return 1;
        }
        if (tiling.pixels == 0) {  // an empty batch: no launch, as the host code does
            return 0;
        }
        uint64_t channels = static_cast<uint64_t>(tiling.group) * tiling.groupChannels;
        size_t inputs = static_cast<size_t>(shape[0]) * shape[1] * shape[2] * channels;
        size_t offsets = static_cast<size_t>(tiling.pixels) * tiling.group * 2 * tiling.points;
        size_t masks = static_cast<size_t>(tiling.pixels) * tiling.group * tiling.points;
        size_t outputsSize = static_cast<size_t>(tiling.pixels) * channels;
        ascendc_emulation::Count() = ascendc_emulation::Counters();
        ascendc_emulation::Tracked().clear();
        ascendc_emulation::GlobalBuffers().clear();
        Register(input, inputs);
        Register(offset, offsets);
        Register(mask, masks);
        if (backward == 0) {
            Register(outputs[0], outputsSize);
        } else {
            Register(gradOutput, outputsSize);
            Register(outputs[0], inputs);
            Register(outputs[1], offsets);
            Register(outputs[2], masks);
        }
        if (backward == 0) {
            Track(outputs[0], outputsSize);
            ascendc_emulation::Launch(static_cast<uint32_t>(blocks), nullptr, dcnv3_forward_kernel, (GM_ADDR)input,
                                      (GM_ADDR)offset, (GM_ADDR)mask, (GM_ADDR)outputs[0], tiling);
        } else {
            Track(outputs[1], offsets);
            Track(outputs[2], masks);
            ascendc_emulation::Launch(static_cast<uint32_t>(blocks), nullptr, dcnv3_backward_kernel, (GM_ADDR)input,
                                      (GM_ADDR)offset, (GM_ADDR)mask, (GM_ADDR)gradOutput, (GM_ADDR)outputs[0],
                                      (GM_ADDR)outputs[1], (GM_ADDR)outputs[2], tiling);
        }
        const ascendc_emulation::Counters& c = ascendc_emulation::Count();
        counters[COPIES_IN] = c.copiesIn;
        counters[COPIES_OUT] = c.copiesOut;
        counters[BYTES_IN] = c.bytesIn;
        counters[BYTES_OUT] = c.bytesOut;
        counters[BARRIERS] = c.barriers;
        counters[FLAGS] = c.flags;
        counters[VECTOR_OPS] = c.vectorOps;
        counters[SCALAR_UB] = c.scalarUb;
        counters[UB_BYTES] = c.ubBytes;
        counters[STORES_MIN] = UINT64_MAX;
        counters[STORES_MAX] = 0;
        for (const ascendc_emulation::TrackedRegion& region : ascendc_emulation::Tracked()) {
            for (uint32_t stores : region.stores) {
                counters[STORES_MIN] = std::min<uint64_t>(counters[STORES_MIN], stores);
                counters[STORES_MAX] = std::max<uint64_t>(counters[STORES_MAX], stores);
            }
        }
        return 0;
    } catch (const std::exception& failure) {
        std::snprintf(error, errorSize, "%s", failure.what());
        return 1;
    }
}
