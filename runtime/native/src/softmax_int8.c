/* int8 SOFTMAX over the last axis as TFLite's reference kernel (reference_ops::Softmax, gemmlowp fixed
 * point), the numpy form in runtime/kernels/softmax.py: each difference max - x in [0, 255] reads its
 * Q0.31 exponential and its Q12.19 term of the sum from two 256-entry tables made in prepare; the
 * reciprocal of the row's sum is GetReciprocal (gemmlowp's one_over_one_plus_x_for_x_in_0_1, three
 * Newton-Raphson steps), written here one scalar per row with the same integer steps as the numpy form.
 * The output is int8 (zero point -128) or int16 (-32768): output_bits 8 or 16. */
#include "native.h"

/* gemmlowp's SaturatingRoundingDoublingHighMul: the high half of 2ab, rounded half away from zero. */
static int32_t rounding_doubling_high_mul(int32_t a, int32_t b) {
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    const int64_t product = (int64_t)a * b;
    const int64_t nudge = product >= 0 ? (1 << 30) : (1 - (1 << 30));
    return (int32_t)((product + nudge) / ((int64_t)1 << 31)); /* C division truncates toward zero */
}

/* gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero. */
static int32_t rounding_divide_by_pot(int64_t x, int exponent) {
    const int64_t mask = ((int64_t)1 << exponent) - 1;
    const int64_t remainder = x & mask, threshold = (mask >> 1) + (x < 0);
    return (int32_t)((x >> exponent) + (remainder > threshold));
}

static int32_t wrap_int32(int64_t x) { return (int32_t)(uint32_t)(uint64_t)x; }

static int32_t rounding_half_sum(int32_t a, int32_t b) {
    int64_t total = (int64_t)a + b;
    total += total >= 0 ? 1 : -1;
    return (int32_t)(total / 2);
}

/* SaturatingRoundingMultiplyByPOT for exponent 1 or 2: a left shift saturating to the int32 range. */
static int32_t saturating_multiply_by_pot(int32_t x, int exponent) {
    const int64_t threshold = ((int64_t)1 << (31 - exponent)) - 1;
    if (x > threshold) return INT32_MAX;
    if (x < -threshold) return INT32_MIN;
    return wrap_int32((int64_t)x * ((int64_t)1 << exponent));
}

static int32_t one_over_one_plus_x_for_x_in_0_1(int32_t a) {
    const int32_t half_denominator = rounding_half_sum(a, INT32_MAX);
    int32_t x = wrap_int32((int64_t)1515870810 + rounding_doubling_high_mul(half_denominator, -1010580540));
    for (int step = 0; step < 3; step++) {
        const int32_t half_denominator_times_x = rounding_doubling_high_mul(half_denominator, x);
        const int32_t one_minus = wrap_int32(((int64_t)1 << 29) - (int64_t)half_denominator_times_x);
        x = wrap_int32((int64_t)x + saturating_multiply_by_pot(rounding_doubling_high_mul(x, one_minus), 2));
    }
    return saturating_multiply_by_pot(x, 1);
}

static int leading_zeros_u32(uint32_t x) {
    if (x == 0) return 32;
    int count = 0;
    while (!(x & 0x80000000u)) {
        x <<= 1;
        count++;
    }
    return count;
}

#define ACCUMULATION_INTEGER_BITS 12

EDGEQ_API void edgeq_softmax_int8(size_t rows, size_t depth, const int8_t *x, const int32_t *exp_table,
                                  const int32_t *sum_term_table, int output_bits, void *out) {
    const int32_t output_min = output_bits == 8 ? -128 : -32768, output_max = output_bits == 8 ? 127 : 32767;
    for (size_t r = 0; r < rows; r++) {
        const int8_t *row = x + r * depth;
        int32_t max = -128;
        for (size_t i = 0; i < depth; i++) max = row[i] > max ? row[i] : max;
        int64_t sum = 0;
        for (size_t i = 0; i < depth; i++) sum += sum_term_table[max - row[i]];
        /* GetReciprocal(sum, 12) */
        const int headroom_plus_one = leading_zeros_u32((uint32_t)((uint64_t)sum & 0xFFFFFFFFu));
        const int num_bits_over_unit = ACCUMULATION_INTEGER_BITS - headroom_plus_one;
        const int32_t shifted_sum_minus_one =
            wrap_int32((int64_t)((((uint64_t)sum << headroom_plus_one) & 0xFFFFFFFFu)) - ((int64_t)1 << 31));
        const int32_t shifted_scale = one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one);
        const int exponent = num_bits_over_unit + 31 - output_bits;
        for (size_t i = 0; i < depth; i++) {
            const int32_t scaled = rounding_doubling_high_mul(shifted_scale, exp_table[max - row[i]]);
            int32_t value = rounding_divide_by_pot(scaled, exponent) + output_min;
            value = value < output_min ? output_min : (value > output_max ? output_max : value);
            if (output_bits == 8)
                ((int8_t *)out)[r * depth + i] = (int8_t)value;
            else
                ((int16_t *)out)[r * depth + i] = (int16_t)value;
        }
    }
}
