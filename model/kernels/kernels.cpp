// StreamDiT's CPU kernels in bf16 for CPUs with AVX-512 BF16 (model/kernels): attention
// over groups (a window per group for the self-attention, a sample per group for the text
// cross-attention), the q/k norm with the rotary rotation, and adaLN's norm with its
// modulation. Built by torch.utils.cpp_extension (model/kernels/__init__.py); called as
// torch.ops.streamdit.*.
//
// Attention: one task is one (group, head). Its keys and values are first repacked into
// channel pairs (the operand layout of vdpbf16ps), then every four query rows go through
// scores, softmax and the weighted sum of values while all they touch stays in the L1
// cache: no (Lq, Lk) score tensor is ever written to memory, and the scores stay float32 up
// to the softmax.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int kRows = 4;      // query rows per tile
constexpr int kKeyTiles = 4;  // 16-key tiles per score block: kRows x 4 accumulators
constexpr int kDimTiles = 2;  // 16-channel tiles per output block

// exp(x), meant for x <= 0 (the row maximum is subtracted first): 2^t with t = x log2(e)
// split into an integer n and f in [-0.5, 0.5]; 2^f by a degree-5 polynomial (relative
// error ~2e-7, far below bf16's 4e-3), 2^n by scalef. t is clamped at -126 so masked keys
// (-inf) give ~0; above 128 it overflows to inf.
inline __m512 exp_nonpositive(__m512 x) {
  __m512 t = _mm512_max_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f)),
                           _mm512_set1_ps(-126.0f));
  __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.3333558146e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108665e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650696e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718056e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __m512 widen(__m256i half) {  // 16 bf16 -> 16 float
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

inline __m512 load_bf16(const at::BFloat16* src) {  // 16 bf16 -> 16 float
  return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
}

inline __m512 load_bf16(const at::BFloat16* src, int64_t count) {  // the first `count`, 0s
  if (count >= 16) return load_bf16(src);
  const __mmask16 keep = count > 0 ? static_cast<__mmask16>((1u << count) - 1) : 0;
  return widen(_mm256_maskz_loadu_epi16(keep, src));  // masked lanes are never read
}

inline void store_bf16(at::BFloat16* dst, __m512 x) {  // 16 float -> 16 bf16, rounded
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(x));
}

inline __m512bh broadcast_pair(const at::BFloat16* src) {  // src[0], src[1] in every lane
  uint32_t bits;
  std::memcpy(&bits, src, sizeof(bits));
  return (__m512bh)_mm512_set1_epi32(static_cast<int>(bits));
}

struct Scratch {
  std::vector<uint32_t> keys;         // (Dh/2, Lk') channel pairs of each key
  std::vector<uint32_t> values;       // (Lk'/2, Dh) pairs of consecutive keys' values
  std::vector<float> scores;          // (kRows, Lk')
  std::vector<at::BFloat16> weights;  // (kRows, Lk') softmax numerators
  Scratch(int64_t padded_keys, int64_t dh)
      : keys(padded_keys * dh / 2, 0),
        values(padded_keys * dh / 2, 0),
        scores(kRows * padded_keys),
        weights(kRows * padded_keys) {}
};

// acc[r][t] = sum over p < steps of a[r][2p], a[r][2p+1] . b[p][16t..16t+15] (vdpbf16ps):
// kRows rows of A in bf16, `lda` apart, times NT tiles of 16 columns of B packed in pairs
// (one uint32 per column and pair), rows `ldb` apart.
template <int NT>
__attribute__((always_inline)) inline void dot_tiles(const at::BFloat16* a, int64_t lda,
                                                     const uint32_t* b, int64_t ldb,
                                                     int64_t steps, __m512 (&acc)[kRows][NT]) {
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t p = 0; p < steps; ++p) {
    __m512bh cols[NT];
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) cols[t] = (__m512bh)_mm512_loadu_si512(b + p * ldb + 16 * t);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      const __m512bh ar = broadcast_pair(a + r * lda + 2 * p);
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], ar, cols[t]);
    }
  }
}

// Scores of kRows query rows against NT tiles of 16 keys from key j0:
// s[r][j] = scale * q[r] . k[j] + mask[r][j] (mask rows hold lk values).
template <int NT>
inline void score_tiles(const at::BFloat16* q, int64_t ldq, const uint32_t* kp, int64_t ldkp,
                        int64_t pairs, int64_t j0, const at::BFloat16* mask, int64_t ldm,
                        int64_t lk, float scale, float* s, int64_t lds) {
  __m512 acc[kRows][NT];
  dot_tiles<NT>(q, ldq, kp + j0, ldkp, pairs, acc);
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      __m512 x = _mm512_mul_ps(acc[r][t], _mm512_set1_ps(scale));
      const int64_t j = j0 + 16 * t;
      if (mask) x = _mm512_add_ps(x, load_bf16(mask + r * ldm + j, lk - j));
      _mm512_storeu_ps(s + r * lds + j, x);
    }
}

// Attention of one group and head: lq query rows `ldq` apart, lk keys and values `ldk` and
// `ldv` apart, output rows `ldo` apart; mask rows (lk additive values) `ldm` apart (0: one
// row for all queries), or null. Keys are padded to a multiple of 16 inside.
void attend(const at::BFloat16* q, int64_t ldq, const at::BFloat16* k, int64_t ldk,
            const at::BFloat16* v, int64_t ldv, const at::BFloat16* mask, int64_t ldm,
            at::BFloat16* out, int64_t ldo, int64_t lq, int64_t lk, int64_t dh, float scale,
            Scratch& scratch) {
  const int64_t pairs = dh / 2, padded = (lk + 15) / 16 * 16;
  uint32_t* kp = scratch.keys.data();
  uint32_t* vp = scratch.values.data();
  float* s = scratch.scores.data();
  at::BFloat16* w = scratch.weights.data();
  for (int64_t j = 0; j < lk; ++j) {  // kp[c][j] = (k[j][2c], k[j][2c+1]); padding stays 0
    const auto* row = reinterpret_cast<const uint32_t*>(k + j * ldk);
    for (int64_t c = 0; c < pairs; ++c) kp[c * padded + j] = row[c];
  }
  auto* vph = reinterpret_cast<uint16_t*>(vp);
  for (int64_t j = 0; j < lk; ++j) {  // vp[j/2][d] = (v[j][d], v[j+1][d]); padding stays 0
    const auto* row = reinterpret_cast<const uint16_t*>(v + j * ldv);
    for (int64_t d = 0; d < dh; ++d) vph[(j / 2 * dh + d) * 2 + j % 2] = row[d];
  }
  for (int64_t i0 = 0; i0 < lq; i0 += kRows) {
    const at::BFloat16* qi = q + i0 * ldq;
    const at::BFloat16* mi = mask ? mask + i0 * ldm : nullptr;
    int64_t j0 = 0;
    for (; j0 + 16 * kKeyTiles <= padded; j0 += 16 * kKeyTiles)
      score_tiles<kKeyTiles>(qi, ldq, kp, padded, pairs, j0, mi, ldm, lk, scale, s, padded);
    switch ((padded - j0) / 16) {  // the last one to three tiles
      case 3: score_tiles<3>(qi, ldq, kp, padded, pairs, j0, mi, ldm, lk, scale, s, padded); break;
      case 2: score_tiles<2>(qi, ldq, kp, padded, pairs, j0, mi, ldm, lk, scale, s, padded); break;
      case 1: score_tiles<1>(qi, ldq, kp, padded, pairs, j0, mi, ldm, lk, scale, s, padded); break;
      default: break;
    }
    // Softmax numerators exp(s - max) in bf16 (padding keys: 0); the division waits for
    // the output.
    float inv_sum[kRows];
    const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int r = 0; r < kRows; ++r) {
      float* row = s + r * padded;
      for (int64_t j = lk; j < padded; ++j) row[j] = -std::numeric_limits<float>::infinity();
      __m512 m = neg_inf;
      for (int64_t j = 0; j < padded; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(row + j));
      const __m512 row_max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < padded; j += 16) {
        __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + j), row_max));
        sum = _mm512_add_ps(sum, e);
        store_bf16(w + r * padded + j, e);
      }
      inv_sum[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    // Output: out[i0+r] = sum_j w[r][j] v[j] / sum_j w[r][j].
    for (int64_t d0 = 0; d0 < dh; d0 += 16 * kDimTiles) {
      __m512 acc[kRows][kDimTiles];
      dot_tiles<kDimTiles>(w, padded, vp + d0, dh, padded / 2, acc);
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 2
        for (int t = 0; t < kDimTiles; ++t)
          store_bf16(out + (i0 + r) * ldo + d0 + 16 * t,
                     _mm512_mul_ps(acc[r][t], _mm512_set1_ps(inv_sum[r])));
    }
  }
}

// Multi-head attention over G independent groups (windows, or samples):
// q (G, Lq, Nh, Dh), k and v (G, Lk, Nh, Dh), any strides but a unit channel stride;
// mask (G, Lq or 1, Lk) additive with any strides but a unit key stride, or empty.
// Returns softmax(q k^T * scale + mask) v as a contiguous (G, Lq, Nh*Dh).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& mask, double scale) {
  for (const at::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kBFloat16 && t->dim() == 4 &&
                    t->stride(3) == 1,
                "attention takes bf16 CPU tensors (G, L, Nh, Dh) with a unit channel stride");
  }
  const int64_t g = q.size(0), lq = q.size(1), nh = q.size(2), dh = q.size(3), lk = k.size(1);
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == g && k.size(2) == nh && k.size(3) == dh,
              "k and v must be (G, Lk, Nh, Dh) like q");
  TORCH_CHECK(lq % kRows == 0 && dh % (16 * kDimTiles) == 0 && lk > 0,
              "attention needs a multiple of 4 queries and heads of a multiple of 32");
  const bool masked = mask.numel() > 0;
  TORCH_CHECK(!masked || (mask.scalar_type() == at::kBFloat16 && mask.dim() == 3 &&
                          mask.size(0) == g && (mask.size(1) == lq || mask.size(1) == 1) &&
                          mask.size(2) == lk && mask.stride(2) == 1),
              "mask must be a bf16 (G, Lq or 1, Lk) with a unit key stride, or empty");
  auto out = at::empty({g, lq, nh * dh}, q.options());
  const auto* qp = q.data_ptr<at::BFloat16>();
  const auto* kp = k.data_ptr<at::BFloat16>();
  const auto* vp = v.data_ptr<at::BFloat16>();
  const auto* mp = masked ? mask.data_ptr<at::BFloat16>() : nullptr;
  const int64_t ldm = masked && mask.size(1) > 1 ? mask.stride(1) : 0;
  auto* op = out.data_ptr<at::BFloat16>();
  const int64_t padded = (lk + 15) / 16 * 16;
  at::parallel_for(0, g * nh, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(padded, dh);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t gi = task / nh, h = task % nh;
      attend(qp + gi * q.stride(0) + h * q.stride(2), q.stride(1),
             kp + gi * k.stride(0) + h * k.stride(2), k.stride(1),
             vp + gi * v.stride(0) + h * v.stride(2), v.stride(1),
             masked ? mp + gi * mask.stride(0) : nullptr, ldm, op + gi * lq * nh * dh + h * dh,
             nh * dh, lq, lk, dh, static_cast<float>(scale), scratch);
    }
  });
  return out;
}

// Queries and keys made ready in one pass: RMS-normalized over all heads (statistics in
// float32), scaled by the norms' weights, then rotated by the rotary tables when given.
// x (B, S, N, D) with a unit channel stride (N = 2: the q/k slice of the fused projection),
// weight (N, D), cos and sin (S, 1, Dh) with the pair's sign folded into sin
// (model.attention.rope_rotation), or empty -> (B, S, N, D) contiguous.
at::Tensor norm_rotate(const at::Tensor& x, const at::Tensor& weight, double eps,
                       const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.dim() == 4 &&
                  x.stride(3) == 1,
              "norm_rotate takes a bf16 CPU (B, S, N, D) with a unit channel stride");
  const int64_t b = x.size(0), slots = x.size(1), n = x.size(2), d = x.size(3);
  const bool rotary = cos.numel() > 0;
  const int64_t dh = rotary ? cos.size(-1) : d;
  TORCH_CHECK(d % 16 == 0 && dh % 16 == 0 && d % dh == 0, "norm_rotate needs heads of 16k");
  for (const at::Tensor* t : {&weight, &cos, &sin}) {
    TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->is_contiguous(),
                "norm_rotate takes contiguous bf16 weights and tables");
  }
  TORCH_CHECK(weight.numel() == n * d &&
                  (!rotary || (cos.numel() == slots * dh && sin.numel() == slots * dh)),
              "norm_rotate: weight (N, D), cos and sin (S, 1, Dh) or empty");
  auto out = at::empty({b, slots, n, d}, x.options());
  const auto* src = x.data_ptr<at::BFloat16>();
  const auto* wp = weight.data_ptr<at::BFloat16>();
  const auto* cp = rotary ? cos.data_ptr<at::BFloat16>() : nullptr;
  const auto* sp = rotary ? sin.data_ptr<at::BFloat16>() : nullptr;
  auto* dst = out.data_ptr<at::BFloat16>();
  const int64_t s0 = x.stride(0), s1 = x.stride(1), s2 = x.stride(2);
  at::parallel_for(0, b * slots, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t slot = row % slots;
      for (int64_t which = 0; which < n; ++which) {  // queries, then keys
        const at::BFloat16* xr = src + (row / slots) * s0 + slot * s1 + which * s2;
        at::BFloat16* y = dst + (row * n + which) * d;
        __m512 sq = _mm512_setzero_ps();
        for (int64_t i = 0; i < d; i += 16) {
          __m512 v = load_bf16(xr + i);
          sq = _mm512_fmadd_ps(v, v, sq);
        }
        const __m512 inv = _mm512_set1_ps(
            1.0f / std::sqrt(_mm512_reduce_add_ps(sq) / d + static_cast<float>(eps)));
        for (int64_t i = 0; i < d; i += 16) {
          __m512 v = _mm512_mul_ps(_mm512_mul_ps(load_bf16(xr + i), inv),
                                   load_bf16(wp + which * d + i));
          if (rotary) {  // (a, b) -> (a c - b s, b c + a s), the sign folded into sin
            const int64_t j = slot * dh + i % dh;
            __m512 swapped = _mm512_permute_ps(v, 0xB1);  // (b0, a0, b1, a1, ...)
            v = _mm512_fmadd_ps(swapped, load_bf16(sp + j), _mm512_mul_ps(v, load_bf16(cp + j)));
          }
          store_bf16(y + i, v);
        }
      }
    }
  });
  return out;
}

// adaLN: LayerNorm without weights, then each frame's scale and shift, in one pass:
// out = (x - mean) / sqrt(var + eps) * (1 + scale[f]) + shift[f], statistics in float32.
// x (B, L, D) contiguous, L = F * (tokens per frame); shift and scale (B, F, D) with a unit
// channel stride -> (B, L, D).
at::Tensor layer_norm_modulate(const at::Tensor& x, const at::Tensor& shift,
                               const at::Tensor& scale, double eps) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.dim() == 3 &&
                  x.is_contiguous() && x.size(2) % 16 == 0,
              "layer_norm_modulate takes a contiguous bf16 CPU (B, L, D), D a multiple of 16");
  const int64_t b = x.size(0), l = x.size(1), d = x.size(2), frames = shift.size(1);
  for (const at::Tensor* t : {&shift, &scale}) {
    TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->dim() == 3 && t->size(0) == b &&
                    t->size(1) == frames && t->size(2) == d && t->stride(2) == 1,
                "layer_norm_modulate: shift and scale (B, F, D) with a unit channel stride");
  }
  TORCH_CHECK(frames > 0 && l % frames == 0, "layer_norm_modulate: L must be F * tokens");
  auto out = at::empty_like(x);
  const auto* xp = x.data_ptr<at::BFloat16>();
  const auto* shp = shift.data_ptr<at::BFloat16>();
  const auto* scp = scale.data_ptr<at::BFloat16>();
  auto* op = out.data_ptr<at::BFloat16>();
  const int64_t per_frame = l / frames;
  at::parallel_for(0, b * l, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t sample = row / l, frame = (row % l) / per_frame;
      const at::BFloat16* xr = xp + row * d;
      const at::BFloat16* sh = shp + sample * shift.stride(0) + frame * shift.stride(1);
      const at::BFloat16* sc = scp + sample * scale.stride(0) + frame * scale.stride(1);
      __m512 sum = _mm512_setzero_ps(), sq = _mm512_setzero_ps();
      for (int64_t i = 0; i < d; i += 16) {
        __m512 v = load_bf16(xr + i);
        sum = _mm512_add_ps(sum, v);
        sq = _mm512_fmadd_ps(v, v, sq);
      }
      const float mean = _mm512_reduce_add_ps(sum) / d;
      const float var = std::max(_mm512_reduce_add_ps(sq) / d - mean * mean, 0.0f);
      const __m512 inv = _mm512_set1_ps(1.0f / std::sqrt(var + static_cast<float>(eps)));
      const __m512 mu = _mm512_set1_ps(mean), one = _mm512_set1_ps(1.0f);
      for (int64_t i = 0; i < d; i += 16) {
        __m512 n = _mm512_mul_ps(_mm512_sub_ps(load_bf16(xr + i), mu), inv);
        __m512 gain = _mm512_add_ps(one, load_bf16(sc + i));
        store_bf16(op + row * d + i, _mm512_fmadd_ps(n, gain, load_bf16(sh + i)));
      }
    }
  });
  return out;
}

// GELU with the tanh approximation, in place: x (1 + tanh(u)) / 2 = x / (1 + exp(-2u)) with
// u = sqrt(2/pi) (x + 0.044715 x^3), in float32; the reciprocal to 2^-14 (bf16 keeps 2^-8).
// exp(-2u) overflows to inf for very negative x, giving the right limit, 0.
// oneDNN's fused tanh GELU costs half of the matmul it follows on this model's shapes.
inline __m512 gelu_tanh(__m512 v) {
  const __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), v), _mm512_mul_ps(v, v));
  const __m512 u2 = _mm512_mul_ps(_mm512_set1_ps(-1.5957691216057308f), _mm512_add_ps(v, v3));
  const __m512 e = exp_nonpositive(u2);  // exp(-2u); valid for positive arguments too
  return _mm512_mul_ps(v, _mm512_rcp14_ps(_mm512_add_ps(_mm512_set1_ps(1.0f), e)));
}

at::Tensor& gelu_tanh_(at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.is_contiguous(),
              "gelu_tanh_ takes a contiguous bf16 CPU tensor");
  auto* p = x.data_ptr<at::BFloat16>();
  const int64_t n = x.numel();
  at::parallel_for(0, (n + 15) / 16, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t count = std::min<int64_t>(16, n - 16 * i);
      const __m512 y = gelu_tanh(load_bf16(p + 16 * i, count));
      if (count == 16) {
        store_bf16(p + 16 * i, y);
      } else {  // the tail: masked lanes are never written
        const __mmask16 keep = static_cast<__mmask16>((1u << count) - 1);
        _mm256_mask_storeu_epi16(p + 16 * i, keep, (__m256i)_mm512_cvtneps_pbh(y));
      }
    }
  });
  return x;
}

}  // namespace

TORCH_LIBRARY(streamdit, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor mask, float scale) -> Tensor",
        &attention);
  m.def("norm_rotate(Tensor qk, Tensor weight, float eps, Tensor cos, Tensor sin) -> Tensor",
        &norm_rotate);
  m.def("layer_norm_modulate(Tensor x, Tensor shift, Tensor scale, float eps) -> Tensor",
        &layer_norm_modulate);
  m.def("gelu_tanh_(Tensor(a!) x) -> Tensor(a!)", &gelu_tanh_);
}
