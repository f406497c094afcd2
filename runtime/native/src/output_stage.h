/* The output stage (native.h, edgeq_output_stage) of one row of accumulators, as an always-inline
 * body: each instruction-set variant instantiates it under its own target attribute, so the
 * compiler vectorizes it for that variant. */
#ifndef EDGEQ_OUTPUT_STAGE_H
#define EDGEQ_OUTPUT_STAGE_H

#include <math.h>

#include "native.h"

static inline __attribute__((always_inline)) void output_stage_row(const edgeq_output_stage *stage,
                                                                  const int32_t *acc, int col0, int count,
                                                                  int8_t *out) {
    const int64_t low = stage->low, high = stage->high;
    if (stage->kind == EDGEQ_STAGE_FOLDED) {
        const int64_t *multiplier = stage->multiplier + col0, *bias = stage->bias + col0;
        const int64_t *threshold = stage->threshold + col0, *correction = stage->correction + col0;
        const int64_t *shift = stage->shift + col0;
        for (int j = 0; j < count; j++) {
            /* Unsigned arithmetic: the product alone may pass 2^63 when the bias folds in a large
             * zero-point term; the sum, the true value, is below 2^62 (checked in prepare). */
            int64_t t = (int64_t)((uint64_t)(int64_t)acc[j] * (uint64_t)multiplier[j] + (uint64_t)bias[j]);
            t -= t < threshold[j] ? correction[j] : 0;
            t >>= shift[j];
            t = t < low ? low : (t > high ? high : t);
            out[j] = (int8_t)t;
        }
    } else {
        const int64_t *bias = stage->bias + col0;
        const double *scale = stage->scale + col0;
        const int64_t offset = stage->offset;
        for (int j = 0; j < count; j++) {
            double v = round((double)((int64_t)acc[j] + bias[j]) * scale[j]);
            int64_t q = (v > -2147483649.0 && v < 2147483648.0) ? (int64_t)v : (int64_t)INT32_MIN;
            q += offset;
            q = q < low ? low : (q > high ? high : q);
            out[j] = (int8_t)q;
        }
    }
}

#endif
