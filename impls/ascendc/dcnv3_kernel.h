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
 * Per tile: one strided DataCopyPad each brings the tile's offsets [count x 2P] and masks [count x P]
 * into UB, where the scalar unit reads them to place each sampling point. A point's 2x2 window is two
 * image rows of two adjacent pixels, and a row's two pixels of one group are two runs of D floats C
 * floats apart in NHWC: one DataCopyPad of two bursts each (one burst at the image's left or right
 * edge, none for a row outside it), so at most two copies per point. The window lands in one of two
 * corner slots: the copies of the next point go into the other slot while the vector unit accumulates
 * this one in float32 (Axpy), ordered by SetFlag/WaitFlag pairs per slot, with no PipeBarrier in the
 * point loop. The tile's output leaves in one strided DataCopyPad.
 * Backward: the same window fetch; value, d/dy and d/dx of the window by Axpy; their channel dots with
 * the upstream gradient as one WholeReduceSum per point, read by the scalar unit once per tile to write
 * grad_mask and grad_offset (each element stored once, one strided copy per tile); grad_input as two
 * atomic-add copies per point (SetAtomicAdd<float>, rows of two pixels again) from double-buffered
 * slots, so it is not bitwise reproducible, like InternImage's CUDA kernel.
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

// A point's window is fetched into one of SLOTS slots while the vector unit works on the last one. Event
// ids: the slots take 0 and 1; a tile's own buffers take TILE_EVENT.
constexpr int8_t SLOTS = 2;
constexpr int8_t TILE_EVENT = 2;

// WholeReduceSum sums at most 64 floats per repeat (WholeReduceSum.md): a run of D > 64 floats is
// reduced in `chunks` runs of 64, zero-padded.
constexpr uint32_t REDUCE_FLOATS = 64;

// The unified buffer a tile of `blockPixels` pixels takes, in bytes: the sum of the kernels' InitBuffer calls.
struct UbLayout {
    uint32_t run, offsetRun, maskRun, chunks, productRun, dotsRun;

    __aicore__ inline explicit UbLayout(const Geometry& g)
        : run(AlignedFloats(g.groupChannels)), offsetRun(AlignedFloats(2 * g.points)), maskRun(AlignedFloats(g.points)),
          chunks((g.groupChannels + REDUCE_FLOATS - 1) / REDUCE_FLOATS),
          productRun(chunks == 1 ? run : chunks * REDUCE_FLOATS), dotsRun(AlignedFloats(3 * chunks * g.points))
    {}
    // per pixel: accumulator, offsets, masks; fixed: two window slots of four runs
    __aicore__ inline uint64_t ForwardBytes(uint64_t blockPixels) const
    {
        return (blockPixels * (run + offsetRun + maskRun) + SLOTS * 4 * run) * 4;
    }
    // per pixel: grad_output, offsets, masks, dots, grad_offset, grad_mask; fixed: two window slots and two
    // grad_input slots of four runs, value with d/dy and d/dx, and their chunk-padded products
    __aicore__ inline uint64_t BackwardBytes(uint64_t blockPixels) const
    {
        return (blockPixels * (run + 2 * offsetRun + 2 * maskRun + dotsRun) + (2 * SLOTS * 4 + 3) * run +
                3 * productRun) * 4;
    }
};

// One sampling point of one output pixel: where it lands, the top-left pixel of its 2x2 window and the
// bilinear fractions.
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

// Row r (0: y0, 1: y0 + 1) of a point's window: its in-bounds pixels among x0 and x0 + 1, as one
// copy of `pixels` bursts of D floats, C floats apart in GM, from pixel x0 + `first` (slot position
// `first` in UB); pixels = 0 where the row is outside the image.
struct WindowRow {
    uint32_t first, pixels;
    uint64_t start;
};

__aicore__ inline WindowRow Row(const Geometry& g, const Sample& s, uint32_t r, uint32_t n, uint32_t group)
{
    WindowRow row{0, 0, 0};
    int32_t y = s.y0 + static_cast<int32_t>(r);
    if (y < 0 || y >= static_cast<int32_t>(g.height)) {
        return row;
    }
    row.first = s.x0 < 0 ? 1 : 0;
    uint32_t last = s.x0 + 1 < static_cast<int32_t>(g.width) ? 1 : 0;
    row.pixels = last + 1 - row.first;
    uint64_t channels = static_cast<uint64_t>(g.group) * g.groupChannels;
    uint64_t column = static_cast<uint64_t>(s.x0 + static_cast<int32_t>(row.first));
    row.start = ((static_cast<uint64_t>(n) * g.height + y) * g.width + column) * channels + group * g.groupChannels;
    return row;
}

// Corner c = 2r + j of the window (pixel y0 + r, x0 + j): its bilinear weight.
__aicore__ inline float CornerWeight(const Sample& s, uint32_t c)
{
    return ((c / 2 == 1) ? s.ly : 1.0f - s.ly) * ((c % 2 == 1) ? s.lx : 1.0f - s.lx);
}

__aicore__ inline bool CornerInRow(const WindowRow& row, uint32_t c)
{
    return c % 2 >= row.first && c % 2 < row.first + row.pixels;
}

class TileWalker {
public:
    __aicore__ inline void Bounds(const Geometry& g, uint32_t tile)
    {
        group = tile % g.group;
        first = (tile / g.group) * g.blockPixels;
        count = g.pixels - first < g.blockPixels ? g.pixels - first : g.blockPixels;
    }
    __aicore__ inline void Pixel(const Geometry& g, uint32_t k)
    {
        uint32_t pixel = first + k;
        n = pixel / (g.outH * g.outW);
        ho = pixel / g.outW % g.outH;
        wo = pixel % g.outW;
    }
    uint32_t group, first, count, n, ho, wo;
};

// GM -> UB: `count` bursts of `length` floats, `stride` floats apart in GM, each at a 32-byte boundary in UB.
__aicore__ inline void CopyIn(const AscendC::LocalTensor<float>& dst, const AscendC::GlobalTensor<float>& src,
                              uint32_t count, uint32_t length, uint32_t stride)
{
    AscendC::DataCopyExtParams params{static_cast<uint16_t>(count), length * 4, (stride - length) * 4, 0, 0};
    AscendC::DataCopyPadExtParams<float> pad{false, 0, 0, 0.0f};
    AscendC::DataCopyPad(dst, src, params, pad);
}

// UB -> GM: the inverse of CopyIn.
__aicore__ inline void CopyOut(const AscendC::GlobalTensor<float>& dst, const AscendC::LocalTensor<float>& src,
                               uint32_t count, uint32_t length, uint32_t stride)
{
    AscendC::DataCopyExtParams params{static_cast<uint16_t>(count), length * 4, 0, (stride - length) * 4, 0};
    AscendC::DataCopyPad(dst, src, params);
}

// `event`'s flag set and waited for at once: the destination pipe waits for what the source pipe has issued.
template <AscendC::HardEvent event>
__aicore__ inline void Handoff(int8_t id)
{
    AscendC::SetFlag<event>(id);
    AscendC::WaitFlag<event>(id);
}

// A point's window in a slot: rows of two pixel runs, `run` floats each; the window fetch is the same
// for forward and backward.
__aicore__ inline void FetchWindow(const Geometry& g, const Sample& s, const TileWalker& t, uint32_t run,
                                   const AscendC::GlobalTensor<float>& inputGm,
                                   const AscendC::LocalTensor<float>& window, WindowRow rows[2])
{
    for (uint32_t r = 0; r < 2; ++r) {
        rows[r] = Row(g, s, r, t.n, t.group);
        if (rows[r].pixels != 0) {
            CopyIn(window[(2 * r + rows[r].first) * run], inputGm[rows[r].start], rows[r].pixels, g.groupChannels,
                   g.group * g.groupChannels);
        }
    }
}

class DCNv3Forward {
public:
    __aicore__ inline void Init(GM_ADDR input, GM_ADDR offset, GM_ADDR mask, GM_ADDR output,
                                const DCNv3Tiling& tiling)
    {
        g = tiling;
        inputGm.SetGlobalBuffer((__gm__ float*)input);
        offsetGm.SetGlobalBuffer((__gm__ float*)offset);
        maskGm.SetGlobalBuffer((__gm__ float*)mask);
        outputGm.SetGlobalBuffer((__gm__ float*)output);
        UbLayout layout(g);
        run = layout.run;
        offsetRun = layout.offsetRun;
        maskRun = layout.maskRun;
        pipe.InitBuffer(accumulatorBuf, g.blockPixels * run * 4);
        pipe.InitBuffer(offsetBuf, g.blockPixels * offsetRun * 4);
        pipe.InitBuffer(maskBuf, g.blockPixels * maskRun * 4);
        pipe.InitBuffer(windowBuf, SLOTS * 4 * run * 4);
    }

    __aicore__ inline void Process()
    {
        AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(0);
        AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(1);
        AscendC::SetFlag<AscendC::HardEvent::MTE3_V>(TILE_EVENT);
        uint32_t tiles = (g.pixels + g.blockPixels - 1) / g.blockPixels * g.group;
        for (uint32_t tile = AscendC::GetBlockIdx(); tile < tiles; tile += AscendC::GetBlockNum()) {
            Tile(tile);
        }
        AscendC::WaitFlag<AscendC::HardEvent::V_MTE2>(0);
        AscendC::WaitFlag<AscendC::HardEvent::V_MTE2>(1);
        AscendC::WaitFlag<AscendC::HardEvent::MTE3_V>(TILE_EVENT);
    }

private:
    __aicore__ inline void Tile(uint32_t tile)
    {
        TileWalker t;
        t.Bounds(g, tile);
        AscendC::LocalTensor<float> accumulator = accumulatorBuf.Get<float>();
        AscendC::LocalTensor<float> offsets = offsetBuf.Get<float>();
        AscendC::LocalTensor<float> masks = maskBuf.Get<float>();
        uint32_t points = g.points;
        CopyIn(offsets, offsetGm[static_cast<uint64_t>(t.first) * g.group * 2 * points + t.group * 2 * points],
               t.count, 2 * points, g.group * 2 * points);
        CopyIn(masks, maskGm[static_cast<uint64_t>(t.first) * g.group * points + t.group * points],
               t.count, points, g.group * points);
        Handoff<AscendC::HardEvent::MTE2_S>(TILE_EVENT);
        AscendC::WaitFlag<AscendC::HardEvent::MTE3_V>(TILE_EVENT);  // the last tile's output has left
        AscendC::Duplicate(accumulator, 0.0f, t.count * run);
        for (uint32_t k = 0; k < t.count; ++k) {
            t.Pixel(g, k);
            for (uint32_t p = 0; p < points; ++p) {
                Sample s = Locate(g, t.ho, t.wo, p, offsets.GetValue(k * offsetRun + 2 * p),
                                  offsets.GetValue(k * offsetRun + 2 * p + 1));
                if (!s.inside) {
                    continue;
                }
                float weightOfPoint = masks.GetValue(k * maskRun + p);
                int8_t slot = static_cast<int8_t>(fetched++ % SLOTS);
                AscendC::LocalTensor<float> window = windowBuf.Get<float>()[slot * 4 * run];
                WindowRow rows[2];
                AscendC::WaitFlag<AscendC::HardEvent::V_MTE2>(slot);  // the slot's last window is summed
                FetchWindow(g, s, t, run, inputGm, window, rows);
                Handoff<AscendC::HardEvent::MTE2_V>(slot);
                for (uint32_t c = 0; c < 4; ++c) {
                    if (CornerInRow(rows[c / 2], c)) {
                        AscendC::Axpy(accumulator[k * run], window[c * run], weightOfPoint * CornerWeight(s, c),
                                      g.groupChannels);
                    }
                }
                AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(slot);
            }
        }
        Handoff<AscendC::HardEvent::V_MTE3>(TILE_EVENT);
        CopyOut(outputGm[static_cast<uint64_t>(t.first) * g.group * g.groupChannels + t.group * g.groupChannels],
                accumulator, t.count, g.groupChannels, g.group * g.groupChannels);
        AscendC::SetFlag<AscendC::HardEvent::MTE3_V>(TILE_EVENT);
    }

    Geometry g;
    uint32_t run, offsetRun, maskRun;
    uint32_t fetched = 0;  // windows fetched so far: the next one's slot
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> accumulatorBuf, offsetBuf, maskBuf, windowBuf;
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
        chunks = layout.chunks;
        productRun = layout.productRun;
        dotsRun = layout.dotsRun;
        pipe.InitBuffer(upstreamBuf, g.blockPixels * run * 4);
        pipe.InitBuffer(offsetBuf, g.blockPixels * offsetRun * 4);
        pipe.InitBuffer(maskBuf, g.blockPixels * maskRun * 4);
        pipe.InitBuffer(dotsBuf, g.blockPixels * dotsRun * 4);
        pipe.InitBuffer(gradOffsetBuf, g.blockPixels * offsetRun * 4);
        pipe.InitBuffer(gradMaskBuf, g.blockPixels * maskRun * 4);
        pipe.InitBuffer(windowBuf, SLOTS * 4 * run * 4);
        pipe.InitBuffer(gradWindowBuf, SLOTS * 4 * run * 4);
        pipe.InitBuffer(sampledBuf, 3 * run * 4);
        pipe.InitBuffer(productBuf, 3 * productRun * 4);
        if (chunks > 1) {  // past D the products stay zero: each chunk of WholeReduceSum sums 64 floats
            AscendC::Duplicate(productBuf.Get<float>(), 0.0f, 3 * productRun);
        }
    }

    __aicore__ inline void Process()
    {
        AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(0);
        AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(1);
        AscendC::SetFlag<AscendC::HardEvent::MTE3_V>(0);
        AscendC::SetFlag<AscendC::HardEvent::MTE3_V>(1);
        AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(TILE_EVENT);
        AscendC::SetFlag<AscendC::HardEvent::MTE3_S>(TILE_EVENT);
        uint32_t tiles = (g.pixels + g.blockPixels - 1) / g.blockPixels * g.group;
        for (uint32_t tile = AscendC::GetBlockIdx(); tile < tiles; tile += AscendC::GetBlockNum()) {
            Tile(tile);
        }
        AscendC::WaitFlag<AscendC::HardEvent::V_MTE2>(0);
        AscendC::WaitFlag<AscendC::HardEvent::V_MTE2>(1);
        AscendC::WaitFlag<AscendC::HardEvent::MTE3_V>(0);
        AscendC::WaitFlag<AscendC::HardEvent::MTE3_V>(1);
        AscendC::WaitFlag<AscendC::HardEvent::V_MTE2>(TILE_EVENT);
        AscendC::WaitFlag<AscendC::HardEvent::MTE3_S>(TILE_EVENT);
    }

private:
    __aicore__ inline void Tile(uint32_t tile)
    {
        TileWalker t;
        t.Bounds(g, tile);
        uint32_t points = g.points;
        uint32_t depth = g.group * g.groupChannels;
        AscendC::LocalTensor<float> upstream = upstreamBuf.Get<float>();
        AscendC::LocalTensor<float> offsets = offsetBuf.Get<float>();
        AscendC::LocalTensor<float> masks = maskBuf.Get<float>();
        AscendC::LocalTensor<float> dots = dotsBuf.Get<float>();
        uint64_t offsetStart = static_cast<uint64_t>(t.first) * g.group * 2 * points + t.group * 2 * points;
        uint64_t maskStart = static_cast<uint64_t>(t.first) * g.group * points + t.group * points;
        CopyIn(offsets, offsetGm[offsetStart], t.count, 2 * points, g.group * 2 * points);
        CopyIn(masks, maskGm[maskStart], t.count, points, g.group * points);
        Handoff<AscendC::HardEvent::MTE2_S>(TILE_EVENT);
        AscendC::WaitFlag<AscendC::HardEvent::V_MTE2>(TILE_EVENT);  // the last tile's upstream is used
        CopyIn(upstream, gradOutputGm[static_cast<uint64_t>(t.first) * depth + t.group * g.groupChannels], t.count,
               g.groupChannels, depth);
        Handoff<AscendC::HardEvent::MTE2_V>(TILE_EVENT);
        AscendC::Duplicate(dots, 0.0f, t.count * dotsRun);  // points outside the image have zero gradients
        AscendC::SetAtomicAdd<float>();
        for (uint32_t k = 0; k < t.count; ++k) {
            t.Pixel(g, k);
            for (uint32_t p = 0; p < points; ++p) {
                Sample s = Locate(g, t.ho, t.wo, p, offsets.GetValue(k * offsetRun + 2 * p),
                                  offsets.GetValue(k * offsetRun + 2 * p + 1));
                if (s.inside) {
                    Point(t, s, masks.GetValue(k * maskRun + p), upstream[k * run], dots[k * dotsRun + p * 3 * chunks]);
                }
            }
        }
        AscendC::SetAtomicNone();
        AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(TILE_EVENT);
        Handoff<AscendC::HardEvent::V_S>(TILE_EVENT);
        AscendC::WaitFlag<AscendC::HardEvent::MTE3_S>(TILE_EVENT);  // the last tile's gradients have left
        AscendC::LocalTensor<float> gradOffsets = gradOffsetBuf.Get<float>();
        AscendC::LocalTensor<float> gradMasks = gradMaskBuf.Get<float>();
        for (uint32_t k = 0; k < t.count; ++k) {
            for (uint32_t p = 0; p < points; ++p) {
                float sums[3] = {0.0f, 0.0f, 0.0f};  // with grad_output: value, d/dy, d/dx
                for (uint32_t i = 0; i < 3 * chunks; ++i) {
                    sums[i / chunks] += dots.GetValue(k * dotsRun + p * 3 * chunks + i);
                }
                float scaled = g.offsetScale * masks.GetValue(k * maskRun + p);
                gradMasks.SetValue(k * maskRun + p, sums[0]);
                gradOffsets.SetValue(k * offsetRun + 2 * p, scaled * sums[2]);
                gradOffsets.SetValue(k * offsetRun + 2 * p + 1, scaled * sums[1]);
            }
        }
        Handoff<AscendC::HardEvent::S_MTE3>(TILE_EVENT);
        CopyOut(gradOffsetGm[offsetStart], gradOffsets, t.count, 2 * points, g.group * 2 * points);
        CopyOut(gradMaskGm[maskStart], gradMasks, t.count, points, g.group * points);
        AscendC::SetFlag<AscendC::HardEvent::MTE3_S>(TILE_EVENT);
    }

    // One sampling point: its window fetched, value and derivatives, their dots with grad_output into
    // `dot`, and its share of grad_input added to the window's pixels.
    __aicore__ inline void Point(const TileWalker& t, const Sample& s, float weightOfPoint,
                                 const AscendC::LocalTensor<float>& upstreamRun, const AscendC::LocalTensor<float>& dot)
    {
        int8_t slot = static_cast<int8_t>(fetched++ % SLOTS);
        AscendC::LocalTensor<float> window = windowBuf.Get<float>()[slot * 4 * run];
        AscendC::LocalTensor<float> gradWindow = gradWindowBuf.Get<float>()[slot * 4 * run];
        // sampled: value, d/dy and d/dx, adjacent; products: the same times grad_output, chunk-padded
        AscendC::LocalTensor<float> sampled = sampledBuf.Get<float>();
        AscendC::LocalTensor<float> products = productBuf.Get<float>();
        WindowRow rows[2];
        AscendC::WaitFlag<AscendC::HardEvent::V_MTE2>(slot);
        FetchWindow(g, s, t, run, inputGm, window, rows);
        Handoff<AscendC::HardEvent::MTE2_V>(slot);
        AscendC::Duplicate(sampled, 0.0f, 3 * run);
        AscendC::WaitFlag<AscendC::HardEvent::MTE3_V>(slot);  // the slot's last grad_input share has left
        for (uint32_t c = 0; c < 4; ++c) {
            if (!CornerInRow(rows[c / 2], c)) {
                continue;
            }
            float fy = (c / 2 == 1) ? s.ly : 1.0f - s.ly;
            float fx = (c % 2 == 1) ? s.lx : 1.0f - s.lx;
            AscendC::Axpy(sampled, window[c * run], fy * fx, g.groupChannels);
            AscendC::Axpy(sampled[run], window[c * run], (c / 2 == 1 ? 1.0f : -1.0f) * fx, g.groupChannels);
            AscendC::Axpy(sampled[2 * run], window[c * run], (c % 2 == 1 ? 1.0f : -1.0f) * fy, g.groupChannels);
            AscendC::Muls(gradWindow[c * run], upstreamRun, weightOfPoint * fy * fx, g.groupChannels);
        }
        AscendC::SetFlag<AscendC::HardEvent::V_MTE2>(slot);
        for (uint32_t i = 0; i < 3; ++i) {
            AscendC::Mul(products[i * productRun], upstreamRun, sampled[i * run], g.groupChannels);
        }
        uint32_t mask = chunks == 1 ? g.groupChannels : REDUCE_FLOATS;
        uint32_t stride = chunks == 1 ? productRun : REDUCE_FLOATS;
        AscendC::WholeReduceSum(dot, products, static_cast<int32_t>(mask), static_cast<int32_t>(3 * chunks), 1, 1,
                                static_cast<int32_t>(stride / FLOATS_PER_BLOCK));
        Handoff<AscendC::HardEvent::V_MTE3>(slot);
        for (uint32_t r = 0; r < 2; ++r) {
            if (rows[r].pixels != 0) {
                CopyOut(gradInputGm[rows[r].start], gradWindow[(2 * r + rows[r].first) * run], rows[r].pixels,
                        g.groupChannels, g.group * g.groupChannels);
            }
        }
        AscendC::SetFlag<AscendC::HardEvent::MTE3_V>(slot);
    }

    Geometry g;
    uint32_t run, offsetRun, maskRun, chunks, productRun, dotsRun;
    uint32_t fetched = 0;
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> upstreamBuf, offsetBuf, maskBuf, dotsBuf, gradOffsetBuf, gradMaskBuf,
        windowBuf, gradWindowBuf, sampledBuf, productBuf;
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

