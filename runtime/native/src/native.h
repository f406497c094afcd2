/* edgeq native kernels: shared declarations.
 *
 * Plain C99 with intrinsics. Every instruction-set variant is compiled into the one library with
 * function-level target attributes and chosen at run time (cpu.c), so a build on any x86-64 or
 * aarch64 machine runs on every other of its kind. Python reaches these functions through ctypes
 * (runtime/native/__init__.py); the layouts below are mirrored there. */
#ifndef EDGEQ_NATIVE_H
#define EDGEQ_NATIVE_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define EDGEQ_API __declspec(dllexport)
#else
#define EDGEQ_API __attribute__((visibility("default")))
#endif

/* Instruction-set variants, lowest first. Only the ones of the build's architecture exist. */
enum {
    EDGEQ_ISA_PORTABLE = 0,
    EDGEQ_ISA_AVX2 = 1,
    EDGEQ_ISA_AVXVNNI = 2,
    EDGEQ_ISA_AVX512VNNI = 3,
    EDGEQ_ISA_NEON = 4,        /* aarch64 vmlal_s16 (Cortex-A72 class) */
    EDGEQ_ISA_NEON_DOTPROD = 5 /* aarch64 vdotq_s32 (Cortex-A76 class) */
};
#define EDGEQ_ISA_COUNT 6

/* The output stage that turns an int32 accumulator of column c into int8.
 * FOLDED: TFLite's double-rounding MultiplyByQuantizedMultiplier with bias, zero points and output
 *   offset folded per channel (runtime/kernels/requantize.py, fold_requantization):
 *   t = acc * multiplier[c] + bias[c]; if (t < threshold[c]) t -= correction[c]; r = t >> shift[c].
 * FLOAT_SCALE: TFLite's reference int8 FULLY_CONNECTED: r = round(double(acc + bias[c]) * scale[c])
 *   (ties away from zero; out of int32 range gives INT32_MIN, as x86-64's cast), + offset.
 * Then r is clamped to [low, high]. */
enum { EDGEQ_STAGE_FOLDED = 0, EDGEQ_STAGE_FLOAT_SCALE = 1 };

typedef struct {
    int32_t kind;
    int32_t offset;
    int32_t low;
    int32_t high;
    const int64_t *multiplier;
    const int64_t *bias;
    const int64_t *threshold;
    const int64_t *correction;
    const int64_t *shift;
    const double *scale;
    /* FOLDED only, or NULL: the same constants in the 32-bit-lane layout of edgeq_stage_lanes_prepare. */
    const void *lanes;
} edgeq_output_stage;

/* A convolution's geometry, NHWC; a plain GEMM [rows, depth] is a 1x1 convolution over a
 * 1 x rows image. */
typedef struct {
    int32_t batch, in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;
    int32_t input_zero_point;
} edgeq_conv_geometry;

/* The taps of output pixel (oy, ox) whose input pixel lies inside the input (the others read padding),
 * in the filter's order: their number, and for each its input row, input column and filter index
 * ky * k_w + kx. The arrays hold k_h * k_w entries. */
static inline int edgeq_window_taps(const edgeq_conv_geometry *g, int oy, int ox, int *rows, int *cols, int *index) {
    int taps = 0;
    for (int ky = 0; ky < g->k_h; ky++) {
        const int iy = oy * g->stride_h - g->pad_top + ky * g->dil_h;
        if (iy < 0 || iy >= g->in_h) continue;
        for (int kx = 0; kx < g->k_w; kx++) {
            const int ix = ox * g->stride_w - g->pad_left + kx * g->dil_w;
            if (ix < 0 || ix >= g->in_w) continue;
            rows[taps] = iy, cols[taps] = ix, index[taps++] = ky * g->k_w + kx;
        }
    }
    return taps;
}

/* cpu.c */
int edgeq_cpu_supports(int isa);

/* The output stage of `rows` rows of `count` accumulators for columns col0.., as the variant `isa` runs it. */
typedef void (*edgeq_stage_fn)(const edgeq_output_stage *stage, const int32_t *acc, int acc_stride, int rows,
                               int col0, int count, int8_t *out, size_t out_stride);
edgeq_stage_fn edgeq_stage_for(int isa);
/* qgemm.c: out [rows][count] = the stage of acc [rows][count] as variant `isa` runs it (-1: not here). */
EDGEQ_API int edgeq_output_stage_rows(int isa, const edgeq_output_stage *stage, const int32_t *acc, int rows, int count,
                                      int8_t *out);

/* output_stage_avx512.c: a folded stage's constants rearranged (once, in prepare) for the AVX-512 and NEON stages
 * in 32-bit lanes: EDGEQ_STAGE_LANE_GROUP_BYTES per 16 columns (ceil(count / 16) groups). Returns 0 when
 * some column's constants do not allow that form (a multiplier above INT32_MAX, an unusual shift), and
 * the stage then runs without it. */
#define EDGEQ_STAGE_LANE_GROUP_BYTES 384
EDGEQ_API size_t edgeq_stage_lanes_bytes(int count);
EDGEQ_API int edgeq_stage_lanes_prepare(const edgeq_output_stage *stage, int count, void *lanes);

#if defined(__x86_64__)
/* output_stage_avx512.c: the folded stage in 32-bit lanes where multipliers fit in int32 (0: not done). */
int edgeq_stage_avx512_narrow(const edgeq_output_stage *stage, const int32_t *acc, int acc_stride, int rows, int col0,
                              int count, int8_t *out, size_t out_stride);
#endif

/* qgemm.c: packed weights are int8 [ceil(N/32)*2 blocks of 16 columns][ceil(K/4)][16][4]. */
EDGEQ_API int edgeq_isa_compiled(int isa);
EDGEQ_API int edgeq_isa_supported(int isa);
EDGEQ_API int edgeq_isa_input_shift(int isa);
EDGEQ_API size_t edgeq_packed_bytes(int out_c, int depth);
/* Whether AVX512-VNNI convolutions may run on AMX tiles where the CPU and the OS allow (on: asks Linux
 * for the tile state once; -1: changes nothing); returns whether they do. */
EDGEQ_API int edgeq_amx_set(int on);
EDGEQ_API void edgeq_pack_weights(int out_c, int depth, const int8_t *weights, int8_t *packed);
EDGEQ_API int edgeq_conv(int isa, const edgeq_conv_geometry *g, const int8_t *x, const int8_t *packed,
                         const edgeq_output_stage *stage, int8_t *out, int threads);

/* dwconv.c */
EDGEQ_API int edgeq_depthwise(int isa, const edgeq_conv_geometry *g, int depth_multiplier, const int8_t *x,
                              const int16_t *filters, const edgeq_output_stage *stage, int8_t *out, int threads);

/* dwconv_pairs.c: depth multiplier 1 as tap-pair products (x86-64 AVX2/AVX-VNNI/AVX512-VNNI, int16
 * pair dot products; aarch64 NEON, int8 products summed in int16 pairs, which refuses weights of -128;
 * 0 bytes / -1 where the variant has none). Filters int8 [taps][channels] pack once; the stage's bias
 * must hold -input_zero_point * the sum of each channel's weights over all taps. */
EDGEQ_API size_t edgeq_depthwise_pairs_packed_bytes(int isa, int taps, int channels);
EDGEQ_API int edgeq_depthwise_pairs_pack(int isa, int taps, int channels, const int8_t *filters, int16_t *packed);
EDGEQ_API int edgeq_depthwise_pairs(int isa, const edgeq_conv_geometry *g, const int8_t *x, const int16_t *packed,
                                    const edgeq_output_stage *stage, int8_t *out, int threads);

/* elementwise.c: TFLite's quantized ADD/SUB parameters (elementwise.py, _prepare_add_sub_int). */
typedef struct {
    int32_t input1_offset, input2_offset, left_shift;
    int32_t input1_multiplier, input1_shift, input2_multiplier, input2_shift;
    int32_t output_multiplier, output_shift, output_offset, low, high, subtract;
} edgeq_add_params;

EDGEQ_API void edgeq_add_int8(int isa, const int8_t *a, const int8_t *b, size_t count, const edgeq_add_params *params,
                              int8_t *out);
/* add_int8_simd.c: the leading multiple of the vector width of an int8 ADD/SUB in vector lanes (the
 * variant's, where its parameters allow); returns how many values it did. */
size_t edgeq_add_int8_vectors(int isa, const int8_t *a, const int8_t *b, size_t count, const edgeq_add_params *p,
                              int8_t *out);
EDGEQ_API void edgeq_max_pool_int8(const edgeq_conv_geometry *g, const int8_t *x, int32_t low, int32_t high,
                                   int8_t *out);

/* quantize.c: per-tensor float32 -> int8 QUANTIZE and int8 -> float32 DEQUANTIZE, vectorized per variant. */
EDGEQ_API void edgeq_quantize_to_int8(int isa, const float *x, size_t count, float scale, int32_t zero_point,
                                      int32_t low, int32_t high, int8_t *out);
EDGEQ_API void edgeq_dequantize_int8(int isa, const int8_t *x, size_t count, double scale, int32_t zero_point,
                                     float *out);

/* maxpool_int8.c: edgeq_max_pool_int8 vectorized for the variant `isa` (the portable form elsewhere). */
EDGEQ_API void edgeq_max_pool_int8_isa(int isa, const edgeq_conv_geometry *g, const int8_t *x, int32_t low,
                                       int32_t high, int8_t *out);

/* lookup_int8.c: out[i] = table[(uint8)a[i] * 256 + (uint8)b[i]], table 65536 + 4 bytes. */
EDGEQ_API void edgeq_lookup_pairs_int8(int isa, const int8_t *a, const int8_t *b, size_t count, const int8_t *table,
                                       int8_t *out);

/* dwconv_f32.c: which float code the int8 variant `isa` goes with: its vector unit, if the CPU has
 * what the float kernels need of it (FMA beside AVX2). */
enum { EDGEQ_FLOAT_PORTABLE = 0, EDGEQ_FLOAT_AVX2 = 1, EDGEQ_FLOAT_AVX512 = 2, EDGEQ_FLOAT_NEON = 3 };
int edgeq_float_level(int isa);

/* sgemm.c: c [m][n] = clamp(a [m][k] (rows lda apart) . w^T + bias, low, high), w [n][k] packed once in
 * panels of edgeq_sgemm_panel_width(isa) columns; bias NULL or padded with zeros to whole panels of 32. */
EDGEQ_API size_t edgeq_sgemm_packed_floats(int isa, int k, int n);
EDGEQ_API int edgeq_sgemm_panel_width(int isa);
EDGEQ_API void edgeq_sgemm_pack(int isa, int k, int n, const float *w, float *packed);
EDGEQ_API int edgeq_sgemm(int isa, int m, int k, int n, const float *a, size_t lda, const float *packed,
                          const float *bias, float low, float high, float *c, int threads);
/* sgemm.c: a float CONV_2D as im2col + GEMM, a band of output pixels at a time, so the patches never
 * take more than a band (in L2): out [batch * out_h * out_w][out_c] = clamp(patches . w^T + bias), w
 * packed as for edgeq_sgemm with k = k_h * k_w * in_c; padding taps are zero. */
EDGEQ_API int edgeq_conv_f32(int isa, const edgeq_conv_geometry *g, const float *x, const float *packed,
                             const float *bias, float low, float high, float *out, int threads);

/* dwconv_f32.c: float32 depthwise convolution, filters [k_h][k_w][out_c], with the bias (or NULL) and
 * the fused activation as a clamp to [low, high]; the bias + clamp pass over a GEMM's [rows][channels]. */
EDGEQ_API int edgeq_depthwise_f32(int isa, const edgeq_conv_geometry *g, int depth_multiplier, const float *x,
                                  const float *filters, const float *bias, float low, float high, float *out,
                                  int threads);
EDGEQ_API void edgeq_bias_activation_f32(int isa, float *out, size_t rows, int channels, const float *bias,
                                         float low, float high);
/* A float 1x1 CONV_2D as a GEMM: weights packed as for edgeq_sgemm into n output channels, bias NULL or
 * padded, the clamp. */
typedef struct {
    int32_t n;
    const float *packed, *bias;
    float low, high;
} edgeq_pointwise_f32;

/* dwconv_f32.c: a float CONV_2D (x [batch][..][..][in_c]: a 1x1 one when `first` is NULL, else one of
 * geometry `first`, through im2col; weights packed as for edgeq_sgemm, bias or NULL, clamp) feeding a
 * 3x3 DEPTHWISE_CONV_2D of geometry g (multiplier 1, no dilation, stride 1-3), and, if `project` is not
 * NULL, the depthwise feeding that 1x1 CONV_2D (out then has project->n channels): the first
 * convolution's output rows are made as the depthwise needs them, three at most kept, and each depthwise
 * output row goes straight into `project`, so the tensors between the ops never exist. */
#define EDGEQ_FUSED_MAX_ROWS 4096
EDGEQ_API int edgeq_pointwise_depthwise_f32(int isa, const edgeq_conv_geometry *g, const edgeq_conv_geometry *first,
                                            int in_c, const float *x, const float *packed, const float *conv_bias,
                                            float conv_low, float conv_high, const float *filters,
                                            const float *bias, float low, float high,
                                            const edgeq_pointwise_f32 *project, float *out, int threads);

/* pool.c: float32 max (average = 0) or average (1) pool, int8 average pool (scratch: in_c int32), and
 * the float32 im2col of a convolution ([batch * out_h * out_w][k_h * k_w * in_c], fill on padding). */
EDGEQ_API void edgeq_pool_f32(int isa, int average, const edgeq_conv_geometry *g, const float *x, float low,
                              float high, float *out);
EDGEQ_API void edgeq_average_pool_int8(int isa, const edgeq_conv_geometry *g, const int8_t *x, int32_t low,
                                       int32_t high, int32_t *scratch, int8_t *out);
EDGEQ_API void edgeq_im2col_f32(const edgeq_conv_geometry *g, const float *x, float fill, float *columns);
/* The same for the output pixels [first, first + count) only, into columns [count][patch]. */
void edgeq_im2col_rows_f32(const edgeq_conv_geometry *g, const float *x, float fill, size_t first, size_t count,
                           float *columns);

/* softmax_int8.c: int8 SOFTMAX of rows [rows][depth] through the 256-entry Q0.31 exponential and Q12.19
 * sum-term tables of softmax.py, int8 (output_bits 8) or int16 (16) out; depth <= 4096. */
EDGEQ_API void edgeq_softmax_int8(size_t rows, size_t depth, const int8_t *x, const int32_t *exp_table,
                                  const int32_t *sum_term_table, int output_bits, void *out);

/* mean_int8.c: int8 MEAN of x [outer][reduced][inner] over the middle axis (reduce.py's folded
 * multiplier), sums: inner int32 of scratch; the column sums vectorized for the variant `isa`. */
EDGEQ_API void edgeq_mean_int8(int isa, size_t outer, size_t reduced, size_t inner, const int8_t *x, int32_t zero_point_term,
                               int32_t multiplier, int32_t shift, int32_t single_rounding, int32_t output_zero_point,
                               int32_t low, int32_t high, int32_t *sums, int8_t *out);

/* concat.c: out [outer][sum of widths] bytes = each input's [outer][widths[k]] bytes side by side. */
EDGEQ_API void edgeq_concat(size_t outer, int count, const void *const *inputs, const size_t *widths, void *out);

/* threads.c: run work(context, index) for index in [0, count) on up to `threads` threads (the caller
 * and workers of a pool started once, parked between calls); the workers started so far; stopping
 * and joining them (the next call starts them again). */
void edgeq_parallel_for(int count, int threads, void (*work)(void *context, int index), void *context);
EDGEQ_API int edgeq_pool_workers(void);
EDGEQ_API void edgeq_pool_shutdown(void);

/* split.c: QUANTIZE, DEQUANTIZE, int8 ADD/SUB, the pair-table lookup and the float bias + clamp pass as
 * above, split into ranges over up to `threads` threads when large enough. */
EDGEQ_API void edgeq_quantize_to_int8_split(int isa, const float *x, size_t count, float scale, int32_t zero_point,
                                            int32_t low, int32_t high, int8_t *out, int threads);
EDGEQ_API void edgeq_dequantize_int8_split(int isa, const int8_t *x, size_t count, double scale, int32_t zero_point,
                                           float *out, int threads);
EDGEQ_API void edgeq_add_int8_split(int isa, const int8_t *a, const int8_t *b, size_t count,
                                    const edgeq_add_params *params, int8_t *out, int threads);
EDGEQ_API void edgeq_lookup_pairs_int8_split(int isa, const int8_t *a, const int8_t *b, size_t count,
                                             const int8_t *table, int8_t *out, int threads);
EDGEQ_API void edgeq_bias_activation_f32_split(int isa, float *out, size_t rows, int channels, const float *bias,
                                               float low, float high, int threads);
/* split.c: out = clamp(a + b, low, high) of float32 arrays of `count` values. */
EDGEQ_API void edgeq_add_f32(const float *a, const float *b, size_t count, float low, float high, float *out,
                             int threads);
/* split.c: edgeq_pool_f32 and edgeq_max_pool_int8_isa split into ranges of output rows. */
EDGEQ_API void edgeq_pool_f32_split(int isa, int average, const edgeq_conv_geometry *g, const float *x, float low,
                                    float high, float *out, int threads);
EDGEQ_API void edgeq_max_pool_int8_split(int isa, const edgeq_conv_geometry *g, const int8_t *x, int32_t low,
                                         int32_t high, int8_t *out, int threads);
/* split.c: the cblas_sgemm at `function` (64-bit integers if ilp64) on ranges of rows (or columns)
 * over the pool. */
EDGEQ_API void edgeq_blas_sgemm_split(void *function, int ilp64, int m, int n, int k, const float *a, size_t lda,
                                      const float *b, size_t ldb, int transpose_b, float *c, int by_columns,
                                      int ranges, int threads);

#endif
