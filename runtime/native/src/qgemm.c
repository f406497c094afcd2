/* int8 GEMM and convolution: u8/s8 activations x s8 weights -> int32 -> the output stage -> int8.
 *
 * Weights are packed once (prepare) as [column blocks of 16][ceil(K/4)][16][4]: for every group of
 * four depth entries, 16 columns of 4 consecutive bytes, the layout of the dot-product instructions
 * (vpdpbusd, sdot) that sum four byte products into each 32-bit lane. Columns are padded to a
 * multiple of 32 and depth to a multiple of 4 with zero weights.
 *
 * Activations go through a small per-thread buffer of patch rows (an im2col of a few dozen output
 * pixels at a time, never the whole patch matrix), padded with zeros to the packed depth. x86's
 * vpdpbusd multiplies unsigned by signed bytes, so there the buffer holds x + 128 (x ^ 0x80) and the
 * bias folds in -128 * the column's weight sum (prepare does that, edgeq_isa_input_shift tells by
 * how much). Each variant has one register-blocked micro-kernel over MR rows x NR columns. */
#include <stdlib.h>
#include <string.h>

#include "native.h"
#include "output_stage.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define EDGEQ_HAVE_AMX 1
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

static inline uint32_t load_u32(const void *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

typedef void (*copy_fn)(uint8_t *dst, const int8_t *src, size_t count, uint8_t flip);
struct conv_job;
/* Patch rows [row0, row0 + rows) of the convolution into buf. */
typedef void (*fill_fn)(const struct conv_job *job, int row0, int rows, uint8_t *buf);
typedef void (*tile_fn)(const uint8_t *a, size_t lda, const int8_t *w, size_t k4, int32_t *acc);

typedef struct {
    int mr, nr;          /* rows and columns of one micro-kernel call */
    int input_shift;     /* 128 when the kernel reads activations as unsigned bytes (x ^ 0x80) */
    tile_fn tile;        /* acc[MR][NR] = a[MR][4*k4] . w (NR columns from the block at w) */
    edgeq_stage_fn stage;
    fill_fn fill;        /* the patch-row fill with the variant's copy, or NULL for the portable one */
    tile_fn tile_row;    /* acc[1][NR] for one row, or NULL: the last rows then take a whole tile */
} isa_kernels;

/* -- portable C ------------------------------------------------------------------------------ */

static void tile_portable(const uint8_t *a, size_t lda, const int8_t *w, size_t k4, int32_t *acc) {
    for (int r = 0; r < 4; r++) {
        int32_t sums[16] = {0};
        const uint8_t *row = a + r * lda;
        for (size_t k = 0; k < k4; k++) {
            const int8_t *wk = w + 64 * k;
            const int32_t a0 = row[4 * k], a1 = row[4 * k + 1], a2 = row[4 * k + 2], a3 = row[4 * k + 3];
            for (int j = 0; j < 16; j++)
                sums[j] += a0 * wk[4 * j] + a1 * wk[4 * j + 1] + a2 * wk[4 * j + 2] + a3 * wk[4 * j + 3];
        }
        memcpy(acc + 16 * r, sums, sizeof(sums));
    }
}

static void stage_portable(const edgeq_output_stage *stage, const int32_t *acc, int acc_stride, int rows, int col0,
                           int count, int8_t *out, size_t out_stride) {
    for (int r = 0; r < rows; r++) output_stage_row(stage, acc + r * acc_stride, col0, count, out + r * out_stride);
}

/* -- x86-64 ----------------------------------------------------------------------------------- */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

/* AVX2: no byte dot product; bytes are widened to int16 and vpmaddwd sums pairs into int32 lanes,
 * exact (vpmaddubsw would saturate u8 x s8 pairs at int16). Each 16 bytes of a packed group
 * (4 columns x 4 depth) widen to one register; lanes hold pair sums, added pairwise at the end. */
__attribute__((target("avx2"))) static void tile_avx2(const uint8_t *a, size_t lda, const int8_t *w, size_t k4,
                                                      int32_t *acc) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c03 = c00;
    __m256i c10 = c00, c11 = c00, c12 = c00, c13 = c00;
    const uint8_t *a1 = a + lda;
    for (size_t k = 0; k < k4; k++) {
        const int8_t *wk = w + 64 * k;
        const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)wk));
        const __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wk + 16)));
        const __m256i b2 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wk + 32)));
        const __m256i b3 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wk + 48)));
        __m256i x = _mm256_cvtepu8_epi16(_mm_set1_epi32((int)load_u32(a + 4 * k)));
        c00 = _mm256_add_epi32(c00, _mm256_madd_epi16(x, b0));
        c01 = _mm256_add_epi32(c01, _mm256_madd_epi16(x, b1));
        c02 = _mm256_add_epi32(c02, _mm256_madd_epi16(x, b2));
        c03 = _mm256_add_epi32(c03, _mm256_madd_epi16(x, b3));
        x = _mm256_cvtepu8_epi16(_mm_set1_epi32((int)load_u32(a1 + 4 * k)));
        c10 = _mm256_add_epi32(c10, _mm256_madd_epi16(x, b0));
        c11 = _mm256_add_epi32(c11, _mm256_madd_epi16(x, b1));
        c12 = _mm256_add_epi32(c12, _mm256_madd_epi16(x, b2));
        c13 = _mm256_add_epi32(c13, _mm256_madd_epi16(x, b3));
    }
    /* Lanes are [c0 p01, c0 p23, c1 p01, c1 p23 | c2 .., c3 ..]; hadd of two such registers gives
     * [c0 c1 c4 c5 | c2 c3 c6 c7], and the 64-bit permute (0, 2, 1, 3) puts them in order. */
    _mm256_storeu_si256((__m256i *)acc, _mm256_permute4x64_epi64(_mm256_hadd_epi32(c00, c01), 0xD8));
    _mm256_storeu_si256((__m256i *)(acc + 8), _mm256_permute4x64_epi64(_mm256_hadd_epi32(c02, c03), 0xD8));
    _mm256_storeu_si256((__m256i *)(acc + 16), _mm256_permute4x64_epi64(_mm256_hadd_epi32(c10, c11), 0xD8));
    _mm256_storeu_si256((__m256i *)(acc + 24), _mm256_permute4x64_epi64(_mm256_hadd_epi32(c12, c13), 0xD8));
}

/* The folded output stage, 4 columns per step. AVX2 lacks 64-bit multiplies, arithmetic shifts and
 * min/max: the wrapping product is built from 32-bit halves, the shift from a logical one on the
 * one's complement of negative values (floor division either way), the clamp from compares. */
__attribute__((target("avx2"))) static void stage_avx2(const edgeq_output_stage *stage, const int32_t *acc,
                                                       int acc_stride, int rows, int col0, int count, int8_t *out,
                                                       size_t out_stride) {
    int j = 0;
    if (stage->kind == EDGEQ_STAGE_FOLDED) {
        const __m256i low = _mm256_set1_epi64x(stage->low), high = _mm256_set1_epi64x(stage->high);
        const __m256i zero = _mm256_setzero_si256();
        const __m256i first_bytes = _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                     0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
        for (; j + 4 <= count; j += 4) {
            const int c = col0 + j;
            const __m256i m = _mm256_loadu_si256((const __m256i *)(stage->multiplier + c));
            const __m256i m_high = _mm256_srli_epi64(m, 32);
            const __m256i bias = _mm256_loadu_si256((const __m256i *)(stage->bias + c));
            const __m256i threshold = _mm256_loadu_si256((const __m256i *)(stage->threshold + c));
            const __m256i correction = _mm256_loadu_si256((const __m256i *)(stage->correction + c));
            const __m256i shift = _mm256_loadu_si256((const __m256i *)(stage->shift + c));
            for (int r = 0; r < rows; r++) {
                const __m256i a = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(acc + r * acc_stride + j)));
                const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), m),
                                                       _mm256_mul_epu32(a, m_high));
                __m256i t = _mm256_add_epi64(_mm256_mul_epu32(a, m), _mm256_slli_epi64(cross, 32));
                t = _mm256_add_epi64(t, bias);
                t = _mm256_sub_epi64(t, _mm256_and_si256(_mm256_cmpgt_epi64(threshold, t), correction));
                const __m256i sign = _mm256_cmpgt_epi64(zero, t);
                t = _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(t, sign), shift), sign);
                t = _mm256_blendv_epi8(t, low, _mm256_cmpgt_epi64(low, t));
                t = _mm256_blendv_epi8(t, high, _mm256_cmpgt_epi64(t, high));
                const __m256i bytes = _mm256_shuffle_epi8(t, first_bytes);
                const uint32_t packed = (uint32_t)(uint16_t)_mm256_extract_epi16(bytes, 0) |
                                        ((uint32_t)(uint16_t)_mm256_extract_epi16(bytes, 8) << 16);
                memcpy(out + r * out_stride + j, &packed, 4);
            }
        }
    }
    for (int r = 0; r < rows && j < count; r++)
        output_stage_row(stage, acc + r * acc_stride + j, col0 + j, count - j, out + r * out_stride + j);
}

#define DPBUSD_ROW(row, x, c0, c1)                                 \
    x = _mm256_set1_epi32((int)load_u32((row) + 4 * k));           \
    c0 = _mm256_dpbusd_avx_epi32(c0, x, b0);                        \
    c1 = _mm256_dpbusd_avx_epi32(c1, x, b1)

/* AVX-VNNI: vpdpbusd on 256-bit registers, 4 rows x 16 columns. */
__attribute__((target("avx2,avxvnni"))) static void tile_avxvnni(const uint8_t *a, size_t lda, const int8_t *w,
                                                                 size_t k4, int32_t *acc) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00;
    __m256i c20 = c00, c21 = c00, c30 = c00, c31 = c00, x;
    const uint8_t *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda;
    for (size_t k = 0; k < k4; k++) {
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)(w + 64 * k));
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(w + 64 * k + 32));
        DPBUSD_ROW(a, x, c00, c01);
        DPBUSD_ROW(a1, x, c10, c11);
        DPBUSD_ROW(a2, x, c20, c21);
        DPBUSD_ROW(a3, x, c30, c31);
    }
    _mm256_storeu_si256((__m256i *)acc, c00);
    _mm256_storeu_si256((__m256i *)(acc + 8), c01);
    _mm256_storeu_si256((__m256i *)(acc + 16), c10);
    _mm256_storeu_si256((__m256i *)(acc + 24), c11);
    _mm256_storeu_si256((__m256i *)(acc + 32), c20);
    _mm256_storeu_si256((__m256i *)(acc + 40), c21);
    _mm256_storeu_si256((__m256i *)(acc + 48), c30);
    _mm256_storeu_si256((__m256i *)(acc + 56), c31);
}

#define DPBUSD512_ROW(row, x, c0, c1)                              \
    x = _mm512_set1_epi32((int)load_u32((row) + 4 * k));           \
    c0 = _mm512_dpbusd_epi32(c0, x, b0);                            \
    c1 = _mm512_dpbusd_epi32(c1, x, b1)

/* AVX512-VNNI: 8 rows x 32 columns (two blocks of 16) in 16 zmm accumulators: each pair of weight
 * loads feeds 16 vpdpbusd, and 16 independent accumulators cover the instruction's latency on both
 * of its ports (4 rows and 8 accumulators ran at two thirds of the speed). */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void tile_avx512vnni_8x32(const uint8_t *a, size_t lda,
                                                                                       const int8_t *w, size_t k4,
                                                                                       int32_t *acc) {
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    __m512i c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00, x;
    const uint8_t *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda;
    const uint8_t *a4 = a + 4 * lda, *a5 = a + 5 * lda, *a6 = a + 6 * lda, *a7 = a + 7 * lda;
    const int8_t *w1 = w + 64 * k4;
    for (size_t k = 0; k < k4; k++) {
        const __m512i b0 = _mm512_loadu_si512((const void *)(w + 64 * k));
        const __m512i b1 = _mm512_loadu_si512((const void *)(w1 + 64 * k));
        DPBUSD512_ROW(a, x, c00, c01);
        DPBUSD512_ROW(a1, x, c10, c11);
        DPBUSD512_ROW(a2, x, c20, c21);
        DPBUSD512_ROW(a3, x, c30, c31);
        DPBUSD512_ROW(a4, x, c40, c41);
        DPBUSD512_ROW(a5, x, c50, c51);
        DPBUSD512_ROW(a6, x, c60, c61);
        DPBUSD512_ROW(a7, x, c70, c71);
    }
    _mm512_storeu_si512((void *)acc, c00);
    _mm512_storeu_si512((void *)(acc + 16), c01);
    _mm512_storeu_si512((void *)(acc + 32), c10);
    _mm512_storeu_si512((void *)(acc + 48), c11);
    _mm512_storeu_si512((void *)(acc + 64), c20);
    _mm512_storeu_si512((void *)(acc + 80), c21);
    _mm512_storeu_si512((void *)(acc + 96), c30);
    _mm512_storeu_si512((void *)(acc + 112), c31);
    _mm512_storeu_si512((void *)(acc + 128), c40);
    _mm512_storeu_si512((void *)(acc + 144), c41);
    _mm512_storeu_si512((void *)(acc + 160), c50);
    _mm512_storeu_si512((void *)(acc + 176), c51);
    _mm512_storeu_si512((void *)(acc + 192), c60);
    _mm512_storeu_si512((void *)(acc + 208), c61);
    _mm512_storeu_si512((void *)(acc + 224), c70);
    _mm512_storeu_si512((void *)(acc + 240), c71);
}

/* One row x 32 columns, for the rows past the last whole 8-row tile (a 7x7 image has 49 rows: a whole
 * ninth tile would compute 8 rows for one, with the same weight loads and 8 times the multiply-adds). */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void tile_avx512vnni_1x32(const uint8_t *a, size_t lda,
                                                                                       const int8_t *w, size_t k4,
                                                                                       int32_t *acc) {
    (void)lda;
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, d0 = c0, d1 = c0;
    const int8_t *w1 = w + 64 * k4;
    size_t k = 0;
    /* two accumulators per block alternate over depth, to cover vpdpbusd's latency */
    for (; k + 2 <= k4; k += 2) {
        const __m512i x0 = _mm512_set1_epi32((int)load_u32(a + 4 * k));
        const __m512i x1 = _mm512_set1_epi32((int)load_u32(a + 4 * k + 4));
        c0 = _mm512_dpbusd_epi32(c0, x0, _mm512_loadu_si512((const void *)(w + 64 * k)));
        c1 = _mm512_dpbusd_epi32(c1, x0, _mm512_loadu_si512((const void *)(w1 + 64 * k)));
        d0 = _mm512_dpbusd_epi32(d0, x1, _mm512_loadu_si512((const void *)(w + 64 * k + 64)));
        d1 = _mm512_dpbusd_epi32(d1, x1, _mm512_loadu_si512((const void *)(w1 + 64 * k + 64)));
    }
    if (k < k4) {
        const __m512i x0 = _mm512_set1_epi32((int)load_u32(a + 4 * k));
        c0 = _mm512_dpbusd_epi32(c0, x0, _mm512_loadu_si512((const void *)(w + 64 * k)));
        c1 = _mm512_dpbusd_epi32(c1, x0, _mm512_loadu_si512((const void *)(w1 + 64 * k)));
    }
    _mm512_storeu_si512((void *)acc, _mm512_add_epi32(c0, d0));
    _mm512_storeu_si512((void *)(acc + 16), _mm512_add_epi32(c1, d1));
}

#if defined(EDGEQ_HAVE_AMX)
/* AMX (Sapphire Rapids and later): tdpbusd multiplies a 16-row x 64-byte tile of unsigned activations by
 * a 16 x 64-byte tile of signed weights in exactly the packed layout (16 groups of 4 depth entries of 16
 * columns) and adds four-byte dot products into 16 x 16 int32 lanes, without saturation, as vpdpbusd:
 * the same integers, about 8 times the multiply-adds per cycle. Tiles 0-3 hold 32 rows x 32 columns of
 * accumulators, 4-5 the two 16-row activation tiles, 6-7 the two 16-column weight tiles. */
typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
} amx_config;

/* Static data: GCC 12 drops stores into a local configuration as dead, unaware that ldtilecfg reads them. */
static const amx_config amx_tiles = {1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

__attribute__((target("amx-tile,amx-int8"))) static void amx_configure(void) { _tile_loadconfig(&amx_tiles); }

__attribute__((target("amx-tile"))) static void amx_release(void) { _tile_release(); }

/* acc[32][32] (rows 32 apart) = a[32 rows, lda apart] . the two 16-column blocks at w, 64 bytes of depth
 * a step: lda is a multiple of 64 with zeros past the depth, and the weights read past a block's last
 * group meet those zeros (the packed buffer has a step of slack at its end). */
__attribute__((target("amx-tile,amx-int8"))) static void tile_amx_32x32(const uint8_t *a, size_t lda, const int8_t *w,
                                                                       size_t k4, int32_t *acc) {
    const int8_t *w1 = w + 64 * k4;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (size_t k = 0; k < k4; k += 16) {
        _tile_loadd(4, a + 4 * k, lda);
        _tile_loadd(5, a + 16 * lda + 4 * k, lda);
        _tile_loadd(6, w + 64 * k, 64);
        _tile_loadd(7, w1 + 64 * k, 64);
        _tile_dpbusd(0, 4, 6);
        _tile_dpbusd(1, 4, 7);
        _tile_dpbusd(2, 5, 6);
        _tile_dpbusd(3, 5, 7);
    }
    _tile_stored(0, acc, 128);
    _tile_stored(1, acc + 16, 128);
    _tile_stored(2, acc + 16 * 32, 128);
    _tile_stored(3, acc + 16 * 32 + 16, 128);
}
#endif

/* The im2col copy in masked 64-byte steps: a first convolution's filter row of 7 x 3 bytes is one load,
 * one xor and one store, where the portable form takes a loop of 8-byte words. */
__attribute__((target("avx512f,avx512bw"))) static inline void copy_avx512(uint8_t *dst, const int8_t *src, size_t count,
                                                                    uint8_t flip) {
    const __m512i flips = _mm512_set1_epi8((char)flip);
    size_t i = 0;
    for (; i + 64 <= count; i += 64)
        _mm512_storeu_si512(dst + i, _mm512_xor_si512(_mm512_loadu_si512(src + i), flips));
    if (i < count) {
        const __mmask64 mask = ((__mmask64)1 << (count - i)) - 1; /* count - i < 64 */
        _mm512_mask_storeu_epi8(dst + i, mask, _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, src + i), flips));
    }
}

/* The folded output stage, 8 columns per step with masked loads for the tail (a compiler-vectorized
 * loop leaves rows of 16 or 32 columns to its scalar epilogue). Wrapping 64-bit products, as the
 * portable form. */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) static void stage_avx512(
    const edgeq_output_stage *stage, const int32_t *acc, int acc_stride, int rows, int col0, int count, int8_t *out,
    size_t out_stride) {
    if (edgeq_stage_avx512_narrow(stage, acc, acc_stride, rows, col0, count, out, out_stride)) return;
    if (stage->kind != EDGEQ_STAGE_FOLDED) {
        stage_portable(stage, acc, acc_stride, rows, col0, count, out, out_stride);
        return;
    }
    const __m512i low = _mm512_set1_epi64(stage->low), high = _mm512_set1_epi64(stage->high);
    for (int j = 0; j < count; j += 8) {
        const int c = col0 + j, left = count - j;
        const __mmask8 mask = left >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << left) - 1);
        const __m512i m = _mm512_maskz_loadu_epi64(mask, stage->multiplier + c);
        const __m512i bias = _mm512_maskz_loadu_epi64(mask, stage->bias + c);
        const __m512i threshold = _mm512_maskz_loadu_epi64(mask, stage->threshold + c);
        const __m512i correction = _mm512_maskz_loadu_epi64(mask, stage->correction + c);
        const __m512i shift = _mm512_maskz_loadu_epi64(mask, stage->shift + c);
        for (int r = 0; r < rows; r++) {
            const __m512i a = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(mask, acc + r * acc_stride + j));
            __m512i t = _mm512_add_epi64(_mm512_mullo_epi64(a, m), bias);
            t = _mm512_mask_sub_epi64(t, _mm512_cmplt_epi64_mask(t, threshold), t, correction);
            t = _mm512_min_epi64(_mm512_max_epi64(_mm512_srav_epi64(t, shift), low), high);
            _mm512_mask_cvtepi64_storeu_epi8(out + r * out_stride + j, mask, t);
        }
    }
}
#endif

/* -- aarch64 ---------------------------------------------------------------------------------- */
#if defined(__aarch64__)

/* The folded output stage, 8 columns per step where their multipliers fit in int32 (TFLite's Q31
 * multiplier, shifted left only for multipliers above one): smull gives the exact int64 product, the
 * bias, the correction and the arithmetic shift (sshl by minus the shift) stay int64 as in the scalar
 * form, and the saturating narrows to int32 keep the order, so the clamp in int32 gives its result.
 * It serves stages without the 32-bit-lane constants (a multiplier above one); other columns (a wide
 * multiplier, the last few, the float-scale stage) run the scalar form. */
static inline int multipliers_fit_int32(const int64_t *multiplier, int count) {
    for (int j = 0; j < count; j++)
        if (multiplier[j] != (int64_t)(int32_t)multiplier[j]) return 0;
    return 1;
}

static inline int32x4_t folded_quad(int32x4_t a, int32x4_t m, const int64x2_t *k) {
    /* k: bias, threshold, correction, -shift, each for columns 0-1 then 2-3 */
    int64x2_t low = vaddq_s64(vmull_s32(vget_low_s32(a), vget_low_s32(m)), k[0]);
    int64x2_t high = vaddq_s64(vmull_high_s32(a, m), k[1]);
    low = vsubq_s64(low, vandq_s64(vreinterpretq_s64_u64(vcltq_s64(low, k[2])), k[4]));
    high = vsubq_s64(high, vandq_s64(vreinterpretq_s64_u64(vcltq_s64(high, k[3])), k[5]));
    return vcombine_s32(vqmovn_s64(vshlq_s64(low, k[6])), vqmovn_s64(vshlq_s64(high, k[7])));
}

/* The folded stage in 32-bit lanes from the constants prepare rearranged (stage->lanes, laid out by
 * edgeq_stage_lanes_prepare in output_stage_avx512.c): per group of 16 columns, 2M' and K2 of the even
 * columns then of the odd ones (uint64), then per column the limit and R (int32). With x + 2^31 as an
 * unsigned lane (x ^ 0x80000000), umlal gives the true 2t = 2(x M' + K) modulo 2^64, whose high half is
 * u = floor(t / 2^31); the folded r is (u - [u <= limit]) >> R. ld2 splits 8 accumulators into their
 * even and odd columns, so each umlal pairs one column with its own constants, and trn2 of the even and
 * the odd products puts their high halves back in column order: GCC 12's loop is 56 instructions per row
 * of 16 columns, against 84 for the int64 products, bias, correction and shift below. */
typedef struct {
    uint64_t doubled_multiplier[2][8];
    uint64_t doubled_bias[2][8];
    int32_t limit[16];
    int32_t shift[16];
} neon_lane_group;
_Static_assert(sizeof(neon_lane_group) == EDGEQ_STAGE_LANE_GROUP_BYTES, "the layout of edgeq_stage_lanes_prepare");

/* The constants of 8 columns (half h of a group): 2M' of the even and the odd ones as uint32 lanes, K2 of
 * the even ones (columns 0, 2 then 4, 6) and the odd ones, the limits and minus the shifts in order. Named
 * registers, not arrays: GCC kept arrays of them on the stack and reloaded them every row. */
typedef struct {
    uint32x4_t m_even, m_odd;
    uint64x2_t k_even0, k_even1, k_odd0, k_odd1;
    int32x4_t limit0, limit1, right0, right1;
} neon_lane_half;

static inline neon_lane_half neon_lane_half_of(const neon_lane_group *group, int h) {
    neon_lane_half k;
    const uint64_t *m_even = group->doubled_multiplier[0] + 4 * h, *m_odd = group->doubled_multiplier[1] + 4 * h;
    const uint64_t *k_even = group->doubled_bias[0] + 4 * h, *k_odd = group->doubled_bias[1] + 4 * h;
    k.m_even = vcombine_u32(vmovn_u64(vld1q_u64(m_even)), vmovn_u64(vld1q_u64(m_even + 2)));
    k.m_odd = vcombine_u32(vmovn_u64(vld1q_u64(m_odd)), vmovn_u64(vld1q_u64(m_odd + 2)));
    k.k_even0 = vld1q_u64(k_even), k.k_even1 = vld1q_u64(k_even + 2);
    k.k_odd0 = vld1q_u64(k_odd), k.k_odd1 = vld1q_u64(k_odd + 2);
    k.limit0 = vld1q_s32(group->limit + 8 * h), k.limit1 = vld1q_s32(group->limit + 8 * h + 4);
    k.right0 = vnegq_s32(vld1q_s32(group->shift + 8 * h)), k.right1 = vnegq_s32(vld1q_s32(group->shift + 8 * h + 4));
    return k;
}

/* (u - [u <= limit]) >> R of 4 columns; the compare's all-ones lanes are -1. */
static inline int32x4_t neon_lane_round(uint32x4_t u, int32x4_t limit, int32x4_t right) {
    const int32x4_t v = vreinterpretq_s32_u32(u);
    return vshlq_s32(vaddq_s32(v, vreinterpretq_s32_u32(vcleq_s32(v, limit))), right);
}

/* 8 accumulators (in column order at a) to their results, saturated to int8. */
static inline int8x8_t neon_lane_bytes(const int32_t *a, const neon_lane_half *k) {
    const uint32x4x2_t split = vld2q_u32((const uint32_t *)a);
    const uint32x4_t sign = vdupq_n_u32(0x80000000u);
    const uint32x4_t even = veorq_u32(split.val[0], sign), odd = veorq_u32(split.val[1], sign);
    const uint64x2_t e0 = vmlal_u32(k->k_even0, vget_low_u32(even), vget_low_u32(k->m_even));
    const uint64x2_t e1 = vmlal_high_u32(k->k_even1, even, k->m_even);
    const uint64x2_t o0 = vmlal_u32(k->k_odd0, vget_low_u32(odd), vget_low_u32(k->m_odd));
    const uint64x2_t o1 = vmlal_high_u32(k->k_odd1, odd, k->m_odd);
    const int32x4_t v0 = neon_lane_round(vtrn2q_u32(vreinterpretq_u32_u64(e0), vreinterpretq_u32_u64(o0)),
                                         k->limit0, k->right0);
    const int32x4_t v1 = neon_lane_round(vtrn2q_u32(vreinterpretq_u32_u64(e1), vreinterpretq_u32_u64(o1)),
                                         k->limit1, k->right1);
    return vqmovn_s16(vcombine_s16(vqmovn_s32(v0), vqmovn_s32(v1)));
}

/* The last width (< 8) columns, or 8 that reach past a narrow row's stride: from a copy, to a copy. */
static __attribute__((noinline)) void neon_lane_columns(const neon_lane_half *k, const int32_t *a, int acc_stride,
                                                        int rows, int width, int in_row, int clamp, int8x8_t low,
                                                        int8x8_t high, int8_t *o, size_t out_stride) {
    for (int r = 0; r < rows; r++, a += acc_stride, o += out_stride) {
        int32_t copy[8] = {0};
        if (!in_row)
            for (int c = 0; c < width; c++) copy[c] = a[c];
        int8x8_t bytes = neon_lane_bytes(in_row ? a : copy, k);
        if (clamp) bytes = vmin_s8(vmax_s8(bytes, low), high);
        int8_t result[8];
        vst1_s8(result, bytes);
        for (int c = 0; c < width; c++) o[c] = result[c];
    }
}

/* The stage from stage->lanes, col0 a multiple of 16, 8 columns at a time over all rows: the constants of
 * 8 columns take 13 registers and stay in them. Columns whose 8 accumulators lie inside the row's stride
 * (all of the GEMM's tiles of 16) are read in place, the last few of a narrower row from a copy; outputs
 * past count are never stored. The saturating narrows clamp to int8, so a clamp is needed only for an
 * activation's narrower range, on bytes. */
static __attribute__((noinline)) void stage_neon_lanes(const edgeq_output_stage *stage, const int32_t *acc,
                                                       int acc_stride, int rows, int col0, int count, int8_t *out,
                                                       size_t out_stride) {
    const neon_lane_group *groups = (const neon_lane_group *)stage->lanes + col0 / 16;
    const int clamp = stage->low > -128 || stage->high < 127;
    const int8x8_t low = vdup_n_s8((int8_t)stage->low), high = vdup_n_s8((int8_t)stage->high);
    for (int j = 0; j < count; j += 8) {
        const int width = count - j < 8 ? count - j : 8;
        const neon_lane_half k = neon_lane_half_of(groups + j / 16, j / 8 % 2);
        const int32_t *a = acc + j;
        int8_t *o = out + j;
        if (width < 8 || j + 8 > acc_stride) {
            neon_lane_columns(&k, a, acc_stride, rows, width, j + 8 <= acc_stride, clamp, low, high, o, out_stride);
        } else if (clamp) {
            for (int r = 0; r < rows; r++, a += acc_stride, o += out_stride)
                vst1_s8(o, vmin_s8(vmax_s8(neon_lane_bytes(a, &k), low), high));
        } else {
            for (int r = 0; r < rows; r++, a += acc_stride, o += out_stride) vst1_s8(o, neon_lane_bytes(a, &k));
        }
    }
}

static void stage_neon(const edgeq_output_stage *stage, const int32_t *acc, int acc_stride, int rows, int col0,
                       int count, int8_t *out, size_t out_stride) {
    int j = 0;
    if (stage->kind == EDGEQ_STAGE_FOLDED && stage->lanes && col0 % 16 == 0) {
        stage_neon_lanes(stage, acc, acc_stride, rows, col0, count, out, out_stride);
        return;
    }
    if (stage->kind == EDGEQ_STAGE_FOLDED) {
        const int32x4_t low = vdupq_n_s32(stage->low), high = vdupq_n_s32(stage->high);
        for (; j + 8 <= count && multipliers_fit_int32(stage->multiplier + col0 + j, 8); j += 8) {
            const int c = col0 + j;
            int64x2_t k[2][8];
            int32x4_t m[2];
            for (int h = 0; h < 2; h++) {
                const int q = c + 4 * h;
                m[h] = vcombine_s32(vmovn_s64(vld1q_s64(stage->multiplier + q)),
                                    vmovn_s64(vld1q_s64(stage->multiplier + q + 2)));
                k[h][0] = vld1q_s64(stage->bias + q), k[h][1] = vld1q_s64(stage->bias + q + 2);
                k[h][2] = vld1q_s64(stage->threshold + q), k[h][3] = vld1q_s64(stage->threshold + q + 2);
                k[h][4] = vld1q_s64(stage->correction + q), k[h][5] = vld1q_s64(stage->correction + q + 2);
                k[h][6] = vnegq_s64(vld1q_s64(stage->shift + q)), k[h][7] = vnegq_s64(vld1q_s64(stage->shift + q + 2));
            }
            for (int r = 0; r < rows; r++) {
                const int32_t *a = acc + r * acc_stride + j;
                int32x4_t t0 = folded_quad(vld1q_s32(a), m[0], k[0]);
                int32x4_t t1 = folded_quad(vld1q_s32(a + 4), m[1], k[1]);
                t0 = vminq_s32(vmaxq_s32(t0, low), high);
                t1 = vminq_s32(vmaxq_s32(t1, low), high);
                vst1_s8(out + r * out_stride + j, vqmovn_s16(vcombine_s16(vqmovn_s32(t0), vqmovn_s32(t1))));
            }
        }
    }
    for (int r = 0; r < rows && j < count; r++)
        output_stage_row(stage, acc + r * acc_stride + j, col0 + j, count - j, out + r * out_stride + j);
}

/* sdot: signed x signed bytes, 4 rows x 16 columns; the packed group of 16 columns x 4 depth is
 * four registers whose 32-bit lanes are columns. Four groups at a time, each row's 16 activation
 * bytes are one load, and the indexed sdot takes group l's 4 bytes from lane l: 84 instructions per
 * 1024 multiply-adds instead of 96 with a broadcast load per row and group. */
#define SDOT_GROUP(l)                                                                                \
    do {                                                                                             \
        const int8_t *wk = w + 64 * (k + (l));                                                       \
        const int8x16_t b0 = vld1q_s8(wk), b1 = vld1q_s8(wk + 16), b2 = vld1q_s8(wk + 32),           \
                        b3 = vld1q_s8(wk + 48);                                                      \
        for (int r = 0; r < 4; r++) {                                                                \
            c[r][0] = vdotq_laneq_s32(c[r][0], b0, x[r], l);                                         \
            c[r][1] = vdotq_laneq_s32(c[r][1], b1, x[r], l);                                         \
            c[r][2] = vdotq_laneq_s32(c[r][2], b2, x[r], l);                                         \
            c[r][3] = vdotq_laneq_s32(c[r][3], b3, x[r], l);                                         \
        }                                                                                            \
    } while (0)

__attribute__((target("arch=armv8.2-a+dotprod"))) static void tile_neon_dotprod(const uint8_t *a, size_t lda,
                                                                                const int8_t *w, size_t k4,
                                                                                int32_t *acc) {
    int32x4_t c[4][4];
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) c[r][q] = vdupq_n_s32(0);
    size_t k = 0;
    for (; k + 4 <= k4; k += 4) {
        int8x16_t x[4];
        for (int r = 0; r < 4; r++) x[r] = vld1q_s8((const int8_t *)(a + r * lda + 4 * k));
        SDOT_GROUP(0);
        SDOT_GROUP(1);
        SDOT_GROUP(2);
        SDOT_GROUP(3);
    }
    for (; k < k4; k++) {
        const int8_t *wk = w + 64 * k;
        const int8x16_t b0 = vld1q_s8(wk), b1 = vld1q_s8(wk + 16), b2 = vld1q_s8(wk + 32), b3 = vld1q_s8(wk + 48);
        for (int r = 0; r < 4; r++) {
            const int8x16_t x = vreinterpretq_s8_u32(vdupq_n_u32(load_u32(a + r * lda + 4 * k)));
            c[r][0] = vdotq_s32(c[r][0], b0, x);
            c[r][1] = vdotq_s32(c[r][1], b1, x);
            c[r][2] = vdotq_s32(c[r][2], b2, x);
            c[r][3] = vdotq_s32(c[r][3], b3, x);
        }
    }
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) vst1q_s32(acc + 16 * r + 4 * q, c[r][q]);
}

/* One depth entry t of a packed group (16 columns, widened to int16) times row r's activation t,
 * into the row's four accumulators. */
#define SMLAL_ROW(r, t, lo, hi)                                      \
    c##r##0 = vmlal_lane_s16(c##r##0, vget_low_s16(lo), x##r, t);    \
    c##r##1 = vmlal_high_lane_s16(c##r##1, lo, x##r, t);             \
    c##r##2 = vmlal_lane_s16(c##r##2, vget_low_s16(hi), x##r, t);    \
    c##r##3 = vmlal_high_lane_s16(c##r##3, hi, x##r, t)

#define SMLAL_DEPTH(t)                                                \
    do {                                                              \
        const int16x8_t lo = vmovl_s8(vget_low_s8(group.val[t]));     \
        const int16x8_t hi = vmovl_high_s8(group.val[t]);             \
        SMLAL_ROW(0, t, lo, hi);                                      \
        SMLAL_ROW(1, t, lo, hi);                                      \
        SMLAL_ROW(2, t, lo, hi);                                      \
        SMLAL_ROW(3, t, lo, hi);                                      \
    } while (0)

static inline int16x4_t widened_activations(const uint8_t *p) {
    return vget_low_s16(vmovl_s8(vreinterpret_s8_u32(vdup_n_u32(load_u32(p)))));
}

/* Without sdot (Cortex-A72): vld4 splits a packed group into its four depth entries over 16
 * columns, widened to int16 and multiply-accumulated into int32 by activation lane. The 16
 * accumulators are named variables: as an array, GCC 12 stored them to the stack every step. */
static void tile_neon(const uint8_t *a, size_t lda, const int8_t *w, size_t k4, int32_t *acc) {
    int32x4_t c00 = vdupq_n_s32(0), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00;
    int32x4_t c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
    const uint8_t *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda;
    for (size_t k = 0; k < k4; k++) {
        const int8x16x4_t group = vld4q_s8(w + 64 * k);
        const int16x4_t x0 = widened_activations(a + 4 * k), x1 = widened_activations(a1 + 4 * k);
        const int16x4_t x2 = widened_activations(a2 + 4 * k), x3 = widened_activations(a3 + 4 * k);
        SMLAL_DEPTH(0);
        SMLAL_DEPTH(1);
        SMLAL_DEPTH(2);
        SMLAL_DEPTH(3);
    }
    vst1q_s32(acc, c00), vst1q_s32(acc + 4, c01), vst1q_s32(acc + 8, c02), vst1q_s32(acc + 12, c03);
    vst1q_s32(acc + 16, c10), vst1q_s32(acc + 20, c11), vst1q_s32(acc + 24, c12), vst1q_s32(acc + 28, c13);
    vst1q_s32(acc + 32, c20), vst1q_s32(acc + 36, c21), vst1q_s32(acc + 40, c22), vst1q_s32(acc + 44, c23);
    vst1q_s32(acc + 48, c30), vst1q_s32(acc + 52, c31), vst1q_s32(acc + 56, c32), vst1q_s32(acc + 60, c33);
}
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
static void fill_rows_avx512(const struct conv_job *job, int row0, int rows, uint8_t *buf);
#endif

static const isa_kernels *kernels_for(int isa) {
    static const isa_kernels portable = {4, 16, 128, tile_portable, stage_portable};
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const isa_kernels avx2 = {2, 16, 128, tile_avx2, stage_avx2};
    static const isa_kernels avxvnni = {4, 16, 128, tile_avxvnni, stage_avx2};
    static const isa_kernels avx512vnni = {8, 32, 128, tile_avx512vnni_8x32, stage_avx512, fill_rows_avx512,
                                           tile_avx512vnni_1x32};
#endif
#if defined(__aarch64__)
    static const isa_kernels neon = {4, 16, 0, tile_neon, stage_neon};
    static const isa_kernels neon_dotprod = {4, 16, 0, tile_neon_dotprod, stage_neon};
#endif
    switch (isa) {
    case EDGEQ_ISA_PORTABLE:
        return &portable;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    case EDGEQ_ISA_AVX2:
        return &avx2;
    case EDGEQ_ISA_AVXVNNI:
        return &avxvnni;
    case EDGEQ_ISA_AVX512VNNI:
        return &avx512vnni;
#endif
#if defined(__aarch64__)
    case EDGEQ_ISA_NEON:
        return &neon;
    case EDGEQ_ISA_NEON_DOTPROD:
        return &neon_dotprod;
#endif
    default:
        return NULL;
    }
}

edgeq_stage_fn edgeq_stage_for(int isa) {
    const isa_kernels *kernels = kernels_for(isa);
    return kernels ? kernels->stage : stage_portable;
}

/* Whether AVX512-VNNI convolutions of 32 rows or more run on AMX tiles (edgeq_amx_set). */
static int amx_on = 0;

int edgeq_amx_set(int on) {
    if (on < 0) return amx_on; /* only asks */
#if defined(EDGEQ_HAVE_AMX)
    static int permitted = -1;
    if (on && permitted < 0) {
        unsigned a, b, c, d;
        permitted = 0;
        /* AMX-TILE and AMX-INT8 (CPUID 7.0 EDX bits 24, 25), then Linux's permission for the tile state */
        if (edgeq_cpu_supports(EDGEQ_ISA_AVX512VNNI) && __get_cpuid_count(7, 0, &a, &b, &c, &d) &&
            (d & (1u << 24)) && (d & (1u << 25)))
            permitted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    }
    amx_on = on && permitted > 0;
#else
    (void)on;
#endif
    return amx_on;
}

int edgeq_output_stage_rows(int isa, const edgeq_output_stage *stage, const int32_t *acc, int rows, int count,
                            int8_t *out) {
    const isa_kernels *kernels = kernels_for(isa);
    if (!kernels || !edgeq_cpu_supports(isa)) return -1;
    kernels->stage(stage, acc, count, rows, 0, count, out, (size_t)count);
    return 0;
}

int edgeq_isa_compiled(int isa) { return kernels_for(isa) != NULL; }

int edgeq_isa_supported(int isa) { return kernels_for(isa) != NULL && edgeq_cpu_supports(isa); }

int edgeq_isa_input_shift(int isa) {
    const isa_kernels *kernels = kernels_for(isa);
    return kernels ? kernels->input_shift : -1;
}

/* Packed weights end with PACKED_SLACK zero bytes: an AMX step of 16 groups reads up to 15 past the last. */
#define PACKED_SLACK (15 * 64)

size_t edgeq_packed_bytes(int out_c, int depth) {
    const size_t blocks = ((size_t)out_c + 31) / 32 * 2, k4 = ((size_t)depth + 3) / 4;
    return blocks * k4 * 64 + PACKED_SLACK;
}

void edgeq_pack_weights(int out_c, int depth, const int8_t *weights, int8_t *packed) {
    const size_t blocks = ((size_t)out_c + 31) / 32 * 2, k4 = ((size_t)depth + 3) / 4;
    memset(packed + blocks * k4 * 64, 0, PACKED_SLACK);
    for (size_t b = 0; b < blocks; b++)
        for (size_t k = 0; k < k4; k++)
            for (size_t j = 0; j < 16; j++)
                for (size_t t = 0; t < 4; t++) {
                    const size_t column = 16 * b + j, d = 4 * k + t;
                    packed[((b * k4 + k) * 16 + j) * 4 + t] =
                        (column < (size_t)out_c && d < (size_t)depth) ? weights[column * depth + d] : 0;
                }
}

/* -- the convolution driver ------------------------------------------------------------------- */

typedef struct conv_job {
    const isa_kernels *kernels;
    const edgeq_conv_geometry *g;
    const int8_t *x, *x_end; /* the input and the byte past it */
    const int8_t *packed;
    const edgeq_output_stage *stage;
    int8_t *out;
    size_t depth, k4, lda;
    int rows, chunk_rows, row_chunks, column_parts, panels;
    int amx; /* tile_amx_32x32 instead of the variant's tile */
    int failed;
} conv_job;

static inline void copy_shifted(uint8_t *dst, const int8_t *src, size_t count, uint8_t flip) {
    size_t i = 0;
    if (count < 32) { /* a filter row of a few channels (a first convolution): 8 bytes per step */
        const uint64_t flips = flip ? 0x8080808080808080ull : 0;
        for (; i + 8 <= count; i += 8) {
            uint64_t word;
            memcpy(&word, src + i, 8);
            word ^= flips;
            memcpy(dst + i, &word, 8);
        }
    }
    for (; i < count; i++) dst[i] = (uint8_t)src[i] ^ flip;
}

/* Patch rows [row0, row0 + rows) of the convolution into buf (lda bytes each): taps outside the
 * input hold the input zero point, depth padding 0. */
static inline __attribute__((always_inline)) void fill_rows_with(const conv_job *job, int row0, int rows,
                                                                 uint8_t *buf, copy_fn copy) {
    const edgeq_conv_geometry *g = job->g;
    const uint8_t flip = job->kernels->input_shift ? 0x80 : 0;
    const uint8_t pad = (uint8_t)(int8_t)g->input_zero_point ^ flip;
    const int pixels = g->out_h * g->out_w;
    const size_t in_c = (size_t)g->in_c;
    const int direct = g->k_h == 1 && g->k_w == 1 && g->stride_h == 1 && g->stride_w == 1 && g->pad_top == 0 &&
                       g->pad_left == 0 && g->out_h == g->in_h && g->out_w == g->in_w;
    /* The output pixel of the current row, stepped along (no divisions per row). */
    int n = row0 / pixels, oy = row0 % pixels / g->out_w, ox = row0 % pixels % g->out_w;
    for (int r = 0; r < rows; r++, ox++) {
        const int row = row0 + r;
        uint8_t *dst = buf + (size_t)r * job->lda;
        if (ox == g->out_w) {
            ox = 0;
            if (++oy == g->out_h) {
                oy = 0;
                n++;
            }
        }
        if (direct && copy) {
            copy(dst, job->x + (size_t)row * in_c, in_c, flip);
        } else if (direct) {
            copy_shifted(dst, job->x + (size_t)row * in_c, in_c, flip);
        } else {
            const int8_t *image = job->x + (size_t)n * g->in_h * g->in_w * in_c;
            const int ix0 = ox * g->stride_w - g->pad_left;
            /* With dilation 1 a filter row that lies inside the input is one contiguous run. */
            const int row_inside = g->dil_w == 1 && ix0 >= 0 && ix0 + g->k_w <= g->in_w;
            for (int ky = 0; ky < g->k_h; ky++) {
                const int iy = oy * g->stride_h - g->pad_top + ky * g->dil_h;
                if (row_inside && iy >= 0 && iy < g->in_h) {
                    const int8_t *src = image + ((size_t)iy * g->in_w + ix0) * in_c;
                    uint8_t *tap_row = dst + (size_t)ky * g->k_w * in_c;
                    const size_t run = (size_t)g->k_w * in_c;
                    const size_t words = (run + 7) / 8;
                    if (copy) {
                        copy(tap_row, src, run, flip);
                        continue;
                    }
                    if (run <= 32 && src + 8 * words <= job->x_end) {
                        /* A short filter row (few channels, as a first convolution's 7 x 3) in 8-byte
                         * words: the up to 7 bytes written past it are overwritten by the next filter
                         * row, the depth padding or the next patch row, and the buffer has 16 spare
                         * bytes at its end. */
                        const uint64_t flips = flip ? 0x8080808080808080ull : 0;
                        for (size_t w = 0; w < words; w++) {
                            uint64_t word;
                            memcpy(&word, src + 8 * w, 8);
                            word ^= flips;
                            memcpy(tap_row + 8 * w, &word, 8);
                        }
                        continue;
                    }
                    copy_shifted(tap_row, src, run, flip);
                    continue;
                }
                for (int kx = 0; kx < g->k_w; kx++) {
                    const int ix = ox * g->stride_w - g->pad_left + kx * g->dil_w;
                    uint8_t *tap = dst + ((size_t)ky * g->k_w + kx) * in_c;
                    if (iy >= 0 && iy < g->in_h && ix >= 0 && ix < g->in_w && copy)
                        copy(tap, image + ((size_t)iy * g->in_w + ix) * in_c, in_c, flip);
                    else if (iy >= 0 && iy < g->in_h && ix >= 0 && ix < g->in_w)
                        copy_shifted(tap, image + ((size_t)iy * g->in_w + ix) * in_c, in_c, flip);
                    else
                        memset(tap, pad, in_c);
                }
            }
        }
        memset(dst + job->depth, 0, job->lda - job->depth); /* depth padding: to 4 bytes, or 64 for AMX */
    }
}

static void fill_rows(const conv_job *job, int row0, int rows, uint8_t *buf) { fill_rows_with(job, row0, rows, buf, NULL); }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* The fill with the masked AVX-512 copy inlined (through a pointer it cost a call per filter row). */
__attribute__((target("avx512f,avx512bw"))) static void fill_rows_avx512(const conv_job *job, int row0, int rows,
                                                                         uint8_t *buf) {
    fill_rows_with(job, row0, rows, buf, copy_avx512);
}
#endif

static void conv_work(void *context, int index) {
    conv_job *job = (conv_job *)context;
    const isa_kernels *kernels = job->kernels;
    const int chunk = index / job->column_parts, part = index % job->column_parts;
    const int row0 = chunk * job->chunk_rows;
    const int rows = job->rows - row0 < job->chunk_rows ? job->rows - row0 : job->chunk_rows;
    const int panel0 = (int)((long long)job->panels * part / job->column_parts);
    const int panel1 = (int)((long long)job->panels * (part + 1) / job->column_parts);
    const int out_c = job->g->out_c, nr = kernels->nr, mr = kernels->mr;
    const int step = job->amx ? 32 : mr;
    const int buffer_rows = (rows + step - 1) / step * step;
    uint8_t *buf = (uint8_t *)malloc((size_t)buffer_rows * job->lda + 16);
    /* The whole chunk's accumulators of one panel: the output stage then loads each column's
     * constants once per chunk instead of once per micro-tile. */
    int32_t *acc = (int32_t *)malloc(sizeof(int32_t) * (size_t)buffer_rows * nr);
    if (!buf || !acc) {
        free(buf);
        free(acc);
        job->failed = 1;
        return;
    }
    (kernels->fill ? kernels->fill : fill_rows)(job, row0, rows, buf);
    memset(buf + (size_t)rows * job->lda, 0, (size_t)(buffer_rows - rows) * job->lda);
#if defined(EDGEQ_HAVE_AMX)
    if (job->amx) amx_configure(); /* per thread: the tile configuration is thread state */
#endif
    for (int panel = panel0; panel < panel1; panel++) {
        const int col0 = panel * nr;
        const int count = out_c - col0 < nr ? out_c - col0 : nr;
        const int8_t *w = job->packed + (size_t)(col0 / 16) * job->k4 * 64;
#if defined(EDGEQ_HAVE_AMX)
        if (job->amx) {
            for (int m = 0; m < rows; m += 32)
                tile_amx_32x32(buf + (size_t)m * job->lda, job->lda, w, job->k4, acc + (size_t)m * nr);
            kernels->stage(job->stage, acc, nr, rows, col0, count, job->out + (size_t)row0 * out_c + col0,
                           (size_t)out_c);
            continue;
        }
#endif
        int m = 0;
        for (; m + mr <= rows; m += mr)
            kernels->tile(buf + (size_t)m * job->lda, job->lda, w, job->k4, acc + (size_t)m * nr);
        if (m < rows && kernels->tile_row && rows - m <= mr / 2) {
            for (; m < rows; m++)
                kernels->tile_row(buf + (size_t)m * job->lda, job->lda, w, job->k4, acc + (size_t)m * nr);
        } else if (m < rows) {
            kernels->tile(buf + (size_t)m * job->lda, job->lda, w, job->k4, acc + (size_t)m * nr);
        }
        kernels->stage(job->stage, acc, nr, rows, col0, count, job->out + (size_t)row0 * out_c + col0, (size_t)out_c);
    }
#if defined(EDGEQ_HAVE_AMX)
    if (job->amx) amx_release();
#endif
    free(acc);
    free(buf);
}

/* Patch rows per buffer: about 256 KB of them, L2-resident next to a 32-column weight panel. Every chunk
 * of rows reads all the weights: with 64 KB a 3x3 layer of depth 512 on a 7x7 image took chunks of 8
 * rows and read its 2.4 MB of weights from L3 seven times (134 against 180 GMAC/s with 256 KB). */
#define PATCH_BUFFER_BYTES 262144
/* Below this many multiply-adds one thread does the whole call. */
#define PARALLEL_MIN_MACS 2000000LL

int edgeq_conv(int isa, const edgeq_conv_geometry *g, const int8_t *x, const int8_t *packed,
               const edgeq_output_stage *stage, int8_t *out, int threads) {
    conv_job job;
    job.kernels = kernels_for(isa);
    if (!job.kernels || !edgeq_cpu_supports(isa)) return -1;
    job.g = g;
    job.x = x;
    job.x_end = x + (size_t)g->batch * g->in_h * g->in_w * g->in_c;
    job.packed = packed;
    job.stage = stage;
    job.out = out;
    job.depth = (size_t)g->k_h * g->k_w * g->in_c;
    job.k4 = (job.depth + 3) / 4;
    job.rows = g->batch * g->out_h * g->out_w;
    /* AMX for 32 rows and more and a depth of 64 and more: below, a tile step's fixed cost and the
     * depth padded to 64 bytes outweigh its speed (MobileNetV2's 1x1 layers of depth 16-32 ran 5-25%
     * slower on AMX, depths 64-576 10-60% faster) */
    job.amx = amx_on && isa == EDGEQ_ISA_AVX512VNNI && job.rows >= 32 && job.depth >= 64;
    job.lda = job.amx ? (job.k4 * 4 + 63) / 64 * 64 : job.k4 * 4;
    job.panels = (g->out_c + job.kernels->nr - 1) / job.kernels->nr;
    job.failed = 0;
    if (job.rows == 0 || g->out_c == 0) return 0;
    if ((long long)job.rows * g->out_c * (long long)job.depth < PARALLEL_MIN_MACS) threads = 1;
    int chunk = (int)(PATCH_BUFFER_BYTES / job.lda);
    const int mr = job.amx ? 32 : job.kernels->mr;
    chunk = chunk < mr ? mr : (chunk > 256 ? 256 : chunk / mr * mr);
    if (threads > 1) { /* at least two chunks per thread when the rows allow it */
        const int balanced = (job.rows + 2 * threads - 1) / (2 * threads);
        if (balanced < chunk) chunk = balanced < mr ? mr : (balanced + mr - 1) / mr * mr;
    }
    job.chunk_rows = chunk;
    job.row_chunks = (job.rows + chunk - 1) / chunk;
    /* Few rows (a FULLY_CONNECTED on one sample): the threads split the columns instead. */
    job.column_parts = 1;
    if (threads > job.row_chunks) {
        job.column_parts = (threads + job.row_chunks - 1) / job.row_chunks;
        if (job.column_parts > job.panels) job.column_parts = job.panels;
    }
    edgeq_parallel_for(job.row_chunks * job.column_parts, threads, conv_work, &job);
    return job.failed ? -2 : 0;
}
