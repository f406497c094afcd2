/* int8 MEAN over a run of adjacent axes, as LiteRT's reference_ops::QuantizedMeanOrSum (BUILTIN_REF's
 * MEAN; the numpy form is runtime/kernels/reduce.py): the input viewed as [outer][reduced][inner], each
 * of the outer * inner sums taken over `reduced` values in int32, then
 * MultiplyByQuantizedMultiplier(sum - zero_point_term, multiplier, shift) (1 / count folded into the
 * multiplier in prepare) + output zero point, clamped. `single_rounding` picks TFLITE_SINGLE_ROUNDING's
 * form of the multiply. The caller keeps reduced * 255 inside int32 and passes `inner` int32 of scratch. */
#include "native.h"

static int32_t rounding_doubling_high_mul(int32_t a, int32_t b) {
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    const int64_t product = (int64_t)a * b;
    const int64_t nudge = product >= 0 ? (1 << 30) : (1 - (1 << 30));
    return (int32_t)((product + nudge) / ((int64_t)1 << 31));
}

static int32_t rounding_divide_by_pot(int64_t x, int exponent) {
    const int64_t mask = ((int64_t)1 << exponent) - 1;
    const int64_t remainder = x & mask, threshold = (mask >> 1) + (x < 0);
    return (int32_t)((x >> exponent) + (remainder > threshold));
}

static int32_t multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int shift, int single_rounding) {
    if (single_rounding) {
        const int total_shift = 31 - shift;
        const int64_t rounding = (int64_t)1 << (total_shift - 1);
        return (int32_t)(uint32_t)(uint64_t)(((int64_t)x * multiplier + rounding) >> total_shift);
    }
    const int left_shift = shift > 0 ? shift : 0, right_shift = shift > 0 ? 0 : -shift;
    const int32_t shifted = (int32_t)((uint32_t)x << left_shift); /* int32 arithmetic, as TFLite */
    return rounding_divide_by_pot(rounding_doubling_high_mul(shifted, multiplier), right_shift);
}

/* sums[i] += the column sums of `reduced` rows of `inner` int8: up to 256 rows at a time in int16
 * (|256 * -128| fits), which the compiler turns into widening vector adds, then into the int32 sums. */
#define COLUMN_BLOCK 512
#define ROW_BLOCK 256

static inline __attribute__((always_inline)) void accumulate_columns(const int8_t *block, size_t reduced,
                                                                     size_t inner, int32_t *sums) {
    int16_t partial[COLUMN_BLOCK];
    for (size_t c0 = 0; c0 < inner; c0 += COLUMN_BLOCK) {
        const size_t columns = inner - c0 < COLUMN_BLOCK ? inner - c0 : COLUMN_BLOCK;
        for (size_t r0 = 0; r0 < reduced; r0 += ROW_BLOCK) {
            const size_t rows = reduced - r0 < ROW_BLOCK ? reduced - r0 : ROW_BLOCK;
            for (size_t i = 0; i < columns; i++) partial[i] = 0;
            for (size_t r = r0; r < r0 + rows; r++) {
                const int8_t *row = block + r * inner + c0;
                for (size_t i = 0; i < columns; i++) partial[i] = (int16_t)(partial[i] + row[i]);
            }
            for (size_t i = 0; i < columns; i++) sums[c0 + i] += partial[i];
        }
    }
}

static void accumulate_portable(const int8_t *block, size_t reduced, size_t inner, int32_t *sums) {
    accumulate_columns(block, reduced, inner, sums);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
static __attribute__((target("avx2"))) void accumulate_avx2(const int8_t *block, size_t reduced, size_t inner,
                                                            int32_t *sums) {
    accumulate_columns(block, reduced, inner, sums);
}

static __attribute__((target("avx512f,avx512bw"))) void accumulate_avx512(const int8_t *block, size_t reduced,
                                                                          size_t inner, int32_t *sums) {
    accumulate_columns(block, reduced, inner, sums);
}
#endif

EDGEQ_API void edgeq_mean_int8(int isa, size_t outer, size_t reduced, size_t inner, const int8_t *x,
                               int32_t zero_point_term, int32_t multiplier, int32_t shift, int32_t single_rounding,
                               int32_t output_zero_point, int32_t low, int32_t high, int32_t *sums, int8_t *out) {
    void (*accumulate)(const int8_t *, size_t, size_t, int32_t *) = accumulate_portable;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (isa == EDGEQ_ISA_AVX512VNNI && edgeq_cpu_supports(isa))
        accumulate = accumulate_avx512;
    else if ((isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI) && edgeq_cpu_supports(isa))
        accumulate = accumulate_avx2;
#endif
    (void)isa;
    for (size_t o = 0; o < outer; o++) {
        for (size_t i = 0; i < inner; i++) sums[i] = 0;
        accumulate(x + o * reduced * inner, reduced, inner, sums);
        for (size_t i = 0; i < inner; i++) {
            const int64_t value = (int64_t)multiply_by_quantized_multiplier(sums[i] - zero_point_term, multiplier,
                                                                            shift, single_rounding) +
                                  output_zero_point;
            out[o * inner + i] = (int8_t)(value < low ? low : (value > high ? high : value));
        }
    }
}
