/* CONCATENATION of inputs that share the output's type and quantization: a copy. The output viewed as
 * [outer][sum of the inputs' widths] bytes takes, for each outer index, each input's row of `widths[k]`
 * bytes in turn (one memcpy per slice). */
#include <string.h>

#include "native.h"

EDGEQ_API void edgeq_concat(size_t outer, int count, const void *const *inputs, const size_t *widths, void *out) {
    size_t total = 0;
    for (int k = 0; k < count; k++) total += widths[k];
    size_t offset = 0;
    for (int k = 0; k < count; offset += widths[k], k++) {
        const char *source = (const char *)inputs[k];
        char *target = (char *)out + offset;
        const size_t width = widths[k];
        for (size_t o = 0; o < outer; o++) memcpy(target + o * total, source + o * width, width);
    }
}
