/* int8 DEPTHWISE_CONV_2D, direct: per output pixel, the taps inside the input accumulate
 * (x - input_zero_point) * w into int32 per channel (padding contributes 0, as in TFLite's
 * reference DepthwiseConvPerChannel), then the output stage. The channel loops are plain C that the
 * compiler vectorizes; each variant instantiates them under its own target attribute. */
#include <stdlib.h>

#include "native.h"

typedef struct {
    const edgeq_conv_geometry *g;
    int depth_multiplier;
    const int8_t *x;
    const int16_t *filters; /* [k_h][k_w][out_c] */
    const edgeq_output_stage *stage;
    edgeq_stage_fn run_stage;
    int8_t *out;
    int failed;
} depthwise_job;

#define STACK_CHANNELS 1024

/* One output row (image n, row oy): index = n * out_h + oy. */
static inline __attribute__((always_inline)) void depthwise_row(depthwise_job *job, int index) {
    const edgeq_conv_geometry *g = job->g;
    const int out_c = g->out_c, in_c = g->in_c, multiplier = job->depth_multiplier;
    const int n = index / g->out_h, oy = index % g->out_h;
    const int32_t input_offset = -g->input_zero_point;
    int32_t stack_acc[STACK_CHANNELS];
    int32_t *acc = out_c <= STACK_CHANNELS ? stack_acc : (int32_t *)malloc(sizeof(int32_t) * out_c);
    if (!acc) {
        job->failed = 1;
        return;
    }
    const int8_t *image = job->x + (size_t)n * g->in_h * g->in_w * in_c;
    int8_t *out_row = job->out + ((size_t)n * g->out_h + oy) * g->out_w * out_c;
    for (int ox = 0; ox < g->out_w; ox++) {
        for (int c = 0; c < out_c; c++) acc[c] = 0;
        for (int ky = 0; ky < g->k_h; ky++) {
            const int iy = oy * g->stride_h - g->pad_top + ky * g->dil_h;
            if (iy < 0 || iy >= g->in_h) continue;
            for (int kx = 0; kx < g->k_w; kx++) {
                const int ix = ox * g->stride_w - g->pad_left + kx * g->dil_w;
                if (ix < 0 || ix >= g->in_w) continue;
                const int8_t *src = image + ((size_t)iy * g->in_w + ix) * in_c;
                const int16_t *w = job->filters + ((size_t)ky * g->k_w + kx) * out_c;
                if (multiplier == 1) {
                    for (int c = 0; c < out_c; c++) acc[c] += (int32_t)(int16_t)(src[c] + input_offset) * w[c];
                } else {
                    for (int c = 0; c < out_c; c++)
                        acc[c] += (int32_t)(int16_t)(src[c / multiplier] + input_offset) * w[c];
                }
            }
        }
        job->run_stage(job->stage, acc, out_c, 1, 0, out_c, out_row + (size_t)ox * out_c, (size_t)out_c);
    }
    if (acc != stack_acc) free(acc);
}

static void depthwise_portable(void *context, int index) { depthwise_row((depthwise_job *)context, index); }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2"))) static void depthwise_avx2(void *context, int index) {
    depthwise_row((depthwise_job *)context, index);
}

__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) static void depthwise_avx512(void *context, int index) {
    depthwise_row((depthwise_job *)context, index);
}
#endif

#define PARALLEL_MIN_MACS 1000000LL

int edgeq_depthwise(int isa, const edgeq_conv_geometry *g, int depth_multiplier, const int8_t *x,
                    const int16_t *filters, const edgeq_output_stage *stage, int8_t *out, int threads) {
    void (*work)(void *, int) = depthwise_portable;
    if (!edgeq_isa_supported(isa)) return -1;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (isa == EDGEQ_ISA_AVX512VNNI) work = depthwise_avx512;
    else if (isa == EDGEQ_ISA_AVX2 || isa == EDGEQ_ISA_AVXVNNI) work = depthwise_avx2;
#endif
    depthwise_job job = {g, depth_multiplier, x, filters, stage, edgeq_stage_for(isa), out, 0};
    const int rows = g->batch * g->out_h;
    if ((long long)rows * g->out_w * g->out_c * g->k_h * g->k_w < PARALLEL_MIN_MACS) threads = 1;
    edgeq_parallel_for(rows, threads, work, &job);
    return job.failed ? -2 : 0;
}
