// MSDA's native CPU kernel (../shared/MSDA.md): forward and backward as torch.library operators.
//
// value [N, S, M, D], sampling_locations [N, Lq, M, L, P, 2] (x, y), attention_weights [N, Lq, M, L, P].
// The forward runs one (batch, query) per task, every head's D channels a contiguous row of value. The
// backward runs one (batch, head) per task: that head's slice of the value gradient belongs to the task
// alone, so it is summed without atomics or locks and in the same order on every run (the CUDA kernel's
// atomicAdd is neither). float16 and bfloat16 accumulate in float32 (at::opmath_type).

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

struct Levels {
  std::vector<int64_t> height, width, start;
};

Levels read_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index) {
  auto shapes = spatial_shapes.to(at::kCPU, at::kLong).contiguous();
  auto starts = level_start_index.to(at::kCPU, at::kLong).contiguous();
  Levels levels;
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    levels.height.push_back(shapes.data_ptr<int64_t>()[2 * l]);
    levels.width.push_back(shapes.data_ptr<int64_t>()[2 * l + 1]);
    levels.start.push_back(starts.data_ptr<int64_t>()[l]);
  }
  return levels;
}

// The four bilinear corners of pixel position (h, w) in a height x width level: their row in the level
// (-1 when outside), weights and the weights' derivatives by h and w. A sample on or beyond the -1 / H / W
// lines has no corner.
template <typename T>
struct Corners {
  int64_t row[4];
  T weight[4], d_dh[4], d_dw[4];

  Corners(T h, T w, int64_t height, int64_t width) {
    for (int k = 0; k < 4; ++k) row[k] = -1;
    if (!(h > T(-1) && w > T(-1) && h < T(height) && w < T(width))) return;
    const T h0f = std::floor(h), w0f = std::floor(w);
    const int64_t h0 = static_cast<int64_t>(h0f), w0 = static_cast<int64_t>(w0f);
    const T lh = h - h0f, lw = w - w0f, hh = T(1) - lh, hw = T(1) - lw;
    const int64_t rows[4] = {h0, h0, h0 + 1, h0 + 1}, cols[4] = {w0, w0 + 1, w0, w0 + 1};
    const T weights[4] = {hh * hw, hh * lw, lh * hw, lh * lw};
    const T by_h[4] = {-hw, -lw, hw, lw}, by_w[4] = {-hh, hh, -lh, lh};
    for (int k = 0; k < 4; ++k) {
      weight[k] = weights[k];
      d_dh[k] = by_h[k];
      d_dw[k] = by_w[k];
      if (rows[k] >= 0 && rows[k] < height && cols[k] >= 0 && cols[k] < width) row[k] = rows[k] * width + cols[k];
    }
  }
};

// The channel loops run over kChannels, a compile-time count for the common head widths (accumulators
// then live in registers and the loops unroll; Deformable DETR, Mask2Former and ViT-Adapter use D = 32),
// or over the runtime `channels` where kChannels is 0.
template <typename scalar_t, int kChannels>
void forward_kernel(const scalar_t* vp, const scalar_t* lp, const scalar_t* wp, scalar_t* op, const Levels& levels,
                    int64_t batch, int64_t length, int64_t heads, int64_t channels, int64_t queries,
                    int64_t nlevels, int64_t points) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = kChannels > 0 ? kChannels : channels;
  // A corner outside its level reads this row of zeros with weight 0: the four corners are then summed in
  // one pass over the channels, without a branch.
  const std::vector<scalar_t> zeros(D, scalar_t(0));
  at::parallel_for(0, batch * queries, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buffer(kChannels > 0 ? 0 : D);
    acc_t registers[kChannels > 0 ? kChannels : 1];
    acc_t* __restrict__ acc = kChannels > 0 ? registers : buffer.data();
    for (int64_t nq = begin; nq < end; ++nq) {
      const int64_t n = nq / queries;
      for (int64_t m = 0; m < heads; ++m) {
        for (int64_t d = 0; d < D; ++d) acc[d] = acc_t(0);
        const int64_t sample0 = (nq * heads + m) * nlevels * points;
        for (int64_t l = 0; l < nlevels; ++l) {
          const int64_t height = levels.height[l], width = levels.width[l];
          const scalar_t* level = vp + ((n * length + levels.start[l]) * heads + m) * D;
          for (int64_t p = 0; p < points; ++p) {
            const int64_t sample = sample0 + l * points + p;
            const acc_t x = lp[2 * sample], y = lp[2 * sample + 1], attention = wp[sample];
            const Corners<acc_t> corners(y * height - acc_t(0.5), x * width - acc_t(0.5), height, width);
            const scalar_t* __restrict__ pixel[4];
            acc_t weight[4];
            for (int k = 0; k < 4; ++k) {
              const bool inside = corners.row[k] >= 0;
              pixel[k] = inside ? level + corners.row[k] * heads * D : zeros.data();
              weight[k] = inside ? attention * corners.weight[k] : acc_t(0);
            }
            for (int64_t d = 0; d < D; ++d) {
              acc[d] += weight[0] * acc_t(pixel[0][d]) + weight[1] * acc_t(pixel[1][d]) +
                        weight[2] * acc_t(pixel[2][d]) + weight[3] * acc_t(pixel[3][d]);
            }
          }
        }
        scalar_t* out = op + (nq * heads + m) * D;
        for (int64_t d = 0; d < D; ++d) out[d] = scalar_t(acc[d]);
      }
    }
  });
}

template <typename scalar_t, int kChannels>
void backward_kernel(const scalar_t* gp, const scalar_t* vp, const scalar_t* lp, const scalar_t* wp,
                     at::opmath_type<scalar_t>* gvp, scalar_t* glp, scalar_t* gwp, const Levels& levels,
                     int64_t batch, int64_t length, int64_t heads, int64_t channels, int64_t queries,
                     int64_t nlevels, int64_t points) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = kChannels > 0 ? kChannels : channels;
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nm = begin; nm < end; ++nm) {
      const int64_t n = nm / heads, m = nm % heads;
      for (int64_t q = 0; q < queries; ++q) {
        const scalar_t* __restrict__ upstream = gp + ((n * queries + q) * heads + m) * D;
        const int64_t sample0 = ((n * queries + q) * heads + m) * nlevels * points;
        for (int64_t l = 0; l < nlevels; ++l) {
          const int64_t height = levels.height[l], width = levels.width[l];
          const int64_t offset = ((n * length + levels.start[l]) * heads + m) * D;
          for (int64_t p = 0; p < points; ++p) {
            const int64_t sample = sample0 + l * points + p;
            const acc_t x = lp[2 * sample], y = lp[2 * sample + 1], attention = wp[sample];
            const Corners<acc_t> corners(y * height - acc_t(0.5), x * width - acc_t(0.5), height, width);
            acc_t sampled = 0, by_h = 0, by_w = 0;
            for (int k = 0; k < 4; ++k) {
              if (corners.row[k] < 0) continue;
              const int64_t pixel = offset + corners.row[k] * heads * D;
              const scalar_t* __restrict__ source = vp + pixel;
              acc_t* __restrict__ target = gvp + pixel;
              const acc_t weight = attention * corners.weight[k];
              acc_t dot = 0;
              for (int64_t d = 0; d < D; ++d) {
                const acc_t up = upstream[d];
                dot += up * acc_t(source[d]);
                target[d] += weight * up;
              }
              sampled += corners.weight[k] * dot;
              by_h += corners.d_dh[k] * dot;
              by_w += corners.d_dw[k] * dot;
            }
            gwp[sample] = scalar_t(sampled);
            glp[2 * sample] = scalar_t(attention * width * by_w);
            glp[2 * sample + 1] = scalar_t(attention * height * by_h);
          }
        }
      }
    }
  });
}

// f(std::integral_constant<int, D>) for a compile-time D where channels is one of the common widths,
// else f(std::integral_constant<int, 0>).
template <typename F>
void with_channels(int64_t channels, F&& f) {
  switch (channels) {
    case 16: return f(std::integral_constant<int, 16>());
    case 32: return f(std::integral_constant<int, 32>());
    case 64: return f(std::integral_constant<int, 64>());
    default: return f(std::integral_constant<int, 0>());
  }
}

at::Tensor msda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                        const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const auto levels = read_levels(spatial_shapes, level_start_index);
  const auto v = value.contiguous(), loc = sampling_locations.contiguous(), aw = attention_weights.contiguous();
  const int64_t batch = v.size(0), length = v.size(1), heads = v.size(2), channels = v.size(3);
  const int64_t queries = loc.size(1), nlevels = loc.size(3), points = loc.size(4);
  auto output = at::empty({batch, queries, heads * channels}, v.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "msda_forward", [&] {
    with_channels(channels, [&](auto width) {
      forward_kernel<scalar_t, decltype(width)::value>(
          v.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), aw.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(),
          levels, batch, length, heads, channels, queries, nlevels, points);
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward(const at::Tensor& grad_output, const at::Tensor& value,
                                                             const at::Tensor& spatial_shapes,
                                                             const at::Tensor& level_start_index,
                                                             const at::Tensor& sampling_locations,
                                                             const at::Tensor& attention_weights) {
  const auto levels = read_levels(spatial_shapes, level_start_index);
  const auto g = grad_output.contiguous(), v = value.contiguous();
  const auto loc = sampling_locations.contiguous(), aw = attention_weights.contiguous();
  const int64_t batch = v.size(0), length = v.size(1), heads = v.size(2), channels = v.size(3);
  const int64_t queries = loc.size(1), nlevels = loc.size(3), points = loc.size(4);
  auto grad_value = at::zeros(v.sizes(), v.options().dtype(at::toOpMathType(v.scalar_type())));
  auto grad_locations = at::empty(loc.sizes(), loc.options());
  auto grad_weights = at::empty(aw.sizes(), aw.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "msda_backward", [&] {
    with_channels(channels, [&](auto width) {
      backward_kernel<scalar_t, decltype(width)::value>(
          g.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), aw.data_ptr<scalar_t>(),
          grad_value.data_ptr<at::opmath_type<scalar_t>>(), grad_locations.data_ptr<scalar_t>(),
          grad_weights.data_ptr<scalar_t>(), levels, batch, length, heads, channels, queries, nlevels, points);
    });
  });
  return {grad_value.to(v.scalar_type()), grad_locations, grad_weights};
}

}  // namespace

TORCH_LIBRARY(msda_harness, m) {
  m.def(
      "msda_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
      "Tensor attention_weights) -> Tensor");
  m.def(
      "msda_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(msda_harness, CPU, m) {
  m.impl("msda_forward", &msda_forward);
  m.impl("msda_backward", &msda_backward);
}
