// DCNv3 forward and backward on the CPU, channels-last, per ../../../shared/DCNv3.md.
//
// Layout: input [N, H, W, G*D], offset [N, Ho, Wo, G*P*2] ((dx, dy) pairs),
// mask [N, Ho, Wo, G*P]. Each sampling point reads its group's D channels as
// one contiguous run. Per output pixel, one vectorised pass over its G*P
// points finds their corners and weights (`locate`); the channel loops then
// run on GCC/Clang vector types, so they compile to SIMD on any target.
//
// Forward parallelises over output pixels. Backward parallelises over fixed
// ranges of output pixels, each scattering its input gradient into a buffer of
// its own, summed in order afterwards: no atomics, no shared cache lines, and
// a bitwise reproducible result for a given thread count.
// float16 and bfloat16 are stored as such and accumulated in float.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/python.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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
  g.base_x.reserve(kernel_h * kernel_w);
  g.base_y.reserve(kernel_h * kernel_w);
  // Point p is kernel position (i, j): x-major (i over kernel_w outer), centre skipped with remove_center.
  for (int64_t i = 0; i < kernel_w; ++i) {
    for (int64_t j = 0; j < kernel_h; ++j) {
      if (remove_center && i == kernel_w / 2 && j == kernel_h / 2) continue;
      g.base_x.push_back(double(g.centre_w - pad_w) + double(i * dilation_w - g.centre_w) * offset_scale);
      g.base_y.push_back(double(g.centre_h - pad_h) + double(j * dilation_h - g.centre_h) * offset_scale);
    }
  }
  g.points = static_cast<int64_t>(g.base_x.size());
  TORCH_CHECK(g.channels == group * group_channels, "dcnv3: input channels != group * group_channels");
  TORCH_CHECK(offset.size(3) == group * g.points * 2, "dcnv3: offset last dimension != group * P * 2");
  // One pixel more than the image: the forward may append a pixel of zeros (ForwardImages).
  TORCH_CHECK((g.height * g.width + 1) * g.channels < (int64_t(1) << 31),
              "dcnv3 cpu_kernel: one image must have fewer than 2**31 - C elements (32-bit offsets within an image)");
  return g;
}

// L values of T as one GCC/Clang vector: a SIMD register (or a few) on any
// target, so the channel loops below need no per-ISA intrinsics.
template <typename T, int L>
struct Lanes {
  typedef T type __attribute__((vector_size(L * sizeof(T))));
};

template <typename acc_t, int L, typename scalar_t>
inline typename Lanes<acc_t, L>::type load(const scalar_t* source) {
  typename Lanes<acc_t, L>::type values;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(&values, source, sizeof values);
  } else {
    for (int i = 0; i < L; ++i) values[i] = static_cast<acc_t>(source[i]);
  }
  return values;
}

template <int L, typename scalar_t, typename Vector>
inline void store(scalar_t* destination, const Vector& values) {
  if constexpr (sizeof(scalar_t) * L == sizeof(Vector)) {
    std::memcpy(destination, &values, sizeof values);
  } else {
    for (int i = 0; i < L; ++i) destination[i] = static_cast<scalar_t>(values[i]);
  }
}

// Sum of the lanes by halving. GCC 12+ and Clang get the halves as register
// shuffles; a lane-by-lane copy elsewhere (older GCC scalarises it, slower but right).
template <typename Vector, int... I>
inline auto half_sum(const Vector& values, std::integer_sequence<int, I...>) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
  return __builtin_shufflevector(values, values, I...) +
         __builtin_shufflevector(values, values, (I + int(sizeof...(I)))...);
#else
  using T = std::remove_reference_t<decltype(values[0])>;
  typename Lanes<T, sizeof...(I)>::type half;
  ((half[I] = values[I] + values[I + int(sizeof...(I))]), ...);
  return half;
#endif
}

template <typename T, int L>
inline T reduce_add(typename Lanes<T, L>::type values) {
  if constexpr (L == 1) {
    return values[0];
  } else {
    return reduce_add<T, L / 2>(half_sum(values, std::make_integer_sequence<int, L / 2>{}));
  }
}

// Per-call constants of the K = group * points sampling positions of a pixel,
// in the compute type: x = wo * stride_w + base_x[k] + dx * offset_scale
// (likewise y), reading channels from channel[k] = group * D on.
//
// The arrays run to `padded`, K rounded up to whole 16-lane vectors: the
// set-up pass then has no partial last vector, whose scalar remainder loop
// cost a pixel of K = 36 (InternImage's 4 groups) as much as 32 vectorised
// points. The lanes past K read the next pixel's offsets and masks, and their
// results are never used.
template <typename acc_t>
struct Positions {
  static constexpr int64_t kLanes = 16;
  std::vector<acc_t> base_x, base_y;
  std::vector<int32_t> channel;
  acc_t scale;
  int64_t points, padded;
  explicit Positions(const Geometry& g)
      : scale(static_cast<acc_t>(g.offset_scale)),
        points(g.group * g.points),
        padded((points + kLanes - 1) / kLanes * kLanes) {
    base_x.reserve(padded);
    base_y.reserve(padded);
    channel.reserve(padded);
    for (int64_t grp = 0; grp < g.group; ++grp) {
      for (int64_t p = 0; p < g.points; ++p) {
        base_x.push_back(static_cast<acc_t>(g.base_x[p]));
        base_y.push_back(static_cast<acc_t>(g.base_y[p]));
        channel.push_back(static_cast<int32_t>(grp * g.group_channels));
      }
    }
    base_x.resize(padded, acc_t(0));
    base_y.resize(padded, acc_t(0));
    channel.resize(padded, 0);
  }
  // How many points to set up for `pixel` of `pixels`: the padded count
  // where reading that far stays inside the offset and mask tensors.
  int32_t to_locate(int64_t pixel, int64_t pixels) const {
    return static_cast<int32_t>(pixel * points + padded <= pixels * points ? padded : points);
  }
};

// Where each of one pixel's K points reads its four corners, as arrays over
// k (corner c of point k at [c][k]). Filled by one pass over the points that
// the compiler vectorises (profiled: the per-point scalar set-up cost more
// than the channel arithmetic), then read by the channel loops, which apply
// the bilinear formulas without a branch. A corner outside the image must
// add exactly 0, as in the contract's sum over the corners inside:
//
// - Forward: the corner gets weight 0 and reads a pixel of finite values
//   (`ForwardImages`; 0 times an infinite value would be NaN). Corners are
//   32-bit element offsets into the image: 64-bit pointers made the set-up
//   pass a third longer (forward 10-15% slower on InternImage-T).
// - Backward: the formulas use the corner values themselves (d/dx, d/dy), so
//   a missing corner reads a row of zeros, and its input gradient goes to a
//   scratch row.
template <typename scalar_t, typename acc_t>
struct Samples {
  std::vector<int32_t> corner[4];  // forward: element offsets in the image
  std::vector<acc_t> weight[4];  // forward: mask times the bilinear weight, 0 outside
  std::vector<const scalar_t*> source[4];  // backward: the corner values
  std::vector<acc_t*> target[4];  // backward: where the input gradient goes
  std::vector<acc_t> lx, ly, mask;  // backward: fractional position and mask

  Samples(int64_t points, bool backward) {
    for (int c = 0; c < 4; ++c) {
      if (backward) {
        source[c].resize(points);
        target[c].resize(points);
      } else {
        corner[c].resize(points);
        weight[c].resize(points);
      }
    }
    if (backward) {
      lx.resize(points);
      ly.resize(points);
      mask.resize(points);
    }
  }
};

// Fills `s` for the first `count` points of the pixel at (pixel_y, pixel_x)
// (Positions::to_locate says how many). Bilinear corners of (y, x):
// x0 = floor(x), so an integer x samples right-hand; a point with y <= -1,
// y >= H, x <= -1 or x >= W (or NaN) reads nothing. The forward uses
// `spare` (ForwardImages), the backward the four pointers after it.
template <bool kBackward, typename scalar_t, typename acc_t>
void locate(const Geometry& g, const Positions<acc_t>& pos, acc_t pixel_x, acc_t pixel_y,
            const scalar_t* __restrict offset_px, const scalar_t* __restrict mask_px, int32_t spare,
            const scalar_t* image, const scalar_t* zeros, acc_t* grad_image, acc_t* sink,
            Samples<scalar_t, acc_t>& s, int32_t count) {
  // 32-bit positions and offsets (make_geometry checks an image fits), so
  // that the compiler vectorises this loop: mixed 32- and 64-bit lanes
  // defeat it.
  const int32_t channels = static_cast<int32_t>(g.channels);
  const int32_t height = static_cast<int32_t>(g.height), width = static_cast<int32_t>(g.width);
  const acc_t height_f = acc_t(g.height), width_f = acc_t(g.width), scale = pos.scale;
  const acc_t* __restrict base_x = pos.base_x.data();
  const acc_t* __restrict base_y = pos.base_y.data();
  const int32_t* __restrict channel = pos.channel.data();
  int32_t* __restrict corner0 = s.corner[0].data();
  int32_t* __restrict corner1 = s.corner[1].data();
  int32_t* __restrict corner2 = s.corner[2].data();
  int32_t* __restrict corner3 = s.corner[3].data();
  const scalar_t** __restrict source0 = s.source[0].data();
  const scalar_t** __restrict source1 = s.source[1].data();
  const scalar_t** __restrict source2 = s.source[2].data();
  const scalar_t** __restrict source3 = s.source[3].data();
  acc_t* __restrict weight0 = s.weight[0].data();
  acc_t* __restrict weight1 = s.weight[1].data();
  acc_t* __restrict weight2 = s.weight[2].data();
  acc_t* __restrict weight3 = s.weight[3].data();
  acc_t** __restrict target0 = s.target[0].data();
  acc_t** __restrict target1 = s.target[1].data();
  acc_t** __restrict target2 = s.target[2].data();
  acc_t** __restrict target3 = s.target[3].data();
  acc_t* __restrict fraction_x = s.lx.data();
  acc_t* __restrict fraction_y = s.ly.data();
  acc_t* __restrict masks = s.mask.data();
  // `omp simd`: the arrays never alias, which the compiler cannot prove.
#pragma omp simd
  for (int32_t k = 0; k < count; ++k) {
    acc_t x = pixel_x + base_x[k] + static_cast<acc_t>(offset_px[2 * k]) * scale;
    acc_t y = pixel_y + base_y[k] + static_cast<acc_t>(offset_px[2 * k + 1]) * scale;
    // & rather than &&: no branches, so the loop vectorises.
    const bool inside = (y > acc_t(-1)) & (x > acc_t(-1)) & (y < height_f) & (x < width_f);
    x = inside ? x : acc_t(-2);  // keeps the int conversion in range
    y = inside ? y : acc_t(-2);
    // floor from truncation: std::floor does not vectorise here (GCC 12).
    const int32_t x_trunc = static_cast<int32_t>(x), y_trunc = static_cast<int32_t>(y);
    const int32_t x0 = x_trunc - (acc_t(x_trunc) > x), y0 = y_trunc - (acc_t(y_trunc) > y);
    const acc_t lx = x - acc_t(x0), ly = y - acc_t(y0);
    // inside implies -1 <= x0 <= W - 1, so these four say which corners exist.
    const bool left = x0 >= 0, right = inside & (x0 + 1 < width);
    const bool top = y0 >= 0, bottom = inside & (y0 + 1 < height);
    const bool valid0 = top & left, valid1 = top & right, valid2 = bottom & left, valid3 = bottom & right;
    const int32_t at0 = (y0 * width + x0) * channels + channel[k], at2 = at0 + width * channels;
    const acc_t m = static_cast<acc_t>(mask_px[k]);
    if constexpr (kBackward) {
      source0[k] = valid0 ? image + at0 : zeros;
      source1[k] = valid1 ? image + at0 + channels : zeros;
      source2[k] = valid2 ? image + at2 : zeros;
      source3[k] = valid3 ? image + at2 + channels : zeros;
      target0[k] = valid0 ? grad_image + at0 : sink;
      target1[k] = valid1 ? grad_image + at0 + channels : sink;
      target2[k] = valid2 ? grad_image + at2 : sink;
      target3[k] = valid3 ? grad_image + at2 + channels : sink;
      fraction_x[k] = lx;
      fraction_y[k] = ly;
      masks[k] = m;
    } else {
      // Each value into a local before its store: GCC otherwise turned the
      // selects into masked stores behind branches.
      const int32_t outside = spare + channel[k];
      const int32_t c0 = valid0 ? at0 : outside, c1 = valid1 ? at0 + channels : outside;
      const int32_t c2 = valid2 ? at2 : outside, c3 = valid3 ? at2 + channels : outside;
      corner0[k] = c0;
      corner1[k] = c1;
      corner2[k] = c2;
      corner3[k] = c3;
      const acc_t hx = acc_t(1) - lx, hy = acc_t(1) - ly;
      weight0[k] = valid0 ? m * hy * hx : acc_t(0);
      weight1[k] = valid1 ? m * hy * lx : acc_t(0);
      weight2[k] = valid2 ? m * ly * hx : acc_t(0);
      weight3[k] = valid3 ? m * ly * lx : acc_t(0);
    }
  }
}

template <typename scalar_t>
bool all_finite(const scalar_t* values, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(static_cast<float>(values[i]))) return false;
  }
  return true;
}

// Per image, where the forward reads it and which pixel its missing corners
// read with weight 0: the first pixel whose values are all finite (almost
// always pixel 0). An image with no such pixel is copied with a pixel of
// zeros appended, and that pixel is used.
template <typename scalar_t>
struct ForwardImages {
  std::vector<const scalar_t*> base;
  std::vector<int32_t> spare;
  std::vector<std::vector<scalar_t>> copies;  // growing moves each copy, whose buffer (in base) stays put

  ForwardImages(const Geometry& g, const scalar_t* input) {
    const int64_t pixels = g.height * g.width, size = pixels * g.channels;
    base.reserve(g.batch);
    spare.reserve(g.batch);
    for (int64_t n = 0; n < g.batch; ++n) {
      const scalar_t* image = input + n * size;
      int64_t pixel = 0;
      while (pixel < pixels && !all_finite(image + pixel * g.channels, g.channels)) ++pixel;
      if (pixel == pixels) {
        copies.emplace_back(size + g.channels, scalar_t(0));
        std::copy_n(image, size, copies.back().begin());
        image = copies.back().data();
      }
      base.push_back(image);
      spare.push_back(static_cast<int32_t>(pixel * g.channels));
    }
  }
};

// The channel loops run L lanes at a time (L divides D); `with_lanes` picks L.
template <typename scalar_t, int L>
void forward_kernel(const Geometry& g, const scalar_t* __restrict input, const scalar_t* __restrict offset,
                    const scalar_t* __restrict mask, scalar_t* __restrict output) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vector = typename Lanes<acc_t, L>::type;
  const int64_t D = g.group_channels, P = g.points, K = g.group * P;
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  const Positions<acc_t> pos(g);
  const ForwardImages<scalar_t> images(g, input);
  at::parallel_for(0, pixels, 16, [&](int64_t begin, int64_t end) {
    Samples<scalar_t, acc_t> s(pos.padded, false);
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int64_t n = pixel / (g.out_h * g.out_w);
      const int64_t ho = (pixel / g.out_w) % g.out_h, wo = pixel % g.out_w;
      locate<false, scalar_t, acc_t>(g, pos, acc_t(wo * g.stride_w), acc_t(ho * g.stride_h), offset + pixel * K * 2,
                                     mask + pixel * K, images.spare[n], nullptr, nullptr, nullptr, nullptr, s,
                                     pos.to_locate(pixel, pixels));
      scalar_t* out_px = output + pixel * g.channels;
      const scalar_t* image = images.base[n];
      const auto sample = [&](int64_t k, int64_t lane) {
        const scalar_t* channels = image + lane;
        return s.weight[0][k] * load<acc_t, L>(channels + s.corner[0][k]) +
               s.weight[1][k] * load<acc_t, L>(channels + s.corner[1][k]) +
               s.weight[2][k] * load<acc_t, L>(channels + s.corner[2][k]) +
               s.weight[3][k] * load<acc_t, L>(channels + s.corner[3][k]);
      };
      // Two groups per pass: their sums are independent chains that the core
      // overlaps (forward 5% faster on InternImage-T, where G is even).
      int64_t grp = 0;
      for (; grp + 1 < g.group; grp += 2) {
        for (int64_t lane = 0; lane < D; lane += L) {
          Vector sum = {}, next_sum = {};
          for (int64_t k = grp * P; k < (grp + 1) * P; ++k) {
            sum += sample(k, lane);
            next_sum += sample(k + P, lane);
          }
          store<L>(out_px + grp * D + lane, sum);
          store<L>(out_px + (grp + 1) * D + lane, next_sum);
        }
      }
      for (; grp < g.group; ++grp) {
        for (int64_t lane = 0; lane < D; lane += L) {
          Vector sum = {};
          for (int64_t k = grp * P; k < (grp + 1) * P; ++k) sum += sample(k, lane);
          store<L>(out_px + grp * D + lane, sum);
        }
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
template <typename scalar_t, int L>
void backward_kernel(const Geometry& g, const scalar_t* __restrict grad_output, const scalar_t* __restrict input,
                     const scalar_t* __restrict offset, const scalar_t* __restrict mask,
                     at::opmath_type<scalar_t>* const* partials, int64_t chunks, scalar_t* __restrict grad_offset,
                     scalar_t* __restrict grad_mask) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vector = typename Lanes<acc_t, L>::type;
  const int64_t D = g.group_channels, P = g.points, K = g.group * P;
  const int64_t pixels = g.batch * g.out_h * g.out_w;
  const int64_t image_size = g.height * g.width * g.channels;
  const Positions<acc_t> pos(g);
  const std::vector<scalar_t> zeros(D, scalar_t(0));
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    Samples<scalar_t, acc_t> s(pos.padded, true);
    std::vector<acc_t> sink(D);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      for (int64_t pixel = pixels * chunk / chunks; pixel < pixels * (chunk + 1) / chunks; ++pixel) {
        const int64_t n = pixel / (g.out_h * g.out_w);
        const int64_t ho = (pixel / g.out_w) % g.out_h, wo = pixel % g.out_w;
        locate<true>(g, pos, acc_t(wo * g.stride_w), acc_t(ho * g.stride_h), offset + pixel * K * 2,
                     mask + pixel * K, 0, input + n * image_size, zeros.data(), partials[chunk] + n * image_size,
                     sink.data(), s, pos.to_locate(pixel, pixels));
        const scalar_t* up_px = grad_output + pixel * g.channels;
        scalar_t* grad_mask_px = grad_mask + pixel * K;
        scalar_t* grad_offset_px = grad_offset + pixel * K * 2;
        for (int64_t k = 0; k < K; ++k) {
          const scalar_t* up_group = up_px + pos.channel[k];
          const scalar_t *a = s.source[0][k], *b = s.source[1][k], *c = s.source[2][k], *e = s.source[3][k];
          acc_t *grad_a = s.target[0][k], *grad_b = s.target[1][k], *grad_c = s.target[2][k],
                *grad_e = s.target[3][k];
          const acc_t lx = s.lx[k], ly = s.ly[k], hx = acc_t(1) - lx, hy = acc_t(1) - ly, m = s.mask[k];
          const acc_t w0 = hy * hx, w1 = hy * lx, w2 = ly * hx, w3 = ly * lx;
          // Products with the output gradient, summed over lanes once per
          // point: grad_mask = up . sum_c(w_c v_c), and likewise d/dy, d/dx.
          Vector along_mask = {}, along_y = {}, along_x = {};
          for (int64_t lane = 0; lane < D; lane += L) {
            const Vector up = load<acc_t, L>(up_group + lane);
            const Vector va = load<acc_t, L>(a + lane), vb = load<acc_t, L>(b + lane),
                         vc = load<acc_t, L>(c + lane), ve = load<acc_t, L>(e + lane);
            along_mask += up * (w0 * va + w1 * vb + w2 * vc + w3 * ve);
            along_y += up * (hx * (vc - va) + lx * (ve - vb));
            along_x += up * (hy * (vb - va) + ly * (ve - vc));
            const Vector masked = m * up;
            store<L>(grad_a + lane, load<acc_t, L>(grad_a + lane) + w0 * masked);
            store<L>(grad_b + lane, load<acc_t, L>(grad_b + lane) + w1 * masked);
            store<L>(grad_c + lane, load<acc_t, L>(grad_c + lane) + w2 * masked);
            store<L>(grad_e + lane, load<acc_t, L>(grad_e + lane) + w3 * masked);
          }
          grad_mask_px[k] = static_cast<scalar_t>(reduce_add<acc_t, L>(along_mask));
          grad_offset_px[2 * k] = static_cast<scalar_t>(pos.scale * m * reduce_add<acc_t, L>(along_x));
          grad_offset_px[2 * k + 1] = static_cast<scalar_t>(pos.scale * m * reduce_add<acc_t, L>(along_y));
        }
      }
    }
  });
}

// Calls body(std::integral_constant<int, L>) with the widest L that divides D
// and fits 64 bytes of acc_t (one AVX-512 register, four NEON ones).
template <typename acc_t, typename Body>
void with_lanes(int64_t group_channels, Body&& body) {
  constexpr int widest = 64 / sizeof(acc_t);
  if constexpr (widest >= 16) {
    if (group_channels % 16 == 0) return body(std::integral_constant<int, 16>{});
  }
  if (group_channels % 8 == 0) return body(std::integral_constant<int, 8>{});
  if (group_channels % 4 == 0) return body(std::integral_constant<int, 4>{});
  if (group_channels % 2 == 0) return body(std::integral_constant<int, 2>{});
  return body(std::integral_constant<int, 1>{});
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
    with_lanes<at::opmath_type<scalar_t>>(g.group_channels, [&](auto lanes) {
      forward_kernel<scalar_t, decltype(lanes)::value>(g, in.const_data_ptr<scalar_t>(),
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
    with_lanes<acc_t>(g.group_channels, [&](auto lanes) {
      backward_kernel<scalar_t, decltype(lanes)::value>(
          g, up.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), off.const_data_ptr<scalar_t>(),
          msk.const_data_ptr<scalar_t>(), pointers.data(), chunks, grad_offset.mutable_data_ptr<scalar_t>(),
          grad_mask.mutable_data_ptr<scalar_t>());
    });
    for (int64_t c = 1; c < chunks; ++c) partials[0].add_(partials[c]);
    grad_input = partials[0].to(input.scalar_type());
  });
  return {grad_input, grad_offset, grad_mask};
}

// The forward operator through the dispatcher: from the Autograd kernel below
// (past the Autograd key) and from Python (through every key).
at::Tensor dispatch_forward(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                            int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                            int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t group,
                            int64_t group_channels, double offset_scale, bool remove_center) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("dcnv3_harness::dcnv3_forward", "")
                             .typed<decltype(dcnv3_forward)>();
  return op.call(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                 group, group_channels, offset_scale, remove_center);
}

// Autograd in C++ rather than torch.library.register_autograd: the Python
// route cost 55 us per forward with a graph (measured at InternImage-T
// classification stage 4, where the whole forward takes 45 us).
class DCNv3Function : public torch::autograd::Function<DCNv3Function> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& offset, const at::Tensor& mask, int64_t kernel_h, int64_t kernel_w,
                            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                            int64_t dilation_w, int64_t group, int64_t group_channels, double offset_scale,
                            bool remove_center) {
    ctx->save_for_backward({input, offset, mask});
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // the call below reaches the CPU kernel, not this one
    ctx->saved_data["ints"] = std::vector<int64_t>{kernel_h,   kernel_w,   stride_h, stride_w,      pad_h,
                                                   pad_w,      dilation_h, dilation_w, group, group_channels};
    ctx->saved_data["offset_scale"] = offset_scale;
    ctx->saved_data["remove_center"] = remove_center;
    return dispatch_forward(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                            dilation_w, group, group_channels, offset_scale, remove_center);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto ints = ctx->saved_data["ints"].toIntVector();
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("dcnv3_harness::dcnv3_backward", "")
                               .typed<decltype(dcnv3_backward)>();
    auto [grad_input, grad_offset, grad_mask] =
        op.call(grad_outputs[0], saved[0], saved[1], saved[2], ints[0], ints[1], ints[2], ints[3], ints[4], ints[5],
                ints[6], ints[7], ints[8], ints[9], ctx->saved_data["offset_scale"].toDouble(),
                ctx->saved_data["remove_center"].toBool());
    torch::autograd::variable_list grads(15);  // one per forward argument; none for the scalars
    grads[0] = grad_input;
    grads[1] = grad_offset;
    grads[2] = grad_mask;
    return grads;
  }
};

at::Tensor dcnv3_forward_autograd(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                                  int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                                  int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t group,
                                  int64_t group_channels, double offset_scale, bool remove_center) {
  // Without a graph to record, skip the Function's context and node
  // (a few microseconds, measurable on InternImage-T's 7x7 stage).
  if (!at::GradMode::is_enabled() || !(input.requires_grad() || offset.requires_grad() || mask.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return dispatch_forward(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                            dilation_w, group, group_channels, offset_scale, remove_center);
  }
  return DCNv3Function::apply(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                              dilation_w, group, group_channels, offset_scale, remove_center);
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

TORCH_LIBRARY_IMPL(dcnv3_harness, Autograd, m) {
  m.impl("dcnv3_forward", &dcnv3_forward_autograd);
}

// A Python entry beside torch.ops, whose parsing of the fifteen arguments
// against the schema cost 3 us per call (a tenth of InternImage-T's 7x7
// stage). It makes the same dispatcher call, so autograd and every other
// dispatch key apply as through torch.ops.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &dispatch_forward);
}
