// Weight-only int8 and 4-bit linear layers for x86-64 CPUs with AVX2, FMA and F16C (built and loaded by
// danlu.kernels).
//
//   int8:  out[m, n] = scale[n] * sum_k x[m, k] * w[n, k]  (+ bias[n])
//   4-bit: out[m, n] = sum_k x[m, k] * (d[n, g] * q[n, k] + mn[n, g])  (+ bias[n]),  g = k / 32
//
// x is float32 (M x K, rows contiguous), out float32 (M x N). int8: w int8 (N x K, one scale per output
// row). 4-bit (as llama.cpp's Q4_1): per row, K/32 groups of 16 bytes, byte j holding q[j] in its low
// nibble and q[j + 16] in its high one (q in 0..15), and a float16 step d and offset mn per group; the
// activations are rounded to int8 per group of 32 for integer dot products (see danlu_q4_linear).
// danlu_add_rms_norm is the residual add + RMSNorm of the lean decode step.
// Reading one byte per weight instead of four is what speeds up decoding, which streams every weight
// at every step. Blocks of 4 weight rows are widened to float32 into a small buffer that stays in L1,
// then multiplied with tiles of 3 activation rows (12 AVX2 accumulators). Each output is one dot
// product summed in the same order whatever M is and wherever its row sits in the batch, so a row's
// result never depends on the other rows: decoding is batch-invariant.
#include <immintrin.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>

namespace {

constexpr int NB = 4;       // weight rows per block (widened together)
constexpr int MB = 3;       // activation rows per tile
constexpr int MCHUNK = 64;  // activation rows kept hot in L2 while every weight block passes

inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

template <int R, int C>
inline void tile(const float* x, const float* wf, int K, int N, int n0, const float* scale, const float* bias,
                 float* out) {
    __m256 acc[R][C];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) acc[i][j] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 8) {
        __m256 wv[C];
        for (int j = 0; j < C; j++) wv[j] = _mm256_load_ps(wf + j * K + k);
        for (int i = 0; i < R; i++) {
            __m256 xv = _mm256_loadu_ps(x + (size_t)i * K + k);
            for (int j = 0; j < C; j++) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) {
            float v = scale ? hsum(acc[i][j]) * scale[n0 + j] : hsum(acc[i][j]);
            out[(size_t)i * N + n0 + j] = bias ? v + bias[n0 + j] : v;
        }
}

template <int C>
void rows(const float* x, const float* wf, int M, int K, int N, int n0, const float* scale, const float* bias,
          float* out) {
    int m = 0;
    for (; m + MB <= M; m += MB) tile<MB, C>(x + (size_t)m * K, wf, K, N, n0, scale, bias, out + (size_t)m * N);
    if (M - m == 2) tile<2, C>(x + (size_t)m * K, wf, K, N, n0, scale, bias, out + (size_t)m * N);
    if (M - m == 1) tile<1, C>(x + (size_t)m * K, wf, K, N, n0, scale, bias, out + (size_t)m * N);
}

// Widen weight row n (K weights) to float32 at dst.
struct WidenInt8 {
    const int8_t* w;
    void operator()(int n, int K, float* dst) const {
        const int8_t* src = w + (size_t)n * K;
        for (int k = 0; k < K; k += 8) {
            __m128i q = _mm_loadl_epi64((const __m128i*)(src + k));
            _mm256_store_ps(dst + k, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
        }
    }
};

// Blocks of NB weight rows are widened into a per-thread buffer, then multiplied with every activation row.
template <class Widen>
int linear(const float* x, Widen widen, const float* scale, const float* bias, float* out, int M, int N, int K,
           int threads) {
    const int blocks = (N + NB - 1) / NB;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float* wf = (float*)aligned_alloc(32, sizeof(float) * NB * K);
        if (!wf) failed = 2;
        for (int m0 = 0; m0 < M; m0 += MCHUNK) {
            const int mc = M - m0 < MCHUNK ? M - m0 : MCHUNK;
#pragma omp for schedule(static)
            for (int b = 0; b < blocks; b++) {
                if (!wf) continue;
                const int n0 = b * NB, nb = N - n0 < NB ? N - n0 : NB;
                for (int j = 0; j < nb; j++) widen(n0 + j, K, wf + j * K);
                const float* xm = x + (size_t)m0 * K;
                float* om = out + (size_t)m0 * N;
                switch (nb) {
                    case 4: rows<4>(xm, wf, mc, K, N, n0, scale, bias, om); break;
                    case 3: rows<3>(xm, wf, mc, K, N, n0, scale, bias, om); break;
                    case 2: rows<2>(xm, wf, mc, K, N, n0, scale, bias, om); break;
                    default: rows<1>(xm, wf, mc, K, N, n0, scale, bias, om); break;
                }
            }
        }
        free(wf);
    }
    return failed;
}

}  // namespace

// Return 0 on success, 1 when K is not a multiple of 8 (int8) or 32 (4-bit), 2 when the scratch buffer cannot
// be allocated.
extern "C" int danlu_w8_linear(const float* x, const int8_t* w, const float* scale, const float* bias, float* out,
                               int M, int N, int K, int threads) {
    if (K % 8) return 1;
    return linear(x, WidenInt8{w}, scale, bias, out, M, N, K, threads);
}

namespace {

// R activation rows (quantized) against C weight rows n0.. of 4-bit groups: each group's codes are unpacked once
// for the R rows. Output (m, n) = sum over groups, in order, of d * dx * (xq . q), then + sum of mn * sum(x).
template <int R, int C>
void q4_tile(const int8_t* xq, const float* xs, const uint8_t* w, const uint16_t* d, const uint16_t* mn,
             const float* bias, float* out, int N, int K, int n0) {
    const int groups = K / 32;
    const __m128i low = _mm_set1_epi8(0x0F);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[R][C];
    float offsets[R][C];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) acc[i][j] = _mm256_setzero_ps(), offsets[i][j] = 0.0f;
    for (int g = 0; g < groups; g++) {
        __m256i q[C];
        float step[C], off[C];
        for (int j = 0; j < C; j++) {
            const size_t n = (size_t)(n0 + j);
            __m128i bytes = _mm_loadu_si128((const __m128i*)(w + n * (K / 2) + g * 16));
            q[j] = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), low), _mm_and_si128(bytes, low));
            step[j] = _cvtsh_ss(d[n * groups + g]);
            off[j] = _cvtsh_ss(mn[n * groups + g]);
        }
        for (int i = 0; i < R; i++) {
            const __m256i xv = _mm256_load_si256((const __m256i*)(xq + (size_t)i * K + g * 32));
            const float dx = xs[2 * ((size_t)i * groups + g)], sum = xs[2 * ((size_t)i * groups + g) + 1];
            for (int j = 0; j < C; j++) {
                __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], xv), ones);
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(step[j] * dx), _mm256_cvtepi32_ps(dot), acc[i][j]);
                offsets[i][j] = fmaf(off[j], sum, offsets[i][j]);  // explicit: the same rounding in every tile
            }
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) {
            const size_t n = (size_t)(n0 + j);
            const float v = hsum(acc[i][j]) + offsets[i][j];
            out[(size_t)i * N + n] = bias ? v + bias[n] : v;
        }
}

template <int C>
void q4_rows(const int8_t* xq, const float* xs, const uint8_t* w, const uint16_t* d, const uint16_t* mn,
             const float* bias, float* out, int M, int N, int K, int n0) {
    const int groups = K / 32;
    int m = 0;
    for (; m + 2 <= M; m += 2)
        q4_tile<2, C>(xq + (size_t)m * K, xs + 2 * (size_t)m * groups, w, d, mn, bias, out + (size_t)m * N, N, K, n0);
    if (m < M)
        q4_tile<1, C>(xq + (size_t)m * K, xs + 2 * (size_t)m * groups, w, d, mn, bias, out + (size_t)m * N, N, K, n0);
}

}  // namespace

// 4-bit: integer dot products, as llama.cpp does. Each activation row is quantized per group of 32 to int8
// (step dx = max|x| / 127) once per call; a weight group then costs one maddubs + madd over its 32 codes:
//   sum_k x_k (d q_k + mn) ~= d dx sum_k xq_k q_k + mn sum_k x_k.
// Every output is summed group by group in the same order for any M, so rows stay batch-invariant.
extern "C" int danlu_q4_linear(const float* x, const uint8_t* w, const uint16_t* d, const uint16_t* mn,
                               const float* bias, float* out, int M, int N, int K, int threads) {
    if (K % 32) return 1;
    const int groups = K / 32;
    int8_t* xq = (int8_t*)aligned_alloc(32, (size_t)M * K + 32);
    float* xs = (float*)malloc(sizeof(float) * 2 * (size_t)M * groups);  // dx, then sum x, per group
    if (!xq || !xs) { free(xq); free(xs); return 2; }
    for (int m = 0; m < M; m++)
        for (int g = 0; g < groups; g++) {
            const float* src = x + (size_t)m * K + g * 32;
            float amax = 0.0f, sum = 0.0f;
            for (int k = 0; k < 32; k++) { amax = fmaxf(amax, fabsf(src[k])); sum += src[k]; }
            const float dx = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            for (int k = 0; k < 32; k++) xq[(size_t)m * K + g * 32 + k] = (int8_t)nearbyintf(src[k] * inv);
            xs[2 * ((size_t)m * groups + g)] = dx;
            xs[2 * ((size_t)m * groups + g) + 1] = sum;
        }
    const int blocks = (N + NB - 1) / NB;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int b = 0; b < blocks; b++) {
        const int n0 = b * NB, nb = N - n0 < NB ? N - n0 : NB;
        for (int m0 = 0; m0 < M; m0 += MCHUNK) {
            const int mc = M - m0 < MCHUNK ? M - m0 : MCHUNK;
            const int8_t* xm = xq + (size_t)m0 * K;
            const float* sm = xs + 2 * (size_t)m0 * groups;
            float* om = out + (size_t)m0 * N;
            switch (nb) {
                case 4: q4_rows<4>(xm, sm, w, d, mn, bias, om, mc, N, K, n0); break;
                case 3: q4_rows<3>(xm, sm, w, d, mn, bias, om, mc, N, K, n0); break;
                case 2: q4_rows<2>(xm, sm, w, d, mn, bias, om, mc, N, K, n0); break;
                default: q4_rows<1>(xm, sm, w, d, mn, bias, om, mc, N, K, n0); break;
            }
        }
    }
    free(xq);
    free(xs);
    return 0;
}

// The residual add and RMSNorm of a decode step in one pass: h += delta (when delta is given), then
// out = h / sqrt(mean(h^2) + eps) * w, row by row (M rows of K floats, K a multiple of 8). Each row is
// summed in the same order whatever M is.
extern "C" int danlu_add_rms_norm(float* h, const float* delta, const float* w, float eps, float* out, int M, int K) {
    if (K % 8) return 1;
    for (int m = 0; m < M; m++) {
        float* row = h + (size_t)m * K;
        __m256 sq = _mm256_setzero_ps();
        for (int k = 0; k < K; k += 8) {
            __m256 v = _mm256_loadu_ps(row + k);
            if (delta) {
                v = _mm256_add_ps(v, _mm256_loadu_ps(delta + (size_t)m * K + k));
                _mm256_storeu_ps(row + k, v);
            }
            sq = _mm256_fmadd_ps(v, v, sq);
        }
        const __m256 r = _mm256_set1_ps(1.0f / sqrtf(hsum(sq) / K + eps));
        for (int k = 0; k < K; k += 8)
            _mm256_storeu_ps(out + (size_t)m * K + k,
                             _mm256_mul_ps(_mm256_loadu_ps(w + k), _mm256_mul_ps(_mm256_loadu_ps(row + k), r)));
    }
    return 0;
}
