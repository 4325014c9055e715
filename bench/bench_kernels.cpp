// Convolution kernels on every distinct ResNet-20 layer shape (28x28 and
// 32x32 inputs, batch 32 and 128) and a few ResNet-50 shapes, forward and
// backward-data, three ways each:
//   rimc      - rimc::conv2d (the wrapper: cache lookup, packed weights, tensors)
//   direct    - the same oneDNN primitive created and executed by hand
//   reference - rimc::reference's plain loops (ResNet-20 at batch 32 only)
// Each reports a GFLOPS counter (2 * MACs per second) and the oneDNN
// implementation as its label. fma_peak: the cores' FMA throughput;
// omp_region: the cost of starting one (empty) OpenMP parallel region;
// memory_bandwidth: a 128 MiB read + 128 MiB write stream on all threads
// (bytes_per_second counts both), the bound of memory-bound kernels;
// normal_fill/<tier>: the read-noise generator on one thread, per tier
// (counter s_per_normal; every tier gives the same bits).
// normal_fill_candidate/table_quantile/philox{10,7}: a candidate generator
// that is not rimc's (other bits; AVX-512 only): the same Philox counters,
// then a per-octave degree-7 polynomial of the quantile (coefficients
// picked from register tables by the uniform's exponent, FMA steps), with
// 10 or 7 Philox rounds; counter max_abs_error against a double-precision
// quantile. It sizes one option for the read-noise speed targets (README,
// "A realistic chip").
// noisy_read/{exact,shortcut}/<tier>: a tile block's read noise before an
// 8-bit per-column ADC on one thread (65,536 currents of 16 columns, noise a
// quarter of an ADC step, as on the realistic chip's stem): normal_fill +
// add_read_noise, or noisy_for_adc (on AVX-512 and AVX2 the approximate quantile and
// exact normals only near a code's boundary; the same ADC codes); counter
// s_per_current.
// read_convs/{pair,grouped}/<shape>: what a read-noise tile block's two
// convolutions cost on one thread (the tile path's image groups and tile
// channel counts of ResNet-20): the current's and the variance's as two
// calls, or as one grouped convolution (two groups; counter differing: the
// outputs whose bits differ from the pair's).

#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/reference.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/core/random.hpp>
#include <rimc/kernels/arch/dispatch.hpp>

#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numbers>
#include <string>
#include <vector>

namespace {

using namespace rimc;

struct conv_shape {
  std::string net;
  std::int64_t n, c, o, hw, k, stride, pad;
};

std::vector<conv_shape> shapes() {
  std::vector<conv_shape> out;
  // ResNet-20: stem, the 3x3 convs of each stage, the stride-2 3x3 convs and 1x1 projection shortcuts.
  for (std::int64_t size : {28, 32}) {
    const std::int64_t in_c = size == 28 ? 1 : 3;
    const std::string net = "resnet20_" + std::to_string(size);
    for (std::int64_t n : {32, 128}) {
      out.push_back({net, n, in_c, 16, size, 3, 1, 1});
      out.push_back({net, n, 16, 16, size, 3, 1, 1});
      out.push_back({net, n, 16, 32, size, 3, 2, 1});
      out.push_back({net, n, 16, 32, size, 1, 2, 0});
      out.push_back({net, n, 32, 32, (size + 1) / 2, 3, 1, 1});
      out.push_back({net, n, 32, 64, (size + 1) / 2, 3, 2, 1});
      out.push_back({net, n, 32, 64, (size + 1) / 2, 1, 2, 0});
      out.push_back({net, n, 64, 64, (size + 3) / 4, 3, 1, 1});
    }
  }
  // ResNet-50 at 224x224, batch 8: stem, a bottleneck of layer1, and 3x3 convs of layer3 and layer4.
  out.push_back({"resnet50_224", 8, 3, 64, 224, 7, 2, 3});
  out.push_back({"resnet50_224", 8, 64, 64, 56, 1, 1, 0});
  out.push_back({"resnet50_224", 8, 64, 64, 56, 3, 1, 1});
  out.push_back({"resnet50_224", 8, 64, 256, 56, 1, 1, 0});
  out.push_back({"resnet50_224", 8, 256, 256, 14, 3, 1, 1});
  out.push_back({"resnet50_224", 8, 512, 512, 7, 3, 1, 1});
  // A tiny problem whose time is almost all per-call overhead.
  out.push_back({"overhead", 1, 8, 8, 4, 1, 1, 0});
  return out;
}

std::string name_of(const conv_shape& s) {
  return s.net + "/n" + std::to_string(s.n) + "_c" + std::to_string(s.c) + "_o" + std::to_string(s.o) + "_" +
         std::to_string(s.hw) + "x" + std::to_string(s.hw) + "_k" + std::to_string(s.k) + "_s" +
         std::to_string(s.stride);
}

struct problem {
  Shape src, weights, dst;
  conv2d_params params;
  Tensor w, b, x, dy;
  double flops;
};

problem make_problem(const conv_shape& s) {
  problem p;
  p.src = Shape{s.n, s.c, s.hw, s.hw};
  p.weights = Shape{s.o, s.c, s.k, s.k};
  p.params.stride = {s.stride, s.stride};
  p.params.padding = {s.pad, s.pad};
  p.dst = conv2d_output_shape(p.src, p.weights, p.params);
  p.w = Tensor(p.weights);
  p.b = Tensor(Shape{s.o});
  p.x = Tensor(p.src);
  p.dy = Tensor(p.dst);
  fill_uniform(p.w, counter_rng(1), -0.1f, 0.1f);
  fill_uniform(p.b, counter_rng(2), -0.1f, 0.1f);
  fill_uniform(p.x, counter_rng(3), -1.0f, 1.0f);
  fill_uniform(p.dy, counter_rng(4), -1.0f, 1.0f);
  p.flops = 2.0 * static_cast<double>(p.dst.numel()) * static_cast<double>(s.c * s.k * s.k);
  return p;
}

void set_counters(benchmark::State& state, double flops, const std::string& label) {
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(label);
}

void rimc_forward(benchmark::State& state, const conv_shape& s) {
  problem p = make_problem(s);
  const conv2d conv(p.w, p.b, p.params);
  const Tensor x = p.x.to_layout(layout::nhwc);  // activations as the previous layer leaves them
  Tensor y;
  conv.forward(x, y);
  for (auto _ : state) {
    conv.forward(x, y);
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, p.flops, conv.implementation(p.src));
}

void rimc_backward_data(benchmark::State& state, const conv_shape& s) {
  problem p = make_problem(s);
  const conv2d conv(p.w, std::nullopt, p.params);
  const Tensor dy = p.dy.to_layout(layout::nhwc);
  Tensor dx;
  conv.backward_data(dy, p.src, dx);
  for (auto _ : state) {
    conv.backward_data(dy, p.src, dx);
    benchmark::DoNotOptimize(dx.data());
  }
  set_counters(state, p.flops, conv.backward_implementation(p.src));
}

// The same primitives, created and executed directly: src/dst/weights
// format `any`, falling back to channels-last exactly as the wrapper does.
dnnl::convolution_forward::primitive_desc direct_fwd_pd(const problem& p, dnnl::prop_kind prop, bool bias) {
  using tag = dnnl::memory::format_tag;
  const auto& eng = detail::cpu_engine();
  auto make = [&](tag t) {
    const dnnl::memory::desc src(detail::to_dims(p.src), dnnl::memory::data_type::f32, t);
    const dnnl::memory::desc dst(detail::to_dims(p.dst), dnnl::memory::data_type::f32, t);
    const dnnl::memory::desc w(detail::to_dims(p.weights), dnnl::memory::data_type::f32, tag::any);
    const dnnl::memory::dims st{p.params.stride[0], p.params.stride[1]}, dil{0, 0},
        pad{p.params.padding[0], p.params.padding[1]};
    auto d = bias ? dnnl::convolution_forward::desc(prop, dnnl::algorithm::convolution_direct, src, w,
                                                    detail::plain_md(Shape{p.weights[0]}), dst, st, dil, pad, pad)
                  : dnnl::convolution_forward::desc(prop, dnnl::algorithm::convolution_direct, src, w, dst, st, dil,
                                                    pad, pad);
    return dnnl::convolution_forward::primitive_desc(d, eng);
  };
  auto pd = make(tag::any);
  if (!detail::layout_of(pd.src_desc(), p.src) || !detail::layout_of(pd.dst_desc(), p.dst)) pd = make(tag::nhwc);
  return pd;
}

void direct_forward(benchmark::State& state, const conv_shape& s) {
  const problem p = make_problem(s);
  const auto& eng = detail::cpu_engine();
  dnnl::stream strm(eng);
  const auto pd = direct_fwd_pd(p, dnnl::prop_kind::forward_inference, true);
  dnnl::memory src(pd.src_desc(), eng), w(pd.weights_desc(), eng), dst(pd.dst_desc(), eng);
  dnnl::memory b = detail::wrap(detail::plain_md(Shape{s.o}), p.b.data());
  dnnl::memory w_plain = detail::wrap(detail::plain_md(p.weights), p.w.data());
  dnnl::reorder(w_plain, w).execute(strm, w_plain, w);
  const dnnl::convolution_forward prim(pd);
  const std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, dst}};
  for (auto _ : state) {
    prim.execute(strm, args);
    strm.wait();
  }
  set_counters(state, p.flops, pd.impl_info_str());
}

void direct_backward_data(benchmark::State& state, const conv_shape& s) {
  using tag = dnnl::memory::format_tag;
  const problem p = make_problem(s);
  const auto& eng = detail::cpu_engine();
  dnnl::stream strm(eng);
  const auto hint = direct_fwd_pd(p, dnnl::prop_kind::forward_training, false);
  auto make = [&](tag t) {
    const dnnl::memory::desc src(detail::to_dims(p.src), dnnl::memory::data_type::f32, t);
    const dnnl::memory::desc dst(detail::to_dims(p.dst), dnnl::memory::data_type::f32, t);
    const dnnl::memory::desc w(detail::to_dims(p.weights), dnnl::memory::data_type::f32, tag::any);
    const dnnl::memory::dims st{p.params.stride[0], p.params.stride[1]}, dil{0, 0},
        pad{p.params.padding[0], p.params.padding[1]};
    return dnnl::convolution_backward_data::primitive_desc(
        dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, src, w, dst, st, dil, pad, pad),
        eng, hint);
  };
  auto pd = make(tag::any);
  if (!detail::layout_of(pd.diff_src_desc(), p.src) || !detail::layout_of(pd.diff_dst_desc(), p.dst))
    pd = make(tag::nhwc);
  dnnl::memory dsrc(pd.diff_src_desc(), eng), w(pd.weights_desc(), eng), ddst(pd.diff_dst_desc(), eng);
  dnnl::memory w_plain = detail::wrap(detail::plain_md(p.weights), p.w.data());
  dnnl::reorder(w_plain, w).execute(strm, w_plain, w);
  const dnnl::convolution_backward_data prim(pd);
  const std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, dsrc}};
  for (auto _ : state) {
    prim.execute(strm, args);
    strm.wait();
  }
  set_counters(state, p.flops, pd.impl_info_str());
}

void reference_forward(benchmark::State& state, const conv_shape& s) {
  const problem p = make_problem(s);
  Tensor y(p.dst);
  for (auto _ : state) {
    reference::conv2d_forward(p.x.data(), p.src, p.w.data(), p.weights, p.b.data(), p.params, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, p.flops, "reference");
}

void reference_backward_data(benchmark::State& state, const conv_shape& s) {
  const problem p = make_problem(s);
  Tensor dx(p.src);
  for (auto _ : state) {
    reference::conv2d_backward_data(p.dy.data(), p.w.data(), p.weights, p.params, p.src, dx.data());
    benchmark::DoNotOptimize(dx.data());
  }
  set_counters(state, p.flops, "reference");
}

// The machine's FMA peak: independent fused multiply-add chains on every
// thread, with the widest vectors the CPU has (AVX-512 or AVX2), the ceiling
// the convolution GFLOPS are compared with.
constexpr int fma_chains = 16;

__attribute__((target("avx2,fma"))) double fma_avx2(std::int64_t iters) {
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-6f);
  __m256 acc[fma_chains];
  for (auto& x : acc) x = a;
  for (std::int64_t i = 0; i < iters; ++i)
    for (auto& x : acc) x = _mm256_fmadd_ps(x, a, b);
  for (int c = 1; c < fma_chains; ++c) acc[0] = _mm256_add_ps(acc[0], acc[c]);
  benchmark::DoNotOptimize(acc[0]);
  return 2.0 * fma_chains * 8 * static_cast<double>(iters);
}

__attribute__((target("avx512f"))) double fma_avx512(std::int64_t iters) {
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-6f);
  __m512 acc[fma_chains];
  for (auto& x : acc) x = a;
  for (std::int64_t i = 0; i < iters; ++i)
    for (auto& x : acc) x = _mm512_fmadd_ps(x, a, b);
  for (int c = 1; c < fma_chains; ++c) acc[0] = _mm512_add_ps(acc[0], acc[c]);
  benchmark::DoNotOptimize(acc[0]);
  return 2.0 * fma_chains * 16 * static_cast<double>(iters);
}

void fma_peak(benchmark::State& state) {
  const bool avx512 = __builtin_cpu_supports("avx512f");
  constexpr std::int64_t iters = 1 << 22;
  double flops = 0;
  for (auto _ : state) {
    double total = 0;
#pragma omp parallel reduction(+ : total)
    total += avx512 ? fma_avx512(iters) : fma_avx2(iters);
    flops = total;
  }
  set_counters(state, flops, avx512 ? "avx512 fma" : "avx2 fma");
}

/// One empty OpenMP parallel region on every thread: what starting a region
/// costs. Under OMP_WAIT_POLICY=passive the idle threads sleep between
/// regions and each start wakes them (a futex each); under the default
/// policy they spin and it costs about a microsecond.
void omp_region(benchmark::State& state) {
  for (auto _ : state) {
    int sum = 0;
#pragma omp parallel reduction(+ : sum)
    sum += omp_get_thread_num();
    benchmark::DoNotOptimize(sum);
  }
  state.SetLabel(std::to_string(omp_get_max_threads()) + " threads");
}

/// y = x + 1 over 32 Mi floats (128 MiB read, 128 MiB written) on all threads in
/// one parallel region: the memory bandwidth a streaming kernel can reach
/// (bytes_per_second counts the bytes read and written).
void memory_bandwidth(benchmark::State& state) {
  const std::int64_t n = std::int64_t{1} << 25;
  std::vector<float> x(static_cast<std::size_t>(n), 1.0f), y(static_cast<std::size_t>(n), 0.0f);
  const float* xp = x.data();
  float* yp = y.data();
  for (auto _ : state) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) yp[i] = xp[i] + 1.0f;
    benchmark::DoNotOptimize(yp);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * n * 8);
  state.SetLabel(std::to_string(omp_get_max_threads()) + " threads");
}

/// 65,536 standard normals of one stream on `tier` (one thread, as each
/// tile-exact block draws its own), a fresh range every iteration.
void normal_fill(benchmark::State& state, rimc::isa_tier tier) {
  if (rimc::detail::lower(rimc::detected_isa(), tier) != tier) {
    state.SkipWithError("the CPU lacks this tier");
    return;
  }
  constexpr std::int64_t n = 1 << 16;
  std::vector<float> out(static_cast<std::size_t>(n));
  std::uint64_t first = 3;
  for (auto _ : state) {
    rimc::detail::normal_fill(42, 7, first, n, out.data(), tier);
    benchmark::DoNotOptimize(out.data());
    first += n;
  }
  // seconds per normal, printed with an SI prefix (1.26n = 1.26 ns)
  state.counters["s_per_normal"] = benchmark::Counter(static_cast<double>(n) * static_cast<double>(state.iterations()),
                                                      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void noisy_read(benchmark::State& state, rimc::isa_tier tier, bool shortcut) {
  if (rimc::detail::lower(rimc::detected_isa(), tier) != tier) {
    state.SkipWithError("the CPU lacks this tier");
    return;
  }
  constexpr std::int64_t C = 16, M = 4096, n = M * C;
  std::vector<float> current(n), variance(n), noisy(n), z(n), to(C), lsb(C), factor(C, 1.0f);
  std::vector<std::uint32_t> undecided(n);
  for (std::int64_t j = 0; j < C; ++j) {
    to[j] = 28.0f + static_cast<float>(j);  // 127 steps over a range of about 4.5
    lsb[j] = 1.0f / to[j];
  }
  const rimc::counter_rng rng(5, 6);
  for (std::int64_t i = 0; i < n; ++i) {
    current[i] = static_cast<float>(rng.uniform(static_cast<std::uint64_t>(i), -2.0, 2.0));
    const float sigma = 0.25f / to[i % C];  // a quarter of a step
    variance[i] = sigma * sigma;
  }
  rimc::detail::adc_readout a;
  a.factor = factor.data();
  a.steps = 127.0f;
  a.to_steps = to.data();
  a.lsb = lsb.data();
  std::uint64_t first = 3;
  for (auto _ : state) {
    if (shortcut) {
      rimc::detail::noisy_for_adc(42, 7, first, a, current.data(), variance.data(), M, C, noisy.data(), z.data(),
                                  undecided.data(), tier);
    } else {
      rimc::detail::normal_fill(42, 7, first, n, z.data(), tier);
      rimc::detail::add_read_noise(current.data(), variance.data(), z.data(), n, noisy.data(), tier);
    }
    benchmark::DoNotOptimize(noisy.data());
    first += n;
  }
  state.counters["s_per_current"] = benchmark::Counter(static_cast<double>(n) * static_cast<double>(state.iterations()),
                                                       benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// GCC 12 reports the AVX-512 intrinsics' _mm512_undefined_* pass-through operands as uninitialized
// when they are inlined into a function whose target list differs from theirs (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"

/// The standard normal quantile in double precision: Acklam's rational
/// approximation (relative error 1.2e-9) and one Halley step on erfc
/// (about 1e-15 for p in [2^-26, 1 - 2^-26]).
double normal_quantile(double p) {
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                                 1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                 6.680131188771972e+01, -1.328068155288572e+01};
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                 -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                 3.754408661907416e+00};
  const auto tail = [&](double q) {
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
           ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  };
  double x = 0;
  if (p < 0.02425) {
    x = tail(std::sqrt(-2 * std::log(p)));
  } else if (p <= 1 - 0.02425) {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  } else {
    x = -tail(std::sqrt(-2 * std::log(1 - p)));
  }
  const double e = 0.5 * std::erfc(-x / std::numbers::sqrt2) - p;
  const double u = e * std::sqrt(2 * std::numbers::pi) * std::exp(x * x / 2);
  return x - u / (1 + x * u / 2);
}

/// The candidate's quantile: a word's bit 31 is the sign, bits 8-30 the
/// tail probability q = (m + 0.5) 2^-24 in [2^-25, 0.5); octave k (q in
/// [2^-(k+2), 2^-(k+1))) is a degree-7 polynomial in t = mantissa - 1.5,
/// interpolated at Chebyshev nodes, of -quantile(q).
struct table_quantile {
  static constexpr int degree = 7, octaves = 24;
  alignas(64) std::array<std::array<float, 32>, degree + 1> coef{};  // [power][octave], octaves 24-31 unused

  table_quantile() {
    constexpr int n = degree + 1;
    for (int k = 0; k < octaves; ++k) {
      double A[n][n], y[n];
      for (int j = 0; j < n; ++j) {
        const double t = 0.5 * std::cos(std::numbers::pi * (j + 0.5) / n);
        for (int i = 0; i < n; ++i) A[j][i] = std::pow(t, i);
        y[j] = -normal_quantile((1.5 + t) * std::ldexp(1.0, -(k + 2)));
      }
      for (int col = 0; col < n; ++col) {  // Gaussian elimination with partial pivoting
        int p = col;
        for (int r = col + 1; r < n; ++r)
          if (std::abs(A[r][col]) > std::abs(A[p][col])) p = r;
        std::swap(A[col], A[p]);
        std::swap(y[col], y[p]);
        for (int r = col + 1; r < n; ++r) {
          const double m = A[r][col] / A[col][col];
          for (int i = col; i < n; ++i) A[r][i] -= m * A[col][i];
          y[r] -= m * y[col];
        }
      }
      for (int r = n - 1; r >= 0; --r) {
        double v = y[r];
        for (int i = r + 1; i < n; ++i) v -= A[r][i] * static_cast<double>(coef[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)]);
        coef[static_cast<std::size_t>(r)][static_cast<std::size_t>(k)] = static_cast<float>(v / A[r][r]);
      }
    }
  }

  __attribute__((target("avx512f,avx512dq,fma"))) __m512 operator()(__m512i bits, const __m512 (&lo)[degree + 1],
                                                                     const __m512 (&hi)[degree + 1]) const {
    const __m512i sign = _mm512_and_si512(bits, _mm512_set1_epi32(INT32_MIN));
    const __m512i m = _mm512_and_si512(_mm512_srli_epi32(bits, 8), _mm512_set1_epi32(0x7FFFFF));
    const __m512 q = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(m), _mm512_set1_ps(0.5f)), _mm512_set1_ps(0x1p-24f));
    const __m512i idx = _mm512_sub_epi32(_mm512_set1_epi32(-2), _mm512_cvttps_epi32(_mm512_getexp_ps(q)));
    const __m512 t = _mm512_sub_ps(_mm512_getmant_ps(q, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero), _mm512_set1_ps(1.5f));
    __m512 p = _mm512_permutex2var_ps(lo[degree], idx, hi[degree]);
    for (int i = degree - 1; i >= 0; --i) p = _mm512_fmadd_ps(p, t, _mm512_permutex2var_ps(lo[i], idx, hi[i]));
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(p), sign));
  }

  /// The coefficient tables in registers: power i's octaves 0-15 in lo[i], 16-31 in hi[i].
  __attribute__((target("avx512f"))) void load(__m512 (&lo)[degree + 1], __m512 (&hi)[degree + 1]) const {
    for (std::size_t i = 0; i <= degree; ++i) {
      lo[i] = _mm512_load_ps(coef[i].data());
      hi[i] = _mm512_load_ps(coef[i].data() + 16);
    }
  }

  /// The quantile of 16 words, as candidate_fill computes it (for the error check).
  __attribute__((target("avx512f,avx512dq,fma"))) void sixteen(const std::uint32_t* w, float* z) const {
    __m512 lo[degree + 1], hi[degree + 1];
    load(lo, hi);
    _mm512_storeu_ps(z, (*this)(_mm512_loadu_si512(w), lo, hi));
  }
};

/// normal_fill's counters and output order, then Philox with `rounds` rounds and the table quantile:
/// 128 normals a step from index `first` (a multiple of 128; n too).
template <int rounds>
__attribute__((target("avx512f,avx512dq,fma"))) void candidate_fill(const table_quantile& tq, std::uint64_t seed,
                                                                    std::uint64_t stream, std::uint64_t first,
                                                                    std::int64_t n, float* out) {
  constexpr int D = table_quantile::degree;
  __m512 lo[D + 1], hi[D + 1];
  tq.load(lo, hi);
  const auto k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
  const rimc::detail::avx512::philox16_counters counters(stream);
  for (std::int64_t at = 0; at < n; at += 128) {
    __m512i x[2][4];
    counters.load<2>((first + static_cast<std::uint64_t>(at)) / 4, x);
    rimc::detail::avx512::philox16_zmm<2, rounds>(x, k0, k1);
    for (int g = 0; g < 2; ++g) {
      rimc::detail::avx512::blocks_to_output_order(x[g]);
      for (int q = 0; q < 4; ++q) _mm512_storeu_ps(out + at + 64 * g + 16 * q, tq(x[g][q], lo, hi));
    }
  }
}

/// The candidate generator on one thread, as normal_fill/<tier> (65,536 normals a fresh range every
/// iteration); max_abs_error: the vector quantile against normal_quantile over every 23-bit tail
/// probability below 2^-12 and every 61st above, both signs.
template <int rounds>
void normal_fill_candidate(benchmark::State& state) {
  if (rimc::detected_isa() != rimc::isa_tier::avx512) {
    state.SkipWithError("the CPU lacks AVX-512");
    return;
  }
  static const table_quantile tq;
  std::vector<std::uint32_t> words;
  for (std::uint32_t m = 0; m < (1u << 23); m += m < (1u << 11) ? 1 : 61)
    for (const std::uint32_t sign : {0u, 1u << 31}) words.push_back(sign | (m << 8));
  words.resize((words.size() + 15) / 16 * 16, words.back());
  std::vector<float> z(words.size());
  for (std::size_t i = 0; i < words.size(); i += 16) tq.sixteen(words.data() + i, z.data() + i);
  double worst = 0;
  for (std::size_t i = 0; i < words.size(); ++i) {
    const double q = (static_cast<double>((words[i] >> 8) & 0x7FFFFFu) + 0.5) * 0x1p-24;
    const double want = (words[i] >> 31) ? normal_quantile(q) : -normal_quantile(q);
    worst = std::max(worst, std::abs(static_cast<double>(z[i]) - want));
  }
  constexpr std::int64_t n = 1 << 16;
  std::vector<float> out(static_cast<std::size_t>(n));
  std::uint64_t first = 0;
  for (auto _ : state) {
    candidate_fill<rounds>(tq, 42, 7, first, n, out.data());
    benchmark::DoNotOptimize(out.data());
    first += n;
  }
  state.counters["s_per_normal"] = benchmark::Counter(static_cast<double>(n) * static_cast<double>(state.iterations()),
                                                      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["max_abs_error"] = worst;
}

#pragma GCC diagnostic pop

/// The tile path's blocks under read noise: images per group (about 256 KiB
/// of output), input channels per 256-row tile (whole channels of 3 x 3).
std::vector<conv_shape> read_conv_shapes() {
  return {{"resnet20_28", 5, 1, 16, 28, 3, 1, 1},  {"resnet20_32", 4, 3, 16, 32, 3, 1, 1},
          {"resnet20_28", 5, 16, 16, 28, 3, 1, 1}, {"resnet20_28", 10, 16, 32, 28, 3, 2, 1},
          {"resnet20_28", 10, 28, 32, 14, 3, 1, 1}, {"resnet20_28", 20, 28, 64, 14, 3, 2, 1},
          {"resnet20_28", 20, 28, 64, 7, 3, 1, 1}};
}

/// The current's and the variance's convolutions of one block, channels-last,
/// on one thread: two conv2d calls, or one with groups = 2 (codes and squares
/// interleaved per pixel, output [currents | variances] per pixel).
void read_convs(benchmark::State& state, const conv_shape& s, bool grouped) {
  const thread_count_guard one(1);
  conv2d_params p;
  p.stride = {s.stride, s.stride};
  p.padding = {s.pad, s.pad};
  Tensor w(Shape{s.o, s.c, s.k, s.k}), wv(Shape{s.o, s.c, s.k, s.k});
  fill_uniform(w, counter_rng(1), -1.0f, 1.0f);
  fill_uniform(wv, counter_rng(2), 0.0f, 1.0f);
  Tensor x(Shape{s.n, s.c, s.hw, s.hw}, layout::nhwc), xsq(Shape{s.n, s.c, s.hw, s.hw}, layout::nhwc);
  fill_uniform(x, counter_rng(3), -1.0f, 1.0f);
  for (std::int64_t i = 0; i < x.numel(); ++i) xsq.data()[i] = x.data()[i] * x.data()[i];
  const conv2d cur(w, std::nullopt, p), var(wv, std::nullopt, p);
  Tensor y, yv;
  cur.forward(x, y);
  var.forward(xsq, yv);
  const double flops = 2.0 * 2.0 * static_cast<double>(y.numel()) * static_cast<double>(s.c * s.k * s.k);
  if (!grouped) {
    for (auto _ : state) {
      cur.forward(x, y);
      var.forward(xsq, yv);
    }
    set_counters(state, flops, "two calls");
    return;
  }
  Tensor wg(Shape{2 * s.o, s.c, s.k, s.k}), xg(Shape{s.n, 2 * s.c, s.hw, s.hw}, layout::nhwc), yg;
  std::copy_n(w.data(), w.numel(), wg.data());
  std::copy_n(wv.data(), wv.numel(), wg.data() + w.numel());
  for (std::int64_t q = 0; q < s.n * s.hw * s.hw; ++q)
    for (std::int64_t c = 0; c < s.c; ++c) {
      xg.data()[q * 2 * s.c + c] = x.data()[q * s.c + c];
      xg.data()[q * 2 * s.c + s.c + c] = xsq.data()[q * s.c + c];
    }
  conv2d_params pg = p;
  pg.groups = 2;
  const conv2d both(wg, std::nullopt, pg);
  for (auto _ : state) both.forward(xg, yg);
  // Whether one call gives the pair's sums: outputs whose bits differ.
  const Tensor yn = y.to_layout(layout::nhwc), yvn = yv.to_layout(layout::nhwc), ygn = yg.to_layout(layout::nhwc);
  std::int64_t differ = 0;
  const auto pixels = yn.numel() / s.o;
  for (std::int64_t q = 0; q < pixels; ++q)
    for (std::int64_t o = 0; o < s.o; ++o) {
      differ += ygn.data()[q * 2 * s.o + o] != yn.data()[q * s.o + o];
      differ += ygn.data()[q * 2 * s.o + s.o + o] != yvn.data()[q * s.o + o];
    }
  state.counters["differing"] = static_cast<double>(differ);
  set_counters(state, flops, "one grouped call");
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::RegisterBenchmark("fma_peak", fma_peak)->UseRealTime();
  benchmark::RegisterBenchmark("omp_region", omp_region)->UseRealTime();
  benchmark::RegisterBenchmark("memory_bandwidth", memory_bandwidth)->UseRealTime()->Unit(benchmark::kMillisecond);
  for (const auto tier : {rimc::isa_tier::scalar, rimc::isa_tier::avx2, rimc::isa_tier::avx512})
    benchmark::RegisterBenchmark(("normal_fill/" + std::string(rimc::to_string(tier))).c_str(), normal_fill, tier)
        ->UseRealTime();
  for (const bool shortcut : {false, true})
    for (const auto tier : {rimc::isa_tier::scalar, rimc::isa_tier::avx2, rimc::isa_tier::avx512})
      benchmark::RegisterBenchmark(
          ("noisy_read/" + std::string(shortcut ? "shortcut/" : "exact/") + std::string(rimc::to_string(tier))).c_str(),
          noisy_read, tier, shortcut)
          ->UseRealTime();
  benchmark::RegisterBenchmark("normal_fill_candidate/table_quantile/philox10", normal_fill_candidate<10>)->UseRealTime();
  benchmark::RegisterBenchmark("normal_fill_candidate/table_quantile/philox7", normal_fill_candidate<7>)->UseRealTime();
  for (const auto& s : read_conv_shapes()) {
    for (const bool grouped : {false, true})
      benchmark::RegisterBenchmark(
          ("read_convs/" + std::string(grouped ? "grouped/" : "pair/") + name_of(s)).c_str(), read_convs, s, grouped)
          ->UseRealTime();
  }
  for (const auto& s : shapes()) {
    const std::string n = name_of(s);
    benchmark::RegisterBenchmark(("conv_fwd/rimc/" + n).c_str(), rimc_forward, s)->UseRealTime();
    benchmark::RegisterBenchmark(("conv_fwd/direct/" + n).c_str(), direct_forward, s)->UseRealTime();
    benchmark::RegisterBenchmark(("conv_bwd_data/rimc/" + n).c_str(), rimc_backward_data, s)->UseRealTime();
    benchmark::RegisterBenchmark(("conv_bwd_data/direct/" + n).c_str(), direct_backward_data, s)->UseRealTime();
    if (s.net.starts_with("resnet20") && s.n == 32) {
      benchmark::RegisterBenchmark(("conv_fwd/reference/" + n).c_str(), reference_forward, s)
          ->UseRealTime()
          ->Iterations(1);
      benchmark::RegisterBenchmark(("conv_bwd_data/reference/" + n).c_str(), reference_backward_data, s)
          ->UseRealTime()
          ->Iterations(1);
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
