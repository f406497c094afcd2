/* int8 DEPTHWISE_CONV_2D (depth multiplier 1) as pair products: the taps of an output pixel are
 * taken two at a time.
 *
 * x86-64: their inputs widened to int16 and interleaved channel by channel, so one vpmaddwd (AVX2) or
 * vpdpwssd (AVX512-VNNI) adds x_t * w_t + x_t' * w_t' into each channel's int32 lane: a quarter of the
 * instructions of a widen-to-int32-and-multiply loop. Weights are packed once (prepare) as int16 per
 * block of B channels (32 for AVX512, 16 for AVX2) and tap pair as the unpack instructions order
 * channels: within each 128-bit lane of 8 channels, the low unpack holds channels 0-3 and the high one
 * 4-7.
 *
 * aarch64 (both NEON variants): smull and smlal multiply 16 channels of int8 inputs by int8 weights of
 * two taps into int16 sums, which saddw adds into int32 lanes: 12 instructions per 32 multiply-adds,
 * loads included. The int16 sum of two products is exact because no weight is -128 (|x * w| <= 128 *
 * 127, two of them below 2^15; packing refuses other weights, and the tap-by-tap kernel runs them).
 * Weights are packed once as int8 [blocks of 16 channels][tap pairs][2][16].
 *
 * Every pixel has all its taps: one outside the input reads a row of the input zero point, whose
 * product the bias takes back (prepare folds -zero_point * sum of the channel's weights into it), so
 * the loop has no branch and no per-pixel correction. An odd last tap pairs with zero weights. The
 * accumulators of a whole output row then go through the output stage at once.
 *
 * Undilated 3x3 filters of horizontal stride 1 or 2 on x86-64 take a row kernel instead (below): it walks
 * an output row by input columns, so each column is widened once for the 3 (stride 1) or 2 (stride 2)
 * outputs that read it, with the block's weights in registers. */
#include <stdlib.h>
#include <string.h>

#include "native.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PAIRS_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#if defined(PAIRS_X86) || defined(__aarch64__)
#define MAX_TAPS 64

typedef void (*pixel_fn)(int32_t *acc, int channels, int pairs, const int8_t *const *sources,
                         const int16_t *packed);
#endif

#if defined(PAIRS_X86)

static int block_width(int isa) {
    if (isa == EDGEQ_ISA_AVX512VNNI) return 32;
    if (isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI) return 16;
    return 0;
}

static size_t general_packed_bytes(int width, int taps, int channels) {
    const size_t blocks = ((size_t)channels + width - 1) / width, pairs = ((size_t)taps + 1) / 2;
    return blocks * pairs * 2 * width * sizeof(int16_t);
}

/* A 3x3 filter on AVX512-VNNI also gets the layout of the 3x3 row kernel, after the general one. */
/* A 3x3 filter also gets the layout of the 3x3 row kernel, after the general one: blocks of 32 channels
 * on AVX512-VNNI, 16 on AVX2 and AVX-VNNI. */
static int block_3x3_width(int isa) {
    if (isa == EDGEQ_ISA_AVX512VNNI) return 32;
    if (isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI) return 16;
    return 0;
}

static int has_3x3_layout(int isa, int taps) { return block_3x3_width(isa) && taps == 9; }

#define BLOCK_3X3 32
#define VECTORS_3X3 12 /* per block of 32 channels: 3 columns x (2 paired-row vectors + 2 third-row ones) */

/* int8 weights, widened to int16 per block and row: a quarter of the bytes the rows stream through */
static size_t layout_3x3_bytes(int isa, int channels) {
    const int width = block_3x3_width(isa);
    return (size_t)((channels + width - 1) / width) * VECTORS_3X3 * width;
}

size_t edgeq_depthwise_pairs_packed_bytes(int isa, int taps, int channels) {
    const int width = block_width(isa);
    if (!width || taps < 1 || taps > MAX_TAPS) return 0;
    return general_packed_bytes(width, taps, channels) +
           (has_3x3_layout(isa, taps) ? layout_3x3_bytes(isa, channels) : 0);
}

/* The 3x3 row kernel's weights, per block of W channels and filter column kx, int8 pairs (widened to
 * int16 by the kernel): rows 0 and 1 interleaved as the byte unpacks of two input pixels order channels,
 * then row 2 beside a zero, channels in order, each as two vectors of W / 2 channels. With W = 32 (AVX-512)
 * the unpacks work per 128-bit lane: int32 lane i of the low vector holds channel i < 8 ? i : i + 8, of the
 * high one 8 more; with W = 16 the low vector holds channels 0-7, the high one 8-15. */
static void pack_3x3(int isa, int channels, const int8_t *filters, int8_t *packed) {
    const int width = block_3x3_width(isa), lanes = width / 2, blocks = (channels + width - 1) / width;
    for (int b = 0; b < blocks; b++)
        for (int kx = 0; kx < 3; kx++) {
            int8_t *vectors = packed + ((size_t)b * VECTORS_3X3 + 4 * kx) * width;
            for (int i = 0; i < lanes; i++) {
                int paired[2] = {i, i + 8};
                if (width == 32) paired[0] = i < 8 ? i : i + 8, paired[1] = i < 8 ? i + 8 : i + 16;
                const int alone[2] = {i, i + lanes};
                for (int v = 0; v < 2; v++) {
                    const int c = b * width + paired[v], d = b * width + alone[v];
                    vectors[width * v + 2 * i] = c < channels ? filters[(size_t)kx * channels + c] : 0;
                    vectors[width * v + 2 * i + 1] = c < channels ? filters[(size_t)(3 + kx) * channels + c] : 0;
                    vectors[width * (2 + v) + 2 * i] = d < channels ? filters[(size_t)(6 + kx) * channels + d] : 0;
                    vectors[width * (2 + v) + 2 * i + 1] = 0;
                }
            }
        }
}

/* filters: int8 [taps][channels]. */
int edgeq_depthwise_pairs_pack(int isa, int taps, int channels, const int8_t *filters, int16_t *packed) {
    const int width = block_width(isa);
    if (!width || taps < 1 || taps > MAX_TAPS) return -1;
    const int blocks = (channels + width - 1) / width, pairs = (taps + 1) / 2;
    for (int b = 0; b < blocks; b++)
        for (int p = 0; p < pairs; p++)
            for (int half = 0; half < 2; half++) {
                int16_t *vector = packed + (((size_t)b * pairs + p) * 2 + half) * width;
                for (int lane = 0; lane < width / 8; lane++)
                    for (int j = 0; j < 4; j++)
                        for (int t = 0; t < 2; t++) {
                            const int channel = b * width + 8 * lane + 4 * half + j, tap = 2 * p + t;
                            vector[8 * lane + 2 * j + t] = (channel < channels && tap < taps)
                                                               ? filters[(size_t)tap * channels + channel]
                                                               : 0;
                        }
            }
    if (has_3x3_layout(isa, taps))
        pack_3x3(isa, channels, filters, (int8_t *)packed + general_packed_bytes(width, taps, channels));
    return 0;
}

#define DW512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))

/* acc[0 .. channels) of one pixel; sources holds 2 * pairs rows (the last may be a filler). */
static DW512 void pixel_avx512(int32_t *acc, int channels, int pairs, const int8_t *const *sources,
                               const int16_t *packed) {
    const __m512i order_low = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i order_high = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int c0 = 0; c0 < channels; c0 += 32) {
        const int left = channels - c0;
        const __mmask32 mask = left >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << left) - 1);
        const int16_t *w = packed + (size_t)(c0 / 32) * pairs * 64;
        __m512i low_a = _mm512_setzero_si512(), high_a = low_a, low_b = low_a, high_b = low_a;
        int p = 0;
        for (; p + 2 <= pairs; p += 2) {
            const __m512i x0 = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, sources[2 * p] + c0));
            const __m512i x1 = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, sources[2 * p + 1] + c0));
            const __m512i x2 = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, sources[2 * p + 2] + c0));
            const __m512i x3 = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, sources[2 * p + 3] + c0));
            low_a = _mm512_dpwssd_epi32(low_a, _mm512_unpacklo_epi16(x0, x1), _mm512_loadu_si512(w + 64 * p));
            high_a = _mm512_dpwssd_epi32(high_a, _mm512_unpackhi_epi16(x0, x1), _mm512_loadu_si512(w + 64 * p + 32));
            low_b = _mm512_dpwssd_epi32(low_b, _mm512_unpacklo_epi16(x2, x3), _mm512_loadu_si512(w + 64 * p + 64));
            high_b = _mm512_dpwssd_epi32(high_b, _mm512_unpackhi_epi16(x2, x3), _mm512_loadu_si512(w + 64 * p + 96));
        }
        if (p < pairs) {
            const __m512i x0 = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, sources[2 * p] + c0));
            const __m512i x1 = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, sources[2 * p + 1] + c0));
            low_a = _mm512_dpwssd_epi32(low_a, _mm512_unpacklo_epi16(x0, x1), _mm512_loadu_si512(w + 64 * p));
            high_a = _mm512_dpwssd_epi32(high_a, _mm512_unpackhi_epi16(x0, x1), _mm512_loadu_si512(w + 64 * p + 32));
        }
        const __m512i low = _mm512_add_epi32(low_a, low_b), high = _mm512_add_epi32(high_a, high_b);
        const __mmask16 first = (__mmask16)mask, second = (__mmask16)(mask >> 16);
        _mm512_mask_storeu_epi32(acc + c0, first, _mm512_permutex2var_epi32(low, order_low, high));
        _mm512_mask_storeu_epi32(acc + c0 + 16, second, _mm512_permutex2var_epi32(low, order_high, high));
    }
}

/* The 3x3 row kernel: one output row, 32 channels at a time, the block's 12 weight vectors held in
 * registers. Filter rows 0 and 1 pair up (one vpdpwssd per column for both), row 2 sits beside a zero
 * weight; each input column is widened once and serves every output pixel it reaches (3 at stride 1). */
typedef struct {
    __m512i low, high, first, second; /* rows 0+1 (unpack order), row 2 (channels 0-15, 16-31) */
} column_3x3;

static inline __attribute__((always_inline)) DW512 column_3x3 load_column(const int8_t *const *columns,
                                                                          int ncols, int j, int c0,
                                                                          __mmask32 mask, int full) {
    const int8_t *top = columns[j] + c0, *middle = columns[ncols + j] + c0, *bottom = columns[2 * ncols + j] + c0;
    __m256i a, b;
    __m128i e, f;
    if (full) {
        a = _mm256_loadu_si256((const __m256i *)top);
        b = _mm256_loadu_si256((const __m256i *)middle);
        e = _mm_loadu_si128((const __m128i *)bottom);
        f = _mm_loadu_si128((const __m128i *)(bottom + 16));
    } else {
        a = _mm256_maskz_loadu_epi8(mask, top);
        b = _mm256_maskz_loadu_epi8(mask, middle);
        e = _mm_maskz_loadu_epi8((__mmask16)mask, bottom);
        f = _mm_maskz_loadu_epi8((__mmask16)(mask >> 16), bottom + 16);
    }
    column_3x3 column;
    column.low = _mm512_cvtepi8_epi16(_mm256_unpacklo_epi8(a, b));
    column.high = _mm512_cvtepi8_epi16(_mm256_unpackhi_epi8(a, b));
    column.first = _mm512_cvtepi8_epi32(e); /* int16 pairs (x, sign of x): the zero weight drops the sign */
    column.second = _mm512_cvtepi8_epi32(f);
    return column;
}

static inline __attribute__((always_inline)) DW512 void block_3x3(const int8_t *const *columns, int ncols,
                                                                  int stride, int out_w, int channels, int c0,
                                                                  const int8_t *w, int32_t *block_acc, int full) {
    const int left = channels - c0;
    const __mmask32 mask = left >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << left) - 1);
    __m512i weights[VECTORS_3X3];
    for (int v = 0; v < VECTORS_3X3; v++)
        weights[v] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + 32 * v)));
    column_3x3 c[3];
    c[0] = load_column(columns, ncols, 0, c0, mask, full);
    c[1] = stride == 1 ? load_column(columns, ncols, 1, c0, mask, full) : c[0];
    for (int ox = 0; ox < out_w; ox++) {
        const int j = ox * stride;
        if (stride != 1) c[1] = load_column(columns, ncols, j + 1, c0, mask, full);
        c[2] = load_column(columns, ncols, j + 2, c0, mask, full);
        __m512i low = _mm512_setzero_si512(), high = low, first = low, second = low;
        for (int kx = 0; kx < 3; kx++) {
            low = _mm512_dpwssd_epi32(low, c[kx].low, weights[4 * kx]);
            high = _mm512_dpwssd_epi32(high, c[kx].high, weights[4 * kx + 1]);
            first = _mm512_dpwssd_epi32(first, c[kx].first, weights[4 * kx + 2]);
            second = _mm512_dpwssd_epi32(second, c[kx].second, weights[4 * kx + 3]);
        }
        /* low's 128-bit lanes hold channels 0-3, 4-7, 16-19, 20-23; high's 8-11, 12-15, 24-27, 28-31 */
        first = _mm512_add_epi32(first, _mm512_shuffle_i64x2(low, high, 0x44));
        second = _mm512_add_epi32(second, _mm512_shuffle_i64x2(low, high, 0xEE));
        int32_t *acc = block_acc + (size_t)ox * BLOCK_3X3;
        if (full) {
            _mm512_storeu_si512(acc, first);
            _mm512_storeu_si512(acc + 16, second);
        } else {
            _mm512_mask_storeu_epi32(acc, (__mmask16)mask, first);
            _mm512_mask_storeu_epi32(acc + 16, (__mmask16)(mask >> 16), second);
        }
        if (stride == 1) {
            c[0] = c[1];
            c[1] = c[2];
        } else {
            c[0] = c[2];
        }
    }
}

/* columns: 3 rows of ncols pointers to input pixels (the zero point's row outside the input). Each block
 * of 32 channels goes through the output stage while its accumulators (out_w x 32) are still in L1. */
static DW512 void row_3x3_avx512(const int8_t *const *columns, int ncols, int stride, int out_w, int channels,
                                 const int8_t *packed, int32_t *block_acc, const edgeq_output_stage *stage,
                                 edgeq_stage_fn run_stage, int8_t *out_row) {
    for (int c0 = 0; c0 < channels; c0 += BLOCK_3X3) {
        const int8_t *w = packed + (size_t)(c0 / BLOCK_3X3) * VECTORS_3X3 * 32;
        const int count = channels - c0 < BLOCK_3X3 ? channels - c0 : BLOCK_3X3;
        if (count == BLOCK_3X3) {
            if (stride == 1)
                block_3x3(columns, ncols, 1, out_w, channels, c0, w, block_acc, 1);
            else
                block_3x3(columns, ncols, 2, out_w, channels, c0, w, block_acc, 1);
        } else {
            block_3x3(columns, ncols, stride, out_w, channels, c0, w, block_acc, 0);
        }
        run_stage(stage, block_acc, BLOCK_3X3, out_w, c0, count, out_row + c0, (size_t)channels);
    }
}

#define DW256 __attribute__((target("avx2")))

/* The 3x3 row kernel on AVX2 (and AVX-VNNI): 16 channels at a time, in order, vpmaddwd for the pairs. */
typedef struct {
    __m256i low, high, first, second; /* rows 0+1 (channels 0-7, 8-15), row 2 (channels 0-7, 8-15) */
} column_3x3_avx2;

static inline __attribute__((always_inline)) DW256 __m128i load_up_to_16(const int8_t *src, int count) {
    if (count >= 16) return _mm_loadu_si128((const __m128i *)src);
    int8_t buffer[16] = {0};
    memcpy(buffer, src, (size_t)count);
    return _mm_loadu_si128((const __m128i *)buffer);
}

static inline __attribute__((always_inline)) DW256 column_3x3_avx2 load_column_avx2(const int8_t *const *columns,
                                                                                    int ncols, int j, int c0,
                                                                                    int count) {
    const __m128i a = load_up_to_16(columns[j] + c0, count), b = load_up_to_16(columns[ncols + j] + c0, count);
    const __m128i e = load_up_to_16(columns[2 * ncols + j] + c0, count);
    column_3x3_avx2 column;
    column.low = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a, b));
    column.high = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(a, b));
    column.first = _mm256_cvtepi8_epi32(e); /* int16 pairs (x, sign of x): the zero weight drops the sign */
    column.second = _mm256_cvtepi8_epi32(_mm_srli_si128(e, 8));
    return column;
}

static inline __attribute__((always_inline)) DW256 void block_3x3_avx2(const int8_t *const *columns, int ncols,
                                                                       int stride, int out_w, int c0, int count,
                                                                       const int8_t *w, int32_t *block_acc) {
    __m256i weights[VECTORS_3X3];
    for (int v = 0; v < VECTORS_3X3; v++)
        weights[v] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 16 * v)));
    column_3x3_avx2 c[3];
    c[0] = load_column_avx2(columns, ncols, 0, c0, count);
    c[1] = stride == 1 ? load_column_avx2(columns, ncols, 1, c0, count) : c[0];
    for (int ox = 0; ox < out_w; ox++) {
        const int j = ox * stride;
        if (stride != 1) c[1] = load_column_avx2(columns, ncols, j + 1, c0, count);
        c[2] = load_column_avx2(columns, ncols, j + 2, c0, count);
        __m256i low = _mm256_madd_epi16(c[0].low, weights[0]), high = _mm256_madd_epi16(c[0].high, weights[1]);
        __m256i first = _mm256_madd_epi16(c[0].first, weights[2]);
        __m256i second = _mm256_madd_epi16(c[0].second, weights[3]);
        for (int kx = 1; kx < 3; kx++) {
            low = _mm256_add_epi32(low, _mm256_madd_epi16(c[kx].low, weights[4 * kx]));
            high = _mm256_add_epi32(high, _mm256_madd_epi16(c[kx].high, weights[4 * kx + 1]));
            first = _mm256_add_epi32(first, _mm256_madd_epi16(c[kx].first, weights[4 * kx + 2]));
            second = _mm256_add_epi32(second, _mm256_madd_epi16(c[kx].second, weights[4 * kx + 3]));
        }
        int32_t *acc = block_acc + (size_t)ox * 16; /* lanes past count are never read */
        _mm256_storeu_si256((__m256i *)acc, _mm256_add_epi32(low, first));
        _mm256_storeu_si256((__m256i *)(acc + 8), _mm256_add_epi32(high, second));
        if (stride == 1) {
            c[0] = c[1];
            c[1] = c[2];
        } else {
            c[0] = c[2];
        }
    }
}

static DW256 void row_3x3_avx2(const int8_t *const *columns, int ncols, int stride, int out_w, int channels,
                               const int8_t *packed, int32_t *block_acc, const edgeq_output_stage *stage,
                               edgeq_stage_fn run_stage, int8_t *out_row) {
    for (int c0 = 0; c0 < channels; c0 += 16) {
        const int8_t *w = packed + (size_t)(c0 / 16) * VECTORS_3X3 * 16;
        const int count = channels - c0 < 16 ? channels - c0 : 16;
        if (count == 16) {
            if (stride == 1)
                block_3x3_avx2(columns, ncols, 1, out_w, c0, 16, w, block_acc);
            else
                block_3x3_avx2(columns, ncols, 2, out_w, c0, 16, w, block_acc);
        } else {
            block_3x3_avx2(columns, ncols, stride, out_w, c0, count, w, block_acc);
        }
        run_stage(stage, block_acc, 16, out_w, c0, count, out_row + c0, (size_t)channels);
    }
}

static __attribute__((target("avx2"))) __m256i load_16(const int8_t *src, int count) {
    if (count >= 16) return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)src));
    int8_t buffer[16] = {0};
    memcpy(buffer, src, (size_t)count);
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)buffer));
}

static __attribute__((target("avx2"))) void pixel_avx2(int32_t *acc, int channels, int pairs,
                                                       const int8_t *const *sources, const int16_t *packed) {
    for (int c0 = 0; c0 < channels; c0 += 16) {
        const int left = channels - c0;
        const int16_t *w = packed + (size_t)(c0 / 16) * pairs * 32;
        __m256i low = _mm256_setzero_si256(), high = low;
        for (int p = 0; p < pairs; p++) {
            const __m256i x0 = load_16(sources[2 * p] + c0, left), x1 = load_16(sources[2 * p + 1] + c0, left);
            low = _mm256_add_epi32(low, _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1),
                                                          _mm256_loadu_si256((const __m256i *)(w + 32 * p))));
            high = _mm256_add_epi32(high, _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1),
                                                            _mm256_loadu_si256((const __m256i *)(w + 32 * p + 16))));
        }
        const __m256i first = _mm256_permute2x128_si256(low, high, 0x20);
        const __m256i second = _mm256_permute2x128_si256(low, high, 0x31);
        if (left >= 16) {
            _mm256_storeu_si256((__m256i *)(acc + c0), first);
            _mm256_storeu_si256((__m256i *)(acc + c0 + 8), second);
        } else {
            int32_t lanes[16];
            _mm256_storeu_si256((__m256i *)lanes, first);
            _mm256_storeu_si256((__m256i *)(lanes + 8), second);
            memcpy(acc + c0, lanes, sizeof(int32_t) * (size_t)left);
        }
    }
}

static pixel_fn pixel_for(int isa) { return isa == EDGEQ_ISA_AVX512VNNI ? pixel_avx512 : pixel_avx2; }
#endif

#if defined(__aarch64__)
#define NEON_BLOCK 16

static int block_width(int isa) { return isa == EDGEQ_ISA_NEON || isa == EDGEQ_ISA_NEON_DOTPROD ? NEON_BLOCK : 0; }

size_t edgeq_depthwise_pairs_packed_bytes(int isa, int taps, int channels) {
    if (!block_width(isa) || taps < 1 || taps > MAX_TAPS) return 0;
    const size_t blocks = ((size_t)channels + NEON_BLOCK - 1) / NEON_BLOCK, pairs = ((size_t)taps + 1) / 2;
    return blocks * pairs * 2 * NEON_BLOCK;
}

/* filters: int8 [taps][channels]; packed holds int8 [blocks][pairs][2][16] (its int16 type is the
 * x86-64 variants'). A weight of -128 could overflow the int16 pair sum: no packing, -1. */
int edgeq_depthwise_pairs_pack(int isa, int taps, int channels, const int8_t *filters, int16_t *packed) {
    if (!block_width(isa) || taps < 1 || taps > MAX_TAPS) return -1;
    for (size_t i = 0; i < (size_t)taps * channels; i++)
        if (filters[i] == -128) return -1;
    int8_t *bytes = (int8_t *)packed;
    const int blocks = (channels + NEON_BLOCK - 1) / NEON_BLOCK, pairs = (taps + 1) / 2;
    for (int b = 0; b < blocks; b++)
        for (int tap = 0; tap < 2 * pairs; tap++)
            for (int j = 0; j < NEON_BLOCK; j++) {
                const int channel = b * NEON_BLOCK + j;
                bytes[((size_t)b * pairs * 2 + tap) * NEON_BLOCK + j] =
                    (channel < channels && tap < taps) ? filters[(size_t)tap * channels + channel] : 0;
            }
    return 0;
}

static inline int8x16_t load_16(const int8_t *src, int count) {
    if (count >= NEON_BLOCK) return vld1q_s8(src);
    int8_t buffer[NEON_BLOCK] = {0};
    memcpy(buffer, src, (size_t)count);
    return vld1q_s8(buffer);
}

static void pixel_neon(int32_t *acc, int channels, int pairs, const int8_t *const *sources,
                       const int16_t *packed) {
    for (int c0 = 0; c0 < channels; c0 += NEON_BLOCK) {
        const int left = channels - c0;
        const int8_t *w = (const int8_t *)packed + (size_t)(c0 / NEON_BLOCK) * pairs * 2 * NEON_BLOCK;
        int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
        for (int p = 0; p < pairs; p++) {
            const int8x16_t x0 = load_16(sources[2 * p] + c0, left), x1 = load_16(sources[2 * p + 1] + c0, left);
            const int8x16_t w0 = vld1q_s8(w + 32 * p), w1 = vld1q_s8(w + 32 * p + 16);
            const int16x8_t low = vmlal_s8(vmull_s8(vget_low_s8(x0), vget_low_s8(w0)), vget_low_s8(x1),
                                           vget_low_s8(w1));
            const int16x8_t high = vmlal_high_s8(vmull_high_s8(x0, w0), x1, w1);
            a0 = vaddw_s16(a0, vget_low_s16(low));
            a1 = vaddw_high_s16(a1, low);
            a2 = vaddw_s16(a2, vget_low_s16(high));
            a3 = vaddw_high_s16(a3, high);
        }
        if (left >= NEON_BLOCK) {
            vst1q_s32(acc + c0, a0);
            vst1q_s32(acc + c0 + 4, a1);
            vst1q_s32(acc + c0 + 8, a2);
            vst1q_s32(acc + c0 + 12, a3);
        } else {
            int32_t lanes[NEON_BLOCK];
            vst1q_s32(lanes, a0);
            vst1q_s32(lanes + 4, a1);
            vst1q_s32(lanes + 8, a2);
            vst1q_s32(lanes + 12, a3);
            memcpy(acc + c0, lanes, sizeof(int32_t) * (size_t)left);
        }
    }
}

static pixel_fn pixel_for(int isa) {
    (void)isa;
    return pixel_neon;
}
#endif

#if defined(PAIRS_X86) || defined(__aarch64__)
typedef struct {
    const edgeq_conv_geometry *g;
    const int8_t *x;
    const int16_t *packed;
    const int8_t *filler; /* in_c bytes of the input zero point */
    const edgeq_output_stage *stage;
    edgeq_stage_fn run_stage;
    pixel_fn pixel;
    int8_t *out;
    int failed;
    const int8_t *packed_3x3; /* the 3x3 row kernel's weights when it runs, else NULL */
    int isa;
} pairs_job;

/* int32 slots of a row's accumulators (at least 32 channels' worth, as the 3x3 kernel's blocks take),
 * even so that the 3x3 kernel's column pointers after them align */
static size_t accumulator_slots(const edgeq_conv_geometry *g) {
    return ((size_t)(g->out_c < 32 ? 32 : g->out_c) * g->out_w + 1) & ~(size_t)1;
}

#if defined(PAIRS_X86)
static void row_3x3(pairs_job *job, const int8_t *image, int n, int oy, int32_t *row_acc) {
    const edgeq_conv_geometry *g = job->g;
    const int channels = g->out_c, ncols = (g->out_w - 1) * g->stride_w + 3;
    const int8_t **columns = (const int8_t **)(row_acc + accumulator_slots(g));
    /* columns [first, last) are inside the input; the others read the zero point's row */
    const int first = g->pad_left < ncols ? g->pad_left : ncols;
    const int last = g->pad_left + g->in_w < ncols ? g->pad_left + g->in_w : ncols;
    for (int ky = 0; ky < 3; ky++) {
        const int iy = oy * g->stride_h - g->pad_top + ky;
        const int8_t **row = columns + (size_t)ky * ncols;
        const int inside = iy >= 0 && iy < g->in_h;
        for (int j = 0; j < ncols; j++) row[j] = job->filler;
        if (!inside) continue;
        const int8_t *pixel = image + ((size_t)iy * g->in_w + (first - g->pad_left)) * channels;
        for (int j = first; j < last; j++, pixel += channels) row[j] = pixel;
    }
    int8_t *out_row = job->out + ((size_t)n * g->out_h + oy) * g->out_w * channels;
    if (job->isa == EDGEQ_ISA_AVX512VNNI)
        row_3x3_avx512(columns, ncols, g->stride_w, g->out_w, channels, job->packed_3x3, row_acc, job->stage,
                       job->run_stage, out_row);
    else
        row_3x3_avx2(columns, ncols, g->stride_w, g->out_w, channels, job->packed_3x3, row_acc, job->stage,
                     job->run_stage, out_row);
}
#endif

static void pairs_row(void *context, int index) {
    pairs_job *job = (pairs_job *)context;
    const edgeq_conv_geometry *g = job->g;
    const int channels = g->out_c, taps = g->k_h * g->k_w, pairs = (taps + 1) / 2;
    const int n = index / g->out_h, oy = index % g->out_h;
    const size_t column_pointers = job->packed_3x3 ? 3 * ((size_t)(g->out_w - 1) * g->stride_w + 3) : 0;
    int32_t *row_acc = (int32_t *)malloc(sizeof(int32_t) * accumulator_slots(g) + sizeof(int8_t *) * column_pointers);
    if (!row_acc) {
        job->failed = 1;
        return;
    }
    const int8_t *image = job->x + (size_t)n * g->in_h * g->in_w * channels;
#if defined(PAIRS_X86)
    if (job->packed_3x3) {
        row_3x3(job, image, n, oy, row_acc);
        free(row_acc);
        return;
    }
#endif
    const int8_t *sources[MAX_TAPS + 1];
    sources[taps] = job->filler; /* the odd tap's partner, under zero weights */
    for (int ox = 0; ox < g->out_w; ox++) {
        for (int ky = 0; ky < g->k_h; ky++) {
            const int iy = oy * g->stride_h - g->pad_top + ky * g->dil_h;
            for (int kx = 0; kx < g->k_w; kx++) {
                const int ix = ox * g->stride_w - g->pad_left + kx * g->dil_w;
                const int inside = iy >= 0 && iy < g->in_h && ix >= 0 && ix < g->in_w;
                sources[ky * g->k_w + kx] = inside ? image + ((size_t)iy * g->in_w + ix) * channels : job->filler;
            }
        }
        job->pixel(row_acc + (size_t)ox * channels, channels, pairs, sources, job->packed);
    }
    job->run_stage(job->stage, row_acc, channels, g->out_w, 0, channels,
                   job->out + ((size_t)n * g->out_h + oy) * g->out_w * channels, (size_t)channels);
    free(row_acc);
}

#define PARALLEL_MIN_MACS 1000000LL

int edgeq_depthwise_pairs(int isa, const edgeq_conv_geometry *g, const int8_t *x, const int16_t *packed,
                          const edgeq_output_stage *stage, int8_t *out, int threads) {
    const int taps = g->k_h * g->k_w;
    if (!block_width(isa) || !edgeq_cpu_supports(isa) || taps < 1 || taps > MAX_TAPS || g->in_c != g->out_c)
        return -1;
    int8_t *filler = (int8_t *)malloc((size_t)g->in_c + 64);
    if (!filler) return -2;
    memset(filler, (int8_t)g->input_zero_point, (size_t)g->in_c + 64);
    pairs_job job = {g, x, packed, filler, stage, edgeq_stage_for(isa), pixel_for(isa), out, 0, NULL, isa};
#if defined(PAIRS_X86)
    /* the 3x3 row kernel: undilated 3x3, horizontal stride 1 or 2 (any vertical one) */
    if (has_3x3_layout(isa, taps) && g->k_h == 3 && g->k_w == 3 && g->dil_h == 1 && g->dil_w == 1 &&
        (g->stride_w == 1 || g->stride_w == 2))
        job.packed_3x3 = (const int8_t *)packed + general_packed_bytes(block_width(isa), taps, g->out_c);
#endif
    const int rows = g->batch * g->out_h;
    if ((long long)rows * g->out_w * g->out_c * taps < PARALLEL_MIN_MACS) threads = 1;
    edgeq_parallel_for(rows, threads, pairs_row, &job);
    free(filler);
    return job.failed ? -2 : 0;
}

#else /* no vector variants (portable C): the tap-by-tap kernel in dwconv.c runs */

size_t edgeq_depthwise_pairs_packed_bytes(int isa, int taps, int channels) {
    (void)isa, (void)taps, (void)channels;
    return 0;
}

int edgeq_depthwise_pairs_pack(int isa, int taps, int channels, const int8_t *filters, int16_t *packed) {
    (void)isa, (void)taps, (void)channels, (void)filters, (void)packed;
    return -1;
}

int edgeq_depthwise_pairs(int isa, const edgeq_conv_geometry *g, const int8_t *x, const int16_t *packed,
                          const edgeq_output_stage *stage, int8_t *out, int threads) {
    (void)isa, (void)g, (void)x, (void)packed, (void)stage, (void)out, (void)threads;
    return -1;
}
#endif
