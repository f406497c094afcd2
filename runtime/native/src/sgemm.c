/* float32 GEMM with the bias and the fused activation (a clamp) in its output stage: the float
 * CONV_2D's C[M][N] = A[M][K] (patches or pixels, rows lda apart) . W^T + bias, clamped.
 *
 * W [N][K] is packed once (prepare) into panels of NR columns, [N/NR][K][NR], zero-padded to whole
 * panels, so the micro-kernel reads NR consecutive weights per depth step. Each variant has one
 * register-blocked micro-kernel of MR rows x NR columns (AVX-512 8 x 32, AVX2 + FMA 6 x 16, NEON 8 x 8,
 * portable C 4 x 16); partial tiles go through a zero-padded copy, except with AVX-512, whose edge
 * tiles repeat a row and mask their stores instead. Work is split over threads by row blocks; inside a
 * block, the loop runs panel by panel so a panel stays in cache across its rows, or, with AVX-512 and
 * packed weights that fit in L2, row block by row block so each output row is written whole. */
#include <stdlib.h>
#include <string.h>

#include "native.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EDGEQ_X86 1
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#define MAX_MR 8
#define MAX_NR 32

/* c[r][0..NR) = clamp(bias + sum_p a[r][p] * b[p][0..NR)) for r < MR, b one packed panel. */
typedef void (*tile_fn)(const float *a, size_t lda, const float *b, int k, const float *bias, float low, float high,
                        float *c, size_t ldc);

typedef struct {
    int mr, nr;
    tile_fn tile;
} sgemm_kernel;

static void tile_portable(const float *a, size_t lda, const float *b, int k, const float *bias, float low, float high,
                          float *c, size_t ldc) {
    float acc[4][16];
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < 16; j++) acc[r][j] = 0.0f;
    for (int p = 0; p < k; p++) {
        const float *bp = b + 16 * (size_t)p;
        for (int r = 0; r < 4; r++) {
            const float ar = a[r * lda + p];
            for (int j = 0; j < 16; j++) acc[r][j] += ar * bp[j];
        }
    }
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < 16; j++) {
            float v = acc[r][j] + (bias ? bias[j] : 0.0f);
            v = v < low ? low : v;
            c[r * ldc + j] = v > high ? high : v;
        }
}

#if defined(EDGEQ_X86)
/* The AVX-512 tile for any edge, of MR = 8 or 7 rows (7 where a GEMM's rows are a multiple of 7 and not
 * of 8, as every row of MobileNetV2's 112, 56, 28, 14 and 7 pixel wide layers is) and HALVES = 2 or 1
 * sixteen-column halves: `rows` <= MR (missing rows repeat the last one, which is computed and stored
 * twice over itself) and `cols` <= 16 * HALVES (masked stores). Whole tiles go through the same code,
 * so there is no copy out of a buffer. Always inlined with constant MR and HALVES, so the loops over
 * rows and halves unroll and the accumulators live in registers: one kernel per tile shape below. */
__attribute__((target("avx512f"), always_inline)) static inline void edge_tile_avx512(
    const float *a, size_t lda, int rows, const float *b, int k, const float *bias, float low, float high, float *c,
    size_t ldc, int cols, const int mr, const int halves) {
    const float *row[MAX_MR];
    float *out[MAX_MR];
    row[0] = a, out[0] = c;
#pragma GCC unroll 8
    for (int r = 1; r < mr; r++) {
        row[r] = rows > r ? row[r - 1] + lda : row[r - 1];
        out[r] = rows > r ? out[r - 1] + ldc : out[r - 1];
    }
    __m512 acc[MAX_MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int p = 0; p < k; p++) {
        const __m512 b0 = _mm512_loadu_ps(b + 32 * (size_t)p);
        const __m512 b1 = halves == 2 ? _mm512_loadu_ps(b + 32 * (size_t)p + 16) : b0;
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++) {
            const __m512 x = _mm512_set1_ps(row[r][p]);
            acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
            if (halves == 2) acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
        }
    }
    const __m512 lo = _mm512_set1_ps(low), hi = _mm512_set1_ps(high);
    const __m512 bias0 = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    const __m512 bias1 = bias && halves == 2 ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
    const int last_cols = cols - 16 * (halves - 1);
    const __mmask16 last_mask = (__mmask16)(last_cols >= 16 ? 0xffffu : (1u << last_cols) - 1);
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++) {
        const __m512 first = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(acc[r][0], bias0)));
        if (halves == 2) {
            _mm512_storeu_ps(out[r], first);
            _mm512_mask_storeu_ps(out[r] + 16, last_mask,
                                  _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(acc[r][1], bias1))));
        } else {
            _mm512_mask_storeu_ps(out[r], last_mask, first);
        }
    }
}

#define EDGE_TILE_AVX512(NAME, MR, HALVES)                                                                       \
    __attribute__((target("avx512f"))) static void NAME(const float *a, size_t lda, int rows, const float *b,    \
                                                        int k, const float *bias, float low, float high,       \
                                                        float *c, size_t ldc, int cols) {                      \
        edge_tile_avx512(a, lda, rows, b, k, bias, low, high, c, ldc, cols, MR, HALVES);                       \
    }
EDGE_TILE_AVX512(edge_tile_avx512_32x8, 8, 2)
EDGE_TILE_AVX512(edge_tile_avx512_16x8, 8, 1)
EDGE_TILE_AVX512(edge_tile_avx512_32x7, 7, 2)
EDGE_TILE_AVX512(edge_tile_avx512_16x7, 7, 1)
#undef EDGE_TILE_AVX512

/* The whole 8 x 32 tile, the kernel table's entry for AVX-512 (its GEMMs run every tile as an edge tile). */
__attribute__((target("avx512f"))) static void tile_avx512(const float *a, size_t lda, const float *b, int k,
                                                           const float *bias, float low, float high, float *c,
                                                           size_t ldc) {
    edge_tile_avx512(a, lda, 8, b, k, bias, low, high, c, ldc, 32, 8, 2);
}

typedef void (*edge_tile_fn)(const float *a, size_t lda, int rows, const float *b, int k, const float *bias,
                             float low, float high, float *c, size_t ldc, int cols);

__attribute__((target("avx2,fma"))) static void tile_avx2(const float *a, size_t lda, const float *b, int k,
                                                          const float *bias, float low, float high, float *c,
                                                          size_t ldc) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda, *a4 = a + 4 * lda, *a5 = a + 5 * lda;
    for (int p = 0; p < k; p++) {
        const __m256 b0 = _mm256_loadu_ps(b + 16 * (size_t)p), b1 = _mm256_loadu_ps(b + 16 * (size_t)p + 8);
        __m256 x;
#define SGEMM_ROW(i)                                                                                      \
    x = _mm256_broadcast_ss(a##i + p);                                                                    \
    c##i##0 = _mm256_fmadd_ps(x, b0, c##i##0);                                                            \
    c##i##1 = _mm256_fmadd_ps(x, b1, c##i##1);
        SGEMM_ROW(0) SGEMM_ROW(1) SGEMM_ROW(2) SGEMM_ROW(3) SGEMM_ROW(4) SGEMM_ROW(5)
#undef SGEMM_ROW
    }
    const __m256 lo = _mm256_set1_ps(low), hi = _mm256_set1_ps(high);
    const __m256 bias0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    const __m256 bias1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
#define SGEMM_STORE(i)                                                                                    \
    _mm256_storeu_ps(c + i * ldc, _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_add_ps(c##i##0, bias0))));      \
    _mm256_storeu_ps(c + i * ldc + 8, _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_add_ps(c##i##1, bias1))));
    SGEMM_STORE(0) SGEMM_STORE(1) SGEMM_STORE(2) SGEMM_STORE(3) SGEMM_STORE(4) SGEMM_STORE(5)
#undef SGEMM_STORE
}
#endif

#if defined(__aarch64__)
static void tile_neon(const float *a, size_t lda, const float *b, int k, const float *bias, float low, float high,
                      float *c, size_t ldc) {
    float32x4_t acc[8][2];
    for (int r = 0; r < 8; r++) acc[r][0] = acc[r][1] = vdupq_n_f32(0.0f);
    for (int p = 0; p < k; p++) {
        const float32x4_t b0 = vld1q_f32(b + 8 * (size_t)p), b1 = vld1q_f32(b + 8 * (size_t)p + 4);
        for (int r = 0; r < 8; r++) {
            const float32x4_t x = vdupq_n_f32(a[r * lda + p]);
            acc[r][0] = vfmaq_f32(acc[r][0], x, b0);
            acc[r][1] = vfmaq_f32(acc[r][1], x, b1);
        }
    }
    const float32x4_t lo = vdupq_n_f32(low), hi = vdupq_n_f32(high);
    const float32x4_t bias0 = bias ? vld1q_f32(bias) : vdupq_n_f32(0.0f);
    const float32x4_t bias1 = bias ? vld1q_f32(bias + 4) : vdupq_n_f32(0.0f);
    for (int r = 0; r < 8; r++) {
        vst1q_f32(c + r * ldc, vminq_f32(vmaxq_f32(vaddq_f32(acc[r][0], bias0), lo), hi));
        vst1q_f32(c + r * ldc + 4, vminq_f32(vmaxq_f32(vaddq_f32(acc[r][1], bias1), lo), hi));
    }
}
#endif

static sgemm_kernel kernel_for(int isa) {
    sgemm_kernel kernel = {4, 16, tile_portable};
    switch (edgeq_float_level(isa)) {
#if defined(EDGEQ_X86)
    case EDGEQ_FLOAT_AVX512:
        kernel.mr = 8, kernel.nr = 32, kernel.tile = tile_avx512;
        break;
    case EDGEQ_FLOAT_AVX2:
        kernel.mr = 6, kernel.nr = 16, kernel.tile = tile_avx2;
        break;
#endif
#if defined(__aarch64__)
    case EDGEQ_FLOAT_NEON:
        kernel.mr = 8, kernel.nr = 8, kernel.tile = tile_neon;
        break;
#endif
    default:
        break;
    }
    return kernel;
}

size_t edgeq_sgemm_packed_floats(int isa, int k, int n) {
    const int nr = kernel_for(isa).nr;
    return (size_t)((n + nr - 1) / nr) * nr * (size_t)k;
}

int edgeq_sgemm_panel_width(int isa) { return kernel_for(isa).nr; }

void edgeq_sgemm_pack(int isa, int k, int n, const float *w, float *packed) {
    const int nr = kernel_for(isa).nr, panels = (n + nr - 1) / nr;
    for (int q = 0; q < panels; q++)
        for (int p = 0; p < k; p++)
            for (int j = 0; j < nr; j++) {
                const int col = q * nr + j;
                packed[((size_t)q * k + p) * nr + j] = col < n ? w[(size_t)col * k + p] : 0.0f;
            }
}

typedef struct {
    sgemm_kernel kernel;
    int m, k, n;
    const float *a;
    size_t lda;
    const float *packed, *bias;
    float low, high;
    float *c;
    int blocks_per_task;
} sgemm_job;

/* Row blocks [first, last) of one task, panel by panel. */
static void sgemm_task(void *context, int index) {
    const sgemm_job *job = (const sgemm_job *)context;
    const int mr = job->kernel.mr, nr = job->kernel.nr, k = job->k, n = job->n;
    const int row_blocks = (job->m + mr - 1) / mr, panels = (n + nr - 1) / nr;
    const int first = index * job->blocks_per_task;
    const int last = first + job->blocks_per_task < row_blocks ? first + job->blocks_per_task : row_blocks;
    float tile[MAX_MR * MAX_NR];
    for (int q = 0; q < panels; q++) {
        const float *panel = job->packed + (size_t)q * k * nr;
        const float *bias = job->bias ? job->bias + (size_t)q * nr : NULL;
        const int col0 = q * nr, cols = n - col0 < nr ? n - col0 : nr;
        for (int block = first; block < last; block++) {
            const int row0 = block * mr, rows = job->m - row0 < mr ? job->m - row0 : mr;
            const float *a = job->a + (size_t)row0 * job->lda;
            float *c = job->c + (size_t)row0 * n + col0;
            if (rows == mr && cols == nr) {
                job->kernel.tile(a, job->lda, panel, k, bias, job->low, job->high, c, (size_t)n);
                continue;
            }
            /* A partial tile lands in a buffer and its valid part is copied out: columns past the end
             * are zero weights; a block of fewer rows runs one kernel call per row with lda and ldc 0,
             * every kernel row reading (and writing) that one row. */
            if (rows == mr) {
                job->kernel.tile(a, job->lda, panel, k, bias, job->low, job->high, tile, (size_t)nr);
            } else {
                for (int r = 0; r < rows; r++)
                    job->kernel.tile(a + (size_t)r * job->lda, 0, panel, k, bias, job->low, job->high,
                                     tile + (size_t)r * nr, 0);
            }
            for (int r = 0; r < rows; r++) memcpy(c + (size_t)r * n, tile + (size_t)r * nr, sizeof(float) * cols);
        }
    }
}

/* Packed weights up to this size stay in L2 while a row block runs across all its panels, so each
 * output row is written whole before the next; larger ones run panel by panel. */
#define ROW_MAJOR_MAX_PACKED_BYTES (512 * 1024)

#if defined(EDGEQ_X86)
/* sgemm_task for AVX-512: every tile, whole or at an edge, in one call without a copy. */
static void sgemm_task_avx512(void *context, int index) {
    const sgemm_job *job = (const sgemm_job *)context;
    const int k = job->k, n = job->n, m = job->m, mr = job->kernel.mr;
    const int row_blocks = (m + mr - 1) / mr, panels = (n + 31) / 32;
    const int first = index * job->blocks_per_task;
    const int last = first + job->blocks_per_task < row_blocks ? first + job->blocks_per_task : row_blocks;
    const int row_major = (size_t)panels * k * 32 * sizeof(float) <= ROW_MAJOR_MAX_PACKED_BYTES;
    const int outer = row_major ? last - first : panels, inner = row_major ? panels : last - first;
    for (int i = 0; i < outer; i++)
        for (int j = 0; j < inner; j++) {
            const int block = first + (row_major ? i : j), q = row_major ? j : i;
            const int row0 = block * mr, rows = m - row0 < mr ? m - row0 : mr;
            const int col0 = q * 32, cols = n - col0 < 32 ? n - col0 : 32;
            const float *panel = job->packed + (size_t)q * k * 32;
            const float *bias = job->bias ? job->bias + col0 : NULL;
            const edge_tile_fn tile = mr == 8 ? (cols > 16 ? edge_tile_avx512_32x8 : edge_tile_avx512_16x8)
                                              : (cols > 16 ? edge_tile_avx512_32x7 : edge_tile_avx512_16x7);
            tile(job->a + (size_t)row0 * job->lda, job->lda, rows, panel, k, bias, job->low, job->high,
                 job->c + (size_t)row0 * n + col0, (size_t)n, cols);
        }
}
#endif

#define PARALLEL_MIN_MACS 2000000LL

int edgeq_sgemm(int isa, int m, int k, int n, const float *a, size_t lda, const float *packed, const float *bias,
                float low, float high, float *c, int threads) {
    if (!edgeq_isa_supported(isa) || m < 0 || k < 1 || n < 1) return -1;
    sgemm_job job = {kernel_for(isa), m, k, n, a, lda, packed, bias, low, high, c, 1};
#if defined(EDGEQ_X86)
    if (job.kernel.tile == tile_avx512 && m % 8 && m % 7 == 0) job.kernel.mr = 7; /* no repeated rows */
#endif
    const int row_blocks = (m + job.kernel.mr - 1) / job.kernel.mr;
    if ((long long)m * k * n < PARALLEL_MIN_MACS || threads < 1) threads = 1;
    if (threads > row_blocks) threads = row_blocks > 0 ? row_blocks : 1;
    /* Several tasks per thread: one whose core is taken for a while leaves its tasks to the others. */
    const int wanted = threads > 1 ? threads * 4 : 1;
    job.blocks_per_task = (row_blocks + wanted - 1) / wanted;
    const int tasks = job.blocks_per_task ? (row_blocks + job.blocks_per_task - 1) / job.blocks_per_task : 0;
    void (*task)(void *, int) = sgemm_task;
#if defined(EDGEQ_X86)
    if (job.kernel.tile == tile_avx512) task = sgemm_task_avx512;
#endif
    edgeq_parallel_for(tasks, threads, task, &job);
    return 0;
}

/* -- CONV_2D: im2col a band at a time ------------------------------------------------------------ */

/* Patches per band: about this many bytes (L2 holds them while the GEMM reads them), in whole row
 * blocks of the widest micro-kernel. */
#define BAND_BYTES (96 * 1024)

typedef struct {
    const edgeq_conv_geometry *g;
    const float *x;
    sgemm_job gemm; /* a and c unset: each band sets its own */
    int band_rows, bands_per_task;
    float *columns; /* one band of patches per task */
} conv_job;

static void conv_task(void *context, int index) {
    const conv_job *job = (const conv_job *)context;
    const size_t rows = (size_t)job->g->batch * job->g->out_h * job->g->out_w;
    const int k = job->gemm.k;
    float *columns = job->columns + (size_t)index * job->band_rows * k;
    for (int band = index * job->bands_per_task; band < (index + 1) * job->bands_per_task; band++) {
        const size_t first = (size_t)band * job->band_rows;
        if (first >= rows) break;
        const int count = rows - first < (size_t)job->band_rows ? (int)(rows - first) : job->band_rows;
        edgeq_im2col_rows_f32(job->g, job->x, 0.0f, first, (size_t)count, columns);
        sgemm_job gemm = job->gemm;
        gemm.m = count, gemm.a = columns, gemm.lda = (size_t)k, gemm.c = job->gemm.c + first * gemm.n;
        gemm.blocks_per_task = (count + gemm.kernel.mr - 1) / gemm.kernel.mr;
#if defined(EDGEQ_X86)
        if (gemm.kernel.tile == tile_avx512) {
            sgemm_task_avx512(&gemm, 0);
            continue;
        }
#endif
        sgemm_task(&gemm, 0);
    }
}

int edgeq_conv_f32(int isa, const edgeq_conv_geometry *g, const float *x, const float *packed, const float *bias,
                   float low, float high, float *out, int threads) {
    const int k = g->k_h * g->k_w * g->in_c, n = g->out_c;
    if (!edgeq_isa_supported(isa) || k < 1 || n < 1 || g->batch < 0) return -1;
    const size_t rows = (size_t)g->batch * g->out_h * g->out_w;
    conv_job job = {g, x, {kernel_for(isa), 0, k, n, NULL, 0, packed, bias, low, high, out, 1}, 0, 0, NULL};
    const int block = 8; /* a multiple of every micro-kernel's height */
    int band_rows = (int)(BAND_BYTES / (sizeof(float) * (size_t)k)) / block * block;
    if (band_rows < block) band_rows = block;
    job.band_rows = band_rows;
    const long long bands = (long long)((rows + band_rows - 1) / band_rows);
    if (bands == 0) return 0;
    if ((long long)rows * k * n < PARALLEL_MIN_MACS || threads < 1) threads = 1;
    if (threads > bands) threads = (int)bands;
    job.bands_per_task = (int)((bands + threads - 1) / threads);
    const int tasks = (int)((bands + job.bands_per_task - 1) / job.bands_per_task);
    job.columns = (float *)malloc(sizeof(float) * (size_t)tasks * band_rows * k);
    if (!job.columns) return -2;
    edgeq_parallel_for(tasks, threads, conv_task, &job);
    free(job.columns);
    return 0;
}
