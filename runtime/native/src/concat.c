/* CONCATENATION of inputs that share the output's type and quantization: a copy. The output viewed as
 * [outer][sum of the inputs' widths] bytes takes, for each outer index, each input's row of `widths[k]`
 * bytes in turn: the output is written in order. Rows are short (a feature map's channels, 64-512 bytes),
 * so a whole number of 16-byte blocks is copied inline, where a call to memcpy per row would cost more
 * than the bytes. */
#include <string.h>

#include "native.h"

static inline void copy_row(char *target, const char *source, size_t width) {
    size_t i = 0;
    for (; i + 16 <= width; i += 16) memcpy(target + i, source + i, 16); /* one 16-byte move each */
    if (i < width) memcpy(target + i, source + i, width - i);
}

EDGEQ_API void edgeq_concat(size_t outer, int count, const void *const *inputs, const size_t *widths, void *out) {
    size_t total = 0;
    for (int k = 0; k < count; k++) total += widths[k];
    if (outer == 1 || total >= 4096) { /* long rows: memcpy's own loop is the faster one */
        for (size_t o = 0; o < outer; o++) {
            char *target = (char *)out + o * total;
            for (int k = 0; k < count; k++) {
                memcpy(target, (const char *)inputs[k] + o * widths[k], widths[k]);
                target += widths[k];
            }
        }
        return;
    }
    for (size_t o = 0; o < outer; o++) {
        char *target = (char *)out + o * total;
        for (int k = 0; k < count; k++) {
            copy_row(target, (const char *)inputs[k] + o * widths[k], widths[k]);
            target += widths[k];
        }
    }
}
