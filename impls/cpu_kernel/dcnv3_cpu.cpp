// DCNv3 forward and backward on the CPU, channels-last, per ../../../shared/DCNv3.md.
//
// Layout: input [N, H, W, G*D], offset [N, Ho, Wo, G*P*2] ((dx, dy) pairs),
// mask [N, Ho, Wo, G*P]. Each sampling point reads its group's D channels as
// one contiguous run, so the inner loops over channels vectorise.
//
// Forward parallelises over output pixels. Backward parallelises over fixed
// ranges of output pixels, each scattering its input gradient into a buffer of
// its own, summed in order afterwards: no atomics, no shared cache lines, and
// a bitwise reproducible result for a given thread count.
// float16 and bfloat16 are stored as such and accumulated in float.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

struct Geometry {
  int64_t batch, height, width, channels, out_h, out_w;
  int64_t group, group_channels, points;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t centre_h, centre_w;
  double offset_scale;
  // (i, j) of point p: x-major (i over kernel_w outer), centre skipped with remove_center.
  std::vector<std::pair<int64_t, int64_t>> kernel_points;
  // Point p's position with zero offset, less the pixel's stride term:
  // x = wo * stride_w + base_x[p] + dx * offset_scale (likewise y).
  std::vector<double> base_x, base_y;
};

Geometry make_geometry(const at::Tensor& input, const at::Tensor& offset, int64_t kernel_h, int64_t kernel_w,
                       int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                       int64_t dilation_w, int64_t group, int64_t group_channels, double offset_scale,
                       bool remove_center) {
  TORCH_CHECK(input.dim() == 4 && offset.dim() == 4, "dcnv3: input and offset must have rank 4");
  Geometry g;
  g.batch = input.size(0);
  g.height = input.size(1);
  g.width = input.size(2);
  g.channels = input.size(3);
  g.out_h = offset.size(1);
  g.out_w = offset.size(2);
  g.group = group;
  g.group_channels = group_channels;
  g.stride_h = stride_h;
  g.stride_w = stride_w;
  g.pad_h = pad_h;
  g.pad_w = pad_w;
  g.dilation_h = dilation_h;
  g.dilation_w = dilation_w;
  g.centre_h = (dilation_h * (kernel_h - 1)) / 2;
  g.centre_w = (dilation_w * (kernel_w - 1)) / 2;
  g.offset_scale = offset_scale;
  for (int64_t i = 0; i < kernel_w; ++i) {
    for (int64_t j = 0; j < kernel_h; ++j) {
      if (remove_center && i == kernel_w / 2 && j == kernel_h / 2) continue;
      g.kernel_points.emplace_back(i, j);
    }
  }
  g.points = static_cast<int64_t>(g.kernel_points.size());
  for (const auto& [i, j] : g.kernel_points) {
    g.base_x.push_back(double(g.centre_w - pad_w) + double(i * dilation_w - g.centre_w) * offset_scale);
    g.base_y.push_back(double(g.centre_h - pad_h) + double(j * dilation_h - g.centre_h) * offset_scale);
  }
  TORCH_CHECK(g.channels == group * group_channels, "dcnv3: input channels != group * group_channels");
  TORCH_CHECK(offset.size(3) == group * g.points * 2, "dcnv3: offset last dimension != group * P * 2");
  return g;
}

// Bilinear corners of (y, x) inside the image: row, column, weight and the
// weight's derivatives along y and x (x0 = floor(x): right-hand at integers).
template <typename acc_t>
struct Corners {
  int count = 0;
  int64_t row[4], col[4];
  acc_t weight[4], d_dy[4], d_dx[4];

  Corners(acc_t y, acc_t x, int64_t height, int64_t width) {
    if (!(y > acc_t(-1) && x > acc_t(-1) && y < acc_t(height) && x < acc_t(width))) return;
    const acc_t y_floor = std::floor(y), x_floor = std::floor(x);
    const int64_t y0 = static_cast<int64_t>(y_floor), x0 = static_cast<int64_t>(x_floor);
    const acc_t ly = y - y_floor, lx = x - x_floor, hy = acc_t(1) - ly, hx = acc_t(1) - lx;
    add(y0, x0, hy * hx, -hx, -hy, height, width);
    add(y0, x0 + 1, hy * lx, -lx, hy, height, width);
    add(y0 + 1, x0, ly * hx, hx, -ly, height, width);
    add(y0 + 1, x0 + 1, ly * lx, lx, ly, height, width);
  }

 private:
  void add(int64_t r, int64_t c, acc_t w, acc_t wy, acc_t wx, int64_t height, int64_t width) {
    if (r < 0 || r >= height || c < 0 || c >= width) return;
    row[count] = r;
    col[count] = c;
    weight[count] = w;
    d_dy[count] = wy;
    d_dx[count] = wx;
    ++count;
  }
};

// Per-call constants of the sampling positions, in the compute type.
template <typename acc_t>
struct Positions {
  std::vector<acc_t> base_x, base_y;
  acc_t scale;
  explicit Positions(const Geometry& g)
      : base_x(g.base_x.begin(), g.base_x.end()),
        base_y(g.base_y.begin(), g.base_y.end()),
        scale(static_cast<acc_t>(g.offset_scale)) {}
};

// Interior points (all four corners inside) are the common case; the caller
// takes a single fused pass over the channels for them.
template <typename acc_t>
struct Bilinear {
  int64_t y0, x0;
  acc_t ly, lx;
  bool interior;
  Bilinear(acc_t y, acc_t x, int64_t height, int64_t width) {
    const acc_t y_floor = std::floor(y), x_floor = std::floor(x);
    y0 = static_cast<int64_t>(y_floor);
    x0 = static_cast<int64_t>(x_floor);
    ly = y - y_floor;
    lx = x - x_floor;
    interior = y0 >= 0 && x0 >= 0 && y0 + 1 < height && x0 + 1 < width;
  }
};

// Channel loops take D as a compile-time constant for the common sizes
// (InternImage uses 16 and 32) so accumulators stay in registers; kD == 0
// is the general, run-time D.
template <int kD>
struct Channels {
  static constexpr int64_t count(int64_t) { return kD; }
};
template <>
struct Channels<0> {
  static int64_t count(int64_t runtime) { return runtime; }
};

// Per-thread channel scratch: a fixed array the compiler keeps in registers
// when D is known at compile time (profiled: a heap buffer sent the
// accumulator through memory on every point), a vector otherwise.
template <typename acc_t, int kD>
struct ChannelBuffer {
  acc_t values[kD];
  explicit ChannelBuffer(int64_t) {}
  acc_t* data() { return values; }
};
template <typename acc_t>
struct ChannelBuffer<acc_t, 0> {
  std::vector<acc_t> values;
  explicit ChannelBuffer(int64_t count) : values(count) {}
  acc_t* data() { return values.data(); }
};

template <typename scalar_t, int kD>
void forward_kernel(const Geometry& g, const scalar_t* __restrict input, const scalar_t* __restrict offset,
                    const scalar_t* __restrict mask, scalar_t* __restrict output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = Channels<kD>::count(g.group_channels), P = g.points;
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  const int64_t row_stride = g.width * g.channels;
  const Positions<acc_t> pos(g);
  at::parallel_for(0, pixels, 16, [&](int64_t begin, int64_t end) {
    ChannelBuffer<acc_t, kD> buffer(D);
    acc_t* __restrict acc = buffer.data();
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int64_t n = pixel / (g.out_h * g.out_w);
      const int64_t ho = (pixel / g.out_w) % g.out_h, wo = pixel % g.out_w;
      const scalar_t* offset_px = offset + pixel * g.group * P * 2;
      const scalar_t* mask_px = mask + pixel * g.group * P;
      const scalar_t* image = input + n * g.height * row_stride;
      scalar_t* out_px = output + pixel * g.channels;
      const acc_t pixel_x = acc_t(wo * g.stride_w), pixel_y = acc_t(ho * g.stride_h);
      for (int64_t grp = 0; grp < g.group; ++grp) {
        for (int64_t d = 0; d < D; ++d) acc[d] = acc_t(0);
        for (int64_t p = 0; p < P; ++p) {
          const int64_t k = grp * P + p;
          const acc_t x = pixel_x + pos.base_x[p] + acc_t(offset_px[2 * k]) * pos.scale;
          const acc_t y = pixel_y + pos.base_y[p] + acc_t(offset_px[2 * k + 1]) * pos.scale;
          const acc_t m = acc_t(mask_px[k]);
          const Bilinear<acc_t> at(y, x, g.height, g.width);
          if (at.interior) {  // one pass over the channels for all four corners
            const scalar_t* a = image + at.y0 * row_stride + at.x0 * g.channels + grp * D;
            const scalar_t* b = a + g.channels;
            const scalar_t* c = a + row_stride;
            const scalar_t* e = c + g.channels;
            const acc_t hy = acc_t(1) - at.ly, hx = acc_t(1) - at.lx;
            const acc_t w0 = m * hy * hx, w1 = m * hy * at.lx, w2 = m * at.ly * hx, w3 = m * at.ly * at.lx;
            for (int64_t d = 0; d < D; ++d) {
              acc[d] += w0 * acc_t(a[d]) + w1 * acc_t(b[d]) + w2 * acc_t(c[d]) + w3 * acc_t(e[d]);
            }
            continue;
          }
          const Corners<acc_t> corners(y, x, g.height, g.width);
          for (int i = 0; i < corners.count; ++i) {
            const acc_t w = m * corners.weight[i];
            const scalar_t* src = image + corners.row[i] * row_stride + corners.col[i] * g.channels + grp * D;
            for (int64_t d = 0; d < D; ++d) acc[d] += w * acc_t(src[d]);
          }
        }
        for (int64_t d = 0; d < D; ++d) out_px[grp * D + d] = static_cast<scalar_t>(acc[d]);
      }
    }
  });
}

// The input gradient is scattered, so the output pixels are cut into `chunks`
// fixed ranges, each adding into its own input-gradient buffer (partials[c]);
// the caller sums the buffers in order. No two threads write one cache line
// (an (image, group) split did: groups of one pixel share lines, and two
// threads ran 8x slower than one), and the result is bitwise reproducible for
// a given chunk count.
template <typename scalar_t, typename grad_input_t, int kD>
void backward_kernel(const Geometry& g, const scalar_t* __restrict grad_output, const scalar_t* __restrict input,
                     const scalar_t* __restrict offset, const scalar_t* __restrict mask,
                     grad_input_t* const* partials, int64_t chunks, scalar_t* __restrict grad_offset,
                     scalar_t* __restrict grad_mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = Channels<kD>::count(g.group_channels), P = g.points;
  const int64_t row_stride = g.width * g.channels;
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  const Positions<acc_t> pos(g);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    ChannelBuffer<acc_t, kD> buffer(D);
    acc_t* __restrict upstream = buffer.data();
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      for (int64_t pixel = pixels * chunk / chunks; pixel < pixels * (chunk + 1) / chunks; ++pixel) {
        const int64_t n = pixel / (g.out_h * g.out_w);
        const int64_t ho = (pixel / g.out_w) % g.out_h, wo = pixel % g.out_w;
        const acc_t pixel_x = acc_t(wo * g.stride_w), pixel_y = acc_t(ho * g.stride_h);
        for (int64_t grp = 0; grp < g.group; ++grp) {
          const scalar_t* image = input + n * g.height * row_stride + grp * D;
          grad_input_t* grad_image = partials[chunk] + n * g.height * row_stride + grp * D;
          const scalar_t* up = grad_output + pixel * g.channels + grp * D;
          for (int64_t d = 0; d < D; ++d) upstream[d] = acc_t(up[d]);
          for (int64_t p = 0; p < P; ++p) {
            const int64_t k = (pixel * g.group + grp) * P + p;
            const acc_t x = pixel_x + pos.base_x[p] + acc_t(offset[2 * k]) * pos.scale;
            const acc_t y = pixel_y + pos.base_y[p] + acc_t(offset[2 * k + 1]) * pos.scale;
            const acc_t m = acc_t(mask[k]);
            const Bilinear<acc_t> at(y, x, g.height, g.width);
            acc_t d_mask = 0, d_y = 0, d_x = 0;
            if (at.interior) {  // one pass over the channels for all four corners
              const acc_t ly = at.ly, lx = at.lx, hy = acc_t(1) - ly, hx = acc_t(1) - lx;
              const int64_t first = at.y0 * row_stride + at.x0 * g.channels;
              const scalar_t *a = image + first, *b = a + g.channels, *c = a + row_stride, *e = c + g.channels;
              grad_input_t *ga = grad_image + first, *gb = ga + g.channels, *gc = ga + row_stride,
                           *ge = gc + g.channels;
              const acc_t w0 = m * hy * hx, w1 = m * hy * lx, w2 = m * ly * hx, w3 = m * ly * lx;
              acc_t d0 = 0, d1 = 0, d2 = 0, d3 = 0;
              for (int64_t d = 0; d < D; ++d) {
                const acc_t u = upstream[d];
                d0 += u * acc_t(a[d]);
                d1 += u * acc_t(b[d]);
                d2 += u * acc_t(c[d]);
                d3 += u * acc_t(e[d]);
                ga[d] += static_cast<grad_input_t>(w0 * u);
                gb[d] += static_cast<grad_input_t>(w1 * u);
                gc[d] += static_cast<grad_input_t>(w2 * u);
                ge[d] += static_cast<grad_input_t>(w3 * u);
              }
              d_mask = hy * hx * d0 + hy * lx * d1 + ly * hx * d2 + ly * lx * d3;
              d_y = hx * (d2 - d0) + lx * (d3 - d1);
              d_x = hy * (d1 - d0) + ly * (d3 - d2);
            } else {
              const Corners<acc_t> corners(y, x, g.height, g.width);
              for (int i = 0; i < corners.count; ++i) {
                const int64_t first = corners.row[i] * row_stride + corners.col[i] * g.channels;
                const scalar_t* src = image + first;
                grad_input_t* dst = grad_image + first;
                const acc_t w = m * corners.weight[i];
                acc_t dot = 0;
                for (int64_t d = 0; d < D; ++d) {
                  dot += upstream[d] * acc_t(src[d]);
                  dst[d] += static_cast<grad_input_t>(w * upstream[d]);
                }
                d_mask += corners.weight[i] * dot;
                d_y += corners.d_dy[i] * dot;
                d_x += corners.d_dx[i] * dot;
              }
            }
            grad_mask[k] = static_cast<scalar_t>(d_mask);
            grad_offset[2 * k] = static_cast<scalar_t>(pos.scale * m * d_x);
            grad_offset[2 * k + 1] = static_cast<scalar_t>(pos.scale * m * d_y);
          }
        }
      }
    }
  });
}

// Calls body.template operator()<kD>() with D fixed at compile time where it is common.
template <typename Body>
void with_channels(int64_t group_channels, Body&& body) {
  switch (group_channels) {
    case 8: return body(std::integral_constant<int, 8>{});
    case 16: return body(std::integral_constant<int, 16>{});
    case 32: return body(std::integral_constant<int, 32>{});
    case 64: return body(std::integral_constant<int, 64>{});
    default: return body(std::integral_constant<int, 0>{});
  }
}

// At most this many input-gradient buffers in the backward, whatever the thread count.
constexpr int64_t kMaxChunks = 8;

at::Tensor dcnv3_forward(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask, int64_t kernel_h,
                         int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                         int64_t dilation_h, int64_t dilation_w, int64_t group, int64_t group_channels,
                         double offset_scale, bool remove_center) {
  const Geometry g = make_geometry(input, offset, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                                   dilation_w, group, group_channels, offset_scale, remove_center);
  const at::Tensor in = input.contiguous(), off = offset.contiguous(), msk = mask.contiguous();
  at::Tensor output = at::empty({g.batch, g.out_h, g.out_w, g.channels}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dcnv3_forward_cpu", [&] {
    with_channels(g.group_channels, [&](auto channels) {
      forward_kernel<scalar_t, decltype(channels)::value>(g, in.const_data_ptr<scalar_t>(),
                                                           off.const_data_ptr<scalar_t>(),
                                                           msk.const_data_ptr<scalar_t>(),
                                                           output.mutable_data_ptr<scalar_t>());
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group, int64_t group_channels, double offset_scale,
    bool remove_center) {
  const Geometry g = make_geometry(input, offset, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                                   dilation_w, group, group_channels, offset_scale, remove_center);
  const at::Tensor up = grad_output.contiguous(), in = input.contiguous(), off = offset.contiguous(),
                   msk = mask.contiguous();
  at::Tensor grad_offset = at::empty_like(off);
  at::Tensor grad_mask = at::empty_like(msk);
  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dcnv3_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // Reduced-precision inputs gather their input gradient in float, then round once.
    const auto acc_options = in.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const int64_t pixels = g.batch * g.out_h * g.out_w;
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>({at::get_num_threads(), kMaxChunks, pixels}));
    std::vector<at::Tensor> partials;
    std::vector<acc_t*> pointers;
    for (int64_t c = 0; c < chunks; ++c) {
      partials.push_back(at::zeros(in.sizes(), acc_options));
      pointers.push_back(partials.back().mutable_data_ptr<acc_t>());
    }
    with_channels(g.group_channels, [&](auto channels) {
      backward_kernel<scalar_t, acc_t, decltype(channels)::value>(
          g, up.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), off.const_data_ptr<scalar_t>(),
          msk.const_data_ptr<scalar_t>(), pointers.data(), chunks, grad_offset.mutable_data_ptr<scalar_t>(),
          grad_mask.mutable_data_ptr<scalar_t>());
    });
    for (int64_t c = 1; c < chunks; ++c) partials[0].add_(partials[c]);
    grad_input = partials[0].to(input.scalar_type());
  });
  return {grad_input, grad_offset, grad_mask};
}

}  // namespace

TORCH_LIBRARY(dcnv3_harness, m) {
  m.def(
      "dcnv3_forward(Tensor input, Tensor offset, Tensor mask, int kernel_h, int kernel_w, int stride_h, "
      "int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, int group_channels, "
      "float offset_scale, bool remove_center) -> Tensor");
  m.def(
      "dcnv3_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor mask, int kernel_h, int kernel_w, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int group, "
      "int group_channels, float offset_scale, bool remove_center) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dcnv3_harness, CPU, m) {
  m.impl("dcnv3_forward", &dcnv3_forward);
  m.impl("dcnv3_backward", &dcnv3_backward);
}
