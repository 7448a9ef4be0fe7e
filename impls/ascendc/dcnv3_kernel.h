/*
 * DCNv3 forward and backward for Ascend 910B vector cores (dav-2201), float32: the device code of
 * dcnv3_ascendc.asc, which includes it. Plain Ascend C apart from the host-side helpers at the end
 * (MakeTiling, SetLaunch), so that CI builds this file unchanged against an emulated Ascend C API
 * (tests/emulated_ascendc) and runs it through the parity problems; `nox -s build-ascendc` builds it on
 * an Ascend host and `nox -s bench-npu` checks it there.
 *
 * Work split (block_pixels and blocks come from tiling.plan() on the host side, never computed here):
 *   a tile = `blockPixels` consecutive output pixels of one group (the last one per group may be
 *   short); core b takes tiles b, b + GetBlockNum(), ...
 * Per tile: one strided DataCopyPad brings the tile's offsets [count x 2P] and masks [count x P]
 * into UB; per pixel and point the position is computed on the scalar unit; each in-bounds
 * corner's D channels are one contiguous run, copied GM -> UB in one DataCopyPad and accumulated
 * in float32 with Axpy; the tile's output leaves in one strided DataCopyPad.
 * Backward: grad_mask and grad_offset are written once per element (one strided copy per tile);
 * grad_input is accumulated with GM atomic adds (SetAtomicAdd<float>), so it is not bitwise
 * reproducible, like InternImage's CUDA kernel.
 * Every copy and vector op is followed by PipeBarrier<PIPE_ALL>: simple and obviously ordered,
 * not yet double-buffered.
 */
#pragma once

#include <string>

#include "kernel_operator.h"

// The shape and tiling, passed to the kernels by value (as Ascend/samples' kernel-launch examples pass
// their tiling structs): no device copy per call, no stale copy to read.
struct DCNv3Tiling {
    uint32_t height, width, outH, outW, pixels;
    uint32_t kernelH, kernelW, strideH, strideW, padH, padW, dilationH, dilationW;
    uint32_t group, groupChannels, points, removeCenter;
    uint32_t blockPixels;
    float offsetScale;
};

namespace dcnv3_device {


constexpr uint32_t FLOATS_PER_BLOCK = 8;  // UB bursts and buffers are 32-byte aligned

__aicore__ inline uint32_t AlignedFloats(uint32_t count)
{
    return (count + FLOATS_PER_BLOCK - 1) / FLOATS_PER_BLOCK * FLOATS_PER_BLOCK;
}

__aicore__ inline int32_t Floor(float value)
{
    int32_t truncated = static_cast<int32_t>(value);
    return static_cast<float>(truncated) > value ? truncated - 1 : truncated;
}

using Geometry = DCNv3Tiling;

// The unified buffer a tile of `blockPixels` pixels takes, in bytes: the sum of the kernels' InitBuffer calls.
struct UbLayout {
    uint32_t run, offsetRun, maskRun;

    __aicore__ inline explicit UbLayout(const Geometry& g)
        : run(AlignedFloats(g.groupChannels)), offsetRun(AlignedFloats(2 * g.points)), maskRun(AlignedFloats(g.points))
    {}
    __aicore__ inline uint64_t ForwardBytes(uint64_t blockPixels) const
    {
        return (blockPixels * (run + offsetRun + maskRun) + 4 * run) * 4;
    }
    __aicore__ inline uint64_t BackwardBytes(uint64_t blockPixels) const
    {
        return (blockPixels * (run + 2 * offsetRun + 2 * maskRun) + 8 * run) * 4;
    }
};

// One sampling point of one output pixel: where it lands and its four bilinear corners.
struct Sample {
    bool inside;
    int32_t y0, x0;
    float ly, lx;
};

__aicore__ inline Sample Locate(const Geometry& g, uint32_t ho, uint32_t wo, uint32_t point, float dx, float dy)
{
    uint32_t centre = (g.kernelW / 2) * g.kernelH + g.kernelH / 2;
    uint32_t position = point + ((g.removeCenter != 0 && point >= centre) ? 1 : 0);
    int32_t i = static_cast<int32_t>(position / g.kernelH);
    int32_t j = static_cast<int32_t>(position % g.kernelH);
    int32_t cw = static_cast<int32_t>(g.dilationW * (g.kernelW - 1) / 2);
    int32_t ch = static_cast<int32_t>(g.dilationH * (g.kernelH - 1) / 2);
    float x = static_cast<float>(static_cast<int32_t>(wo * g.strideW) - static_cast<int32_t>(g.padW) + cw) +
              static_cast<float>(i * static_cast<int32_t>(g.dilationW) - cw) * g.offsetScale + dx * g.offsetScale;
    float y = static_cast<float>(static_cast<int32_t>(ho * g.strideH) - static_cast<int32_t>(g.padH) + ch) +
              static_cast<float>(j * static_cast<int32_t>(g.dilationH) - ch) * g.offsetScale + dy * g.offsetScale;
    Sample s;
    s.inside = y > -1.0f && x > -1.0f && y < static_cast<float>(g.height) && x < static_cast<float>(g.width);
    s.y0 = s.inside ? Floor(y) : 0;
    s.x0 = s.inside ? Floor(x) : 0;
    s.ly = y - static_cast<float>(s.y0);
    s.lx = x - static_cast<float>(s.x0);
    return s;
}

// Corner c (0: y0,x0  1: y0,x0+1  2: y0+1,x0  3: y0+1,x0+1): in bounds, its weight and GM run start.
__aicore__ inline bool Corner(const Geometry& g, const Sample& s, uint32_t c, uint32_t n, uint32_t group,
                              float& weight, uint64_t& run)
{
    int32_t row = s.y0 + static_cast<int32_t>(c / 2);
    int32_t col = s.x0 + static_cast<int32_t>(c % 2);
    if (!s.inside || row < 0 || col < 0 || row >= static_cast<int32_t>(g.height) ||
        col >= static_cast<int32_t>(g.width)) {
        return false;
    }
    float fy = (c / 2 == 1) ? s.ly : 1.0f - s.ly;
    float fx = (c % 2 == 1) ? s.lx : 1.0f - s.lx;
    weight = fy * fx;
    uint64_t channels = static_cast<uint64_t>(g.group) * g.groupChannels;
    run = ((static_cast<uint64_t>(n) * g.height + row) * g.width + col) * channels + group * g.groupChannels;
    return true;
}

class TileWalker {
public:
    __aicore__ inline void Bounds(const Geometry& g, uint32_t tile)
    {
        group = tile % g.group;
        first = (tile / g.group) * g.blockPixels;
        count = g.pixels - first < g.blockPixels ? g.pixels - first : g.blockPixels;
    }
    uint32_t group, first, count;
};

// GM -> UB: `count` bursts of `length` floats, `stride` floats apart in GM, each at a 32-byte boundary in UB.
__aicore__ inline void CopyIn(const AscendC::LocalTensor<float>& dst, const AscendC::GlobalTensor<float>& src,
                              uint32_t count, uint32_t length, uint32_t stride)
{
    AscendC::DataCopyExtParams params{static_cast<uint16_t>(count), length * 4, (stride - length) * 4, 0, 0};
    AscendC::DataCopyPadExtParams<float> pad{false, 0, 0, 0.0f};
    AscendC::DataCopyPad(dst, src, params, pad);
    AscendC::PipeBarrier<PIPE_ALL>();
}

// UB -> GM: the inverse of CopyIn.
__aicore__ inline void CopyOut(const AscendC::GlobalTensor<float>& dst, const AscendC::LocalTensor<float>& src,
                               uint32_t count, uint32_t length, uint32_t stride)
{
    AscendC::DataCopyExtParams params{static_cast<uint16_t>(count), length * 4, 0, (stride - length) * 4, 0};
    AscendC::DataCopyPad(dst, src, params);
    AscendC::PipeBarrier<PIPE_ALL>();
}

__aicore__ inline float Dot(const AscendC::LocalTensor<float>& a, const AscendC::LocalTensor<float>& b,
                            const AscendC::LocalTensor<float>& scratch, uint32_t length)
{
    AscendC::Mul(scratch, a, b, length);
    AscendC::PipeBarrier<PIPE_ALL>();
    float sum = 0.0f;
    for (uint32_t c = 0; c < length; ++c) {
        sum += scratch.GetValue(c);
    }
    return sum;
}

class DCNv3Forward {
public:
    __aicore__ inline void Init(GM_ADDR input, GM_ADDR offset, GM_ADDR mask, GM_ADDR output,
                                const DCNv3Tiling& tiling)
    {
        g = tiling;
        uint64_t channels = static_cast<uint64_t>(g.group) * g.groupChannels;
        inputGm.SetGlobalBuffer((__gm__ float*)input);
        offsetGm.SetGlobalBuffer((__gm__ float*)offset);
        maskGm.SetGlobalBuffer((__gm__ float*)mask);
        outputGm.SetGlobalBuffer((__gm__ float*)output);
        UbLayout layout(g);
        run = layout.run;
        offsetRun = layout.offsetRun;
        maskRun = layout.maskRun;
        depth = static_cast<uint32_t>(channels);
        pipe.InitBuffer(accumulatorBuf, g.blockPixels * run * 4);
        pipe.InitBuffer(offsetBuf, g.blockPixels * offsetRun * 4);
        pipe.InitBuffer(maskBuf, g.blockPixels * maskRun * 4);
        pipe.InitBuffer(cornerBuf, 4 * run * 4);
    }

    __aicore__ inline void Process()
    {
        uint32_t tiles = (g.pixels + g.blockPixels - 1) / g.blockPixels * g.group;
        for (uint32_t tile = AscendC::GetBlockIdx(); tile < tiles; tile += AscendC::GetBlockNum()) {
            Tile(tile);
        }
    }

private:
    __aicore__ inline void Tile(uint32_t tile)
    {
        TileWalker t;
        t.Bounds(g, tile);
        AscendC::LocalTensor<float> accumulator = accumulatorBuf.Get<float>();
        AscendC::LocalTensor<float> offsets = offsetBuf.Get<float>();
        AscendC::LocalTensor<float> masks = maskBuf.Get<float>();
        AscendC::LocalTensor<float> corner = cornerBuf.Get<float>();
        uint32_t points = g.points;
        CopyIn(offsets, offsetGm[static_cast<uint64_t>(t.first) * g.group * 2 * points + t.group * 2 * points],
               t.count, 2 * points, g.group * 2 * points);
        CopyIn(masks, maskGm[static_cast<uint64_t>(t.first) * g.group * points + t.group * points],
               t.count, points, g.group * points);
        AscendC::Duplicate(accumulator, 0.0f, t.count * run);
        AscendC::PipeBarrier<PIPE_ALL>();
        for (uint32_t k = 0; k < t.count; ++k) {
            uint32_t pixel = t.first + k;
            uint32_t n = pixel / (g.outH * g.outW);
            uint32_t ho = pixel / g.outW % g.outH;
            uint32_t wo = pixel % g.outW;
            for (uint32_t p = 0; p < points; ++p) {
                Sample s = Locate(g, ho, wo, p, offsets.GetValue(k * offsetRun + 2 * p),
                                  offsets.GetValue(k * offsetRun + 2 * p + 1));
                float weightOfPoint = masks.GetValue(k * maskRun + p);
                for (uint32_t c = 0; c < 4; ++c) {
                    float weight;
                    uint64_t start;
                    if (!Corner(g, s, c, n, t.group, weight, start)) {
                        continue;
                    }
                    CopyIn(corner, inputGm[start], 1, g.groupChannels, g.groupChannels);
                    AscendC::Axpy(accumulator[k * run], corner, weightOfPoint * weight, g.groupChannels);
                    AscendC::PipeBarrier<PIPE_ALL>();
                }
            }
        }
        CopyOut(outputGm[static_cast<uint64_t>(t.first) * depth + t.group * g.groupChannels], accumulator,
                t.count, g.groupChannels, depth);
    }

    Geometry g;
    uint32_t run, offsetRun, maskRun, depth;
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> accumulatorBuf, offsetBuf, maskBuf, cornerBuf;
    AscendC::GlobalTensor<float> inputGm, offsetGm, maskGm, outputGm;
};

class DCNv3Backward {
public:
    __aicore__ inline void Init(GM_ADDR input, GM_ADDR offset, GM_ADDR mask, GM_ADDR gradOutput, GM_ADDR gradInput,
                                GM_ADDR gradOffset, GM_ADDR gradMask, const DCNv3Tiling& tiling)
    {
        g = tiling;
        inputGm.SetGlobalBuffer((__gm__ float*)input);
        offsetGm.SetGlobalBuffer((__gm__ float*)offset);
        maskGm.SetGlobalBuffer((__gm__ float*)mask);
        gradOutputGm.SetGlobalBuffer((__gm__ float*)gradOutput);
        gradInputGm.SetGlobalBuffer((__gm__ float*)gradInput);
        gradOffsetGm.SetGlobalBuffer((__gm__ float*)gradOffset);
        gradMaskGm.SetGlobalBuffer((__gm__ float*)gradMask);
        UbLayout layout(g);
        run = layout.run;
        offsetRun = layout.offsetRun;
        maskRun = layout.maskRun;
        depth = g.group * g.groupChannels;
        pipe.InitBuffer(upstreamBuf, g.blockPixels * run * 4);
        pipe.InitBuffer(offsetBuf, g.blockPixels * offsetRun * 4);
        pipe.InitBuffer(maskBuf, g.blockPixels * maskRun * 4);
        pipe.InitBuffer(gradOffsetBuf, g.blockPixels * offsetRun * 4);
        pipe.InitBuffer(gradMaskBuf, g.blockPixels * maskRun * 4);
        pipe.InitBuffer(scratchBuf, 8 * run * 4);
    }

    __aicore__ inline void Process()
    {
        uint32_t tiles = (g.pixels + g.blockPixels - 1) / g.blockPixels * g.group;
        for (uint32_t tile = AscendC::GetBlockIdx(); tile < tiles; tile += AscendC::GetBlockNum()) {
            Tile(tile);
        }
    }

private:
    __aicore__ inline void Tile(uint32_t tile)
    {
        TileWalker t;
        t.Bounds(g, tile);
        uint32_t points = g.points;
        AscendC::LocalTensor<float> upstream = upstreamBuf.Get<float>();
        AscendC::LocalTensor<float> offsets = offsetBuf.Get<float>();
        AscendC::LocalTensor<float> masks = maskBuf.Get<float>();
        AscendC::LocalTensor<float> gradOffsets = gradOffsetBuf.Get<float>();
        AscendC::LocalTensor<float> gradMasks = gradMaskBuf.Get<float>();
        AscendC::LocalTensor<float> scratch = scratchBuf.Get<float>();
        // scratch: four corner runs, then value, d/dy, d/dx and the gradient being added
        AscendC::LocalTensor<float> value = scratch[4 * run];
        AscendC::LocalTensor<float> dValueDy = scratch[5 * run];
        AscendC::LocalTensor<float> dValueDx = scratch[6 * run];
        AscendC::LocalTensor<float> added = scratch[7 * run];
        uint64_t offsetStart = static_cast<uint64_t>(t.first) * g.group * 2 * points + t.group * 2 * points;
        uint64_t maskStart = static_cast<uint64_t>(t.first) * g.group * points + t.group * points;
        CopyIn(offsets, offsetGm[offsetStart], t.count, 2 * points, g.group * 2 * points);
        CopyIn(masks, maskGm[maskStart], t.count, points, g.group * points);
        CopyIn(upstream, gradOutputGm[static_cast<uint64_t>(t.first) * depth + t.group * g.groupChannels],
               t.count, g.groupChannels, depth);
        for (uint32_t k = 0; k < t.count; ++k) {
            uint32_t pixel = t.first + k;
            uint32_t n = pixel / (g.outH * g.outW);
            uint32_t ho = pixel / g.outW % g.outH;
            uint32_t wo = pixel % g.outW;
            AscendC::LocalTensor<float> upstreamRun = upstream[k * run];
            for (uint32_t p = 0; p < points; ++p) {
                Sample s = Locate(g, ho, wo, p, offsets.GetValue(k * offsetRun + 2 * p),
                                  offsets.GetValue(k * offsetRun + 2 * p + 1));
                float weightOfPoint = masks.GetValue(k * maskRun + p);
                AscendC::Duplicate(value, 0.0f, 3 * run);  // value, d/dy and d/dx are adjacent
                AscendC::PipeBarrier<PIPE_ALL>();
                for (uint32_t c = 0; c < 4; ++c) {
                    float weight;
                    uint64_t start;
                    if (!Corner(g, s, c, n, t.group, weight, start)) {
                        continue;
                    }
                    AscendC::LocalTensor<float> corner = scratch[c * run];
                    CopyIn(corner, inputGm[start], 1, g.groupChannels, g.groupChannels);
                    float fy = (c / 2 == 1) ? s.ly : 1.0f - s.ly;
                    float fx = (c % 2 == 1) ? s.lx : 1.0f - s.lx;
                    AscendC::Axpy(value, corner, weight, g.groupChannels);
                    AscendC::Axpy(dValueDy, corner, (c / 2 == 1 ? 1.0f : -1.0f) * fx, g.groupChannels);
                    AscendC::Axpy(dValueDx, corner, (c % 2 == 1 ? 1.0f : -1.0f) * fy, g.groupChannels);
                    AscendC::Muls(added, upstreamRun, weightOfPoint * weight, g.groupChannels);
                    AscendC::PipeBarrier<PIPE_ALL>();
                    AscendC::SetAtomicAdd<float>();
                    CopyOut(gradInputGm[start], added, 1, g.groupChannels, g.groupChannels);
                    AscendC::SetAtomicNone();
                }
                float scaled = g.offsetScale * weightOfPoint;
                gradMasks.SetValue(k * maskRun + p, Dot(upstreamRun, value, added, g.groupChannels));
                gradOffsets.SetValue(k * offsetRun + 2 * p, scaled * Dot(upstreamRun, dValueDx, added, g.groupChannels));
                gradOffsets.SetValue(k * offsetRun + 2 * p + 1,
                                     scaled * Dot(upstreamRun, dValueDy, added, g.groupChannels));
            }
        }
        AscendC::PipeBarrier<PIPE_ALL>();
        CopyOut(gradOffsetGm[offsetStart], gradOffsets, t.count, 2 * points, g.group * 2 * points);
        CopyOut(gradMaskGm[maskStart], gradMasks, t.count, points, g.group * points);
    }

    Geometry g;
    uint32_t run, offsetRun, maskRun, depth;
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> upstreamBuf, offsetBuf, maskBuf, gradOffsetBuf, gradMaskBuf, scratchBuf;
    AscendC::GlobalTensor<float> inputGm, offsetGm, maskGm, gradOutputGm, gradInputGm, gradOffsetGm, gradMaskGm;
};

// Host side. A 910B vector core's unified buffer (the plan's budget, impls/ascendc/tiling.py).
constexpr uint64_t UNIFIED_BUFFER_BYTES = 192 * 1024;
// numBlocks of a <<<numBlocks, l2ctrl, stream>>> launch (asc-devkit, SIMD-BuiltIn关键字.md).
constexpr int64_t MAX_BLOCKS = 65535;

// Host side: a call's shape and arguments as the kernels read them (blockPixels set once checked).
inline Geometry MakeTiling(int64_t batch, int64_t height, int64_t width, int64_t outH, int64_t outW, int64_t kernelH,
                           int64_t kernelW, int64_t strideH, int64_t strideW, int64_t padH, int64_t padW,
                           int64_t dilationH, int64_t dilationW, int64_t group, int64_t groupChannels,
                           double offsetScale, bool removeCenter)
{
    Geometry g{};
    const int64_t fields[] = {height, width, outH, outW, batch * outH * outW, kernelH, kernelW, strideH, strideW,
                              padH, padW, dilationH, dilationW, group, groupChannels,
                              kernelH * kernelW - (removeCenter ? 1 : 0), removeCenter ? 1 : 0};
    uint32_t* targets[] = {&g.height, &g.width, &g.outH, &g.outW, &g.pixels, &g.kernelH, &g.kernelW, &g.strideH,
                           &g.strideW, &g.padH, &g.padW, &g.dilationH, &g.dilationW, &g.group, &g.groupChannels,
                           &g.points, &g.removeCenter};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); ++i) {
        *targets[i] = static_cast<uint32_t>(fields[i]);
    }
    g.offsetScale = static_cast<float>(offsetScale);
    return g;
}

// Host side: `g` set to launch `blocks` cores on tiles of `blockPixels` pixels, or why that would go wrong.
// An empty batch launches nothing and needs neither.
inline std::string SetLaunch(Geometry& g, int64_t blockPixels, int64_t blocks, bool backward)
{
    if (g.pixels == 0) {
        return "";
    }
    if (blockPixels < 1 || blockPixels > static_cast<int64_t>(g.pixels)) {
        return "block_pixels=" + std::to_string(blockPixels) + " must lie in [1, " + std::to_string(g.pixels) +
               "] (the call's output pixels)";
    }
    if (blocks < 1 || blocks > MAX_BLOCKS) {
        return "blocks=" + std::to_string(blocks) + " must lie in [1, 65535]";
    }
    UbLayout layout(g);
    uint64_t bytes = backward ? layout.BackwardBytes(blockPixels) : layout.ForwardBytes(blockPixels);
    if (bytes > UNIFIED_BUFFER_BYTES) {
        return "block_pixels=" + std::to_string(blockPixels) + " needs " + std::to_string(bytes) +
               " bytes of unified buffer; a 910B vector core has " + std::to_string(UNIFIED_BUFFER_BYTES);
    }
    g.blockPixels = static_cast<uint32_t>(blockPixels);
    return "";
}

}  // namespace dcnv3_device

__global__ __vector__ void dcnv3_forward_kernel(GM_ADDR input, GM_ADDR offset, GM_ADDR mask, GM_ADDR output,
                                                DCNv3Tiling tiling)
{
    AscendC::InitSocState();
    dcnv3_device::DCNv3Forward op;
    op.Init(input, offset, mask, output, tiling);
    op.Process();
    AscendC::PipeBarrier<PIPE_ALL>();
}

__global__ __vector__ void dcnv3_backward_kernel(GM_ADDR input, GM_ADDR offset, GM_ADDR mask, GM_ADDR gradOutput,
                                                 GM_ADDR gradInput, GM_ADDR gradOffset, GM_ADDR gradMask,
                                                 DCNv3Tiling tiling)
{
    AscendC::InitSocState();
    dcnv3_device::DCNv3Backward op;
    op.Init(input, offset, mask, gradOutput, gradInput, gradOffset, gradMask, tiling);
    op.Process();
    AscendC::PipeBarrier<PIPE_ALL>();
}

