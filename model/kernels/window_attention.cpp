// StreamDiT's window self-attention in bf16 for CPUs with AVX-512 BF16 (model/kernels).
//
// One task is one (window, head). Its keys and values are first repacked into channel pairs
// (the operand layout of vdpbf16ps), then every four query rows go through scores, softmax
// and the weighted sum of values while all they touch stays in the L1 cache: no (Lw, Lw)
// score tensor is ever written to memory, and the scores stay float32 up to the softmax.
// Built by torch.utils.cpp_extension (model/kernels/__init__.py); called as
// torch.ops.streamdit.window_attention.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int kRows = 4;      // query rows per tile
constexpr int kKeyTiles = 4;  // 16-key tiles per score block: kRows x 4 accumulators
constexpr int kDimTiles = 2;  // 16-channel tiles per output block

// exp(x) for x <= 0 (the row maximum is subtracted first): 2^t with t = x log2(e) split into
// an integer n and f in [-0.5, 0.5]; 2^f by a degree-5 polynomial (relative error ~2e-7, far
// below bf16's 4e-3), 2^n by scalef. t is clamped at -126 so masked keys (-inf) give ~0.
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

inline __m512 load_bf16(const at::BFloat16* src) {  // 16 bf16 -> 16 float
  __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
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
  std::vector<uint32_t> keys;    // (Dh/2, Lw) channel pairs of each key
  std::vector<uint32_t> values;  // (Lw/2, Dh) pairs of consecutive keys' values
  std::vector<float> scores;     // (kRows, Lw)
  std::vector<at::BFloat16> weights;  // (kRows, Lw) softmax numerators
  Scratch(int64_t lw, int64_t dh)
      : keys(lw * dh / 2), values(lw * dh / 2), scores(kRows * lw), weights(kRows * lw) {}
};

// One window and head: rows of q and k `ldqk` apart, of v `ldv` apart, of out `ldo` apart;
// mask (Lw, Lw) additive or null.
void attend(const at::BFloat16* q, const at::BFloat16* k, const at::BFloat16* v,
            const at::BFloat16* mask, at::BFloat16* out, int64_t lw, int64_t dh, int64_t ldqk,
            int64_t ldv, int64_t ldo, float scale, Scratch& scratch) {
  const int64_t pairs = dh / 2;
  uint32_t* kp = scratch.keys.data();
  uint32_t* vp = scratch.values.data();
  float* s = scratch.scores.data();
  at::BFloat16* w = scratch.weights.data();
  for (int64_t j = 0; j < lw; ++j) {  // kp[c][j] = (k[j][2c], k[j][2c+1])
    const auto* row = reinterpret_cast<const uint32_t*>(k + j * ldqk);
    for (int64_t c = 0; c < pairs; ++c) kp[c * lw + j] = row[c];
  }
  auto* vph = reinterpret_cast<uint16_t*>(vp);
  for (int64_t j = 0; j < lw; j += 2) {  // vp[j/2][d] = (v[j][d], v[j+1][d])
    const auto* a = reinterpret_cast<const uint16_t*>(v + j * ldv);
    const auto* b = reinterpret_cast<const uint16_t*>(v + (j + 1) * ldv);
    for (int64_t d = 0; d < dh; ++d) {
      vph[(j / 2 * dh + d) * 2] = a[d];
      vph[(j / 2 * dh + d) * 2 + 1] = b[d];
    }
  }
  for (int64_t i0 = 0; i0 < lw; i0 += kRows) {
    // Scores: s[r][j] = scale * q[i0+r] . k[j] + mask[i0+r][j].
    for (int64_t j0 = 0; j0 < lw; j0 += 16 * kKeyTiles) {
      __m512 acc[kRows][kKeyTiles];
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
        for (int t = 0; t < kKeyTiles; ++t) acc[r][t] = _mm512_setzero_ps();
      for (int64_t c = 0; c < pairs; ++c) {
        __m512bh keys[kKeyTiles];
#pragma GCC unroll 4
        for (int t = 0; t < kKeyTiles; ++t)
          keys[t] = (__m512bh)_mm512_loadu_si512(kp + c * lw + j0 + 16 * t);
#pragma GCC unroll 4
        for (int r = 0; r < kRows; ++r) {
          __m512bh qr = broadcast_pair(q + (i0 + r) * ldqk + 2 * c);
#pragma GCC unroll 4
          for (int t = 0; t < kKeyTiles; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], qr, keys[t]);
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
        for (int t = 0; t < kKeyTiles; ++t) {
          __m512 x = _mm512_mul_ps(acc[r][t], _mm512_set1_ps(scale));
          if (mask) x = _mm512_add_ps(x, load_bf16(mask + (i0 + r) * lw + j0 + 16 * t));
          _mm512_storeu_ps(s + r * lw + j0 + 16 * t, x);
        }
    }
    // Softmax numerators exp(s - max) in bf16; the division waits for the output.
    float inv_sum[kRows];
    for (int r = 0; r < kRows; ++r) {
      const float* row = s + r * lw;
      __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
      for (int64_t j = 0; j < lw; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(row + j));
      const __m512 row_max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < lw; j += 16) {
        __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + j), row_max));
        sum = _mm512_add_ps(sum, e);
        store_bf16(w + r * lw + j, e);
      }
      inv_sum[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    // Output: out[i0+r] = sum_j w[r][j] v[j] / sum_j w[r][j].
    for (int64_t d0 = 0; d0 < dh; d0 += 16 * kDimTiles) {
      __m512 acc[kRows][kDimTiles];
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 2
        for (int t = 0; t < kDimTiles; ++t) acc[r][t] = _mm512_setzero_ps();
      for (int64_t jp = 0; jp < lw / 2; ++jp) {
        __m512bh vals[kDimTiles];
#pragma GCC unroll 2
        for (int t = 0; t < kDimTiles; ++t)
          vals[t] = (__m512bh)_mm512_loadu_si512(vp + jp * dh + d0 + 16 * t);
#pragma GCC unroll 4
        for (int r = 0; r < kRows; ++r) {
          __m512bh wr = broadcast_pair(w + r * lw + 2 * jp);
#pragma GCC unroll 2
          for (int t = 0; t < kDimTiles; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wr, vals[t]);
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 2
        for (int t = 0; t < kDimTiles; ++t)
          store_bf16(out + (i0 + r) * ldo + d0 + 16 * t,
                     _mm512_mul_ps(acc[r][t], _mm512_set1_ps(inv_sum[r])));
    }
  }
}

// qk (B, S, 2*Nh, Dh) contiguous, queries then keys; v (B, S, Nh*Dh) with unit channel
// stride; mask (B*nW, 1, Lw, Lw) additive, or empty; S = nW * Lw slots in window order.
// Returns (B, S, Nh*Dh) in window order.
at::Tensor window_attention(const at::Tensor& qk, const at::Tensor& v, const at::Tensor& mask,
                            int64_t window_tokens, double scale) {
  TORCH_CHECK(qk.device().is_cpu() && v.device().is_cpu(), "window_attention runs on the CPU");
  TORCH_CHECK(qk.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16,
              "window_attention takes bf16 queries, keys and values");
  TORCH_CHECK(qk.dim() == 4 && qk.is_contiguous(), "qk must be a contiguous (B, S, 2*Nh, Dh)");
  const int64_t b = qk.size(0), slots = qk.size(1), nh = qk.size(2) / 2, dh = qk.size(3);
  const int64_t lw = window_tokens, nw = slots / lw;
  TORCH_CHECK(lw > 0 && slots % lw == 0 && lw % (16 * kKeyTiles) == 0 && dh % (16 * kDimTiles) == 0,
              "window_attention needs windows of a multiple of 64 tokens and heads of a multiple of 32");
  TORCH_CHECK(v.dim() == 3 && v.size(0) == b && v.size(1) == slots && v.size(2) == nh * dh &&
                  v.stride(2) == 1, "v must be (B, S, Nh*Dh) with unit channel stride");
  const bool masked = mask.numel() > 0;
  TORCH_CHECK(!masked || (mask.scalar_type() == at::kBFloat16 && mask.is_contiguous() &&
                          mask.numel() == b * nw * lw * lw),
              "mask must be a contiguous bf16 (B*nW, 1, Lw, Lw), or empty");
  auto out = at::empty({b, slots, nh * dh}, qk.options());
  const at::BFloat16* qkp = qk.data_ptr<at::BFloat16>();
  const at::BFloat16* vbase = v.data_ptr<at::BFloat16>();
  const at::BFloat16* mp = masked ? mask.data_ptr<at::BFloat16>() : nullptr;
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  const int64_t ldqk = 2 * nh * dh, ldv = v.stride(1), ldo = nh * dh;
  at::parallel_for(0, b * nw * nh, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(lw, dh);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t window = task / nh, head = task % nh;  // window counts over the batch
      const int64_t first = window * lw, sample = window / nw;
      const at::BFloat16* vp = vbase + sample * v.stride(0) + (window % nw) * lw * ldv;
      attend(qkp + first * ldqk + head * dh, qkp + first * ldqk + (nh + head) * dh,
             vp + head * dh, masked ? mp + window * lw * lw : nullptr,
             op + first * ldo + head * dh, lw, dh, ldqk, ldv, ldo, static_cast<float>(scale),
             scratch);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(streamdit, m) {
  m.def("window_attention(Tensor qk, Tensor v, Tensor mask, int window_tokens, float scale) "
        "-> Tensor", &window_attention);
}
