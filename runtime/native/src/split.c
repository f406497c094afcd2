/* Elementwise kernels split into ranges over the thread pool (threads.c). Each value depends on its
 * own inputs only, so the ranges give exactly what one call over the whole array gives; below
 * SPLIT_MIN_VALUES per thread, waking a worker costs more than it saves and one thread runs it. */
#include "native.h"

/* Values per range: a multiple of every vector width, large enough to pay for handing it out. */
#define SPLIT_CHUNK 32768
#define SPLIT_MIN_VALUES 65536

typedef struct {
    void (*range)(const void *args, size_t first, size_t count);
    const void *args;
    size_t count, chunk;
} split_job;

static void split_work(void *context, int index) {
    const split_job *job = (const split_job *)context;
    const size_t first = (size_t)index * job->chunk;
    const size_t count = job->count - first < job->chunk ? job->count - first : job->chunk;
    job->range(job->args, first, count);
}

/* range(args, first, count) over [0, count) in ranges of `chunk` items of `item_values` values each. */
static void run_split(void (*range)(const void *, size_t, size_t), const void *args, size_t count,
                      size_t item_values, int threads) {
    if (threads <= 1 || count * item_values < SPLIT_MIN_VALUES || count < 2) {
        range(args, 0, count);
        return;
    }
    const size_t chunk = (SPLIT_CHUNK + item_values - 1) / item_values;
    split_job job = {range, args, count, chunk};
    edgeq_parallel_for((int)((count + chunk - 1) / chunk), threads, split_work, &job);
}

typedef struct {
    int isa;
    const void *a, *b;
    const void *table;
    const edgeq_add_params *params;
    double dscale;
    float scale, low, high;
    int32_t zero_point, ilow, ihigh;
    void *out;
} elementwise_args;

static void quantize_range(const void *args, size_t first, size_t count) {
    const elementwise_args *e = (const elementwise_args *)args;
    edgeq_quantize_to_int8(e->isa, (const float *)e->a + first, count, e->scale, e->zero_point, e->ilow, e->ihigh,
                           (int8_t *)e->out + first);
}

EDGEQ_API void edgeq_quantize_to_int8_split(int isa, const float *x, size_t count, float scale, int32_t zero_point,
                                            int32_t low, int32_t high, int8_t *out, int threads) {
    elementwise_args e = {.isa = isa, .a = x, .scale = scale, .zero_point = zero_point, .ilow = low, .ihigh = high,
                          .out = out};
    run_split(quantize_range, &e, count, 1, threads);
}

static void dequantize_range(const void *args, size_t first, size_t count) {
    const elementwise_args *e = (const elementwise_args *)args;
    edgeq_dequantize_int8(e->isa, (const int8_t *)e->a + first, count, e->dscale, e->zero_point,
                          (float *)e->out + first);
}

EDGEQ_API void edgeq_dequantize_int8_split(int isa, const int8_t *x, size_t count, double scale, int32_t zero_point,
                                           float *out, int threads) {
    elementwise_args e = {.isa = isa, .a = x, .dscale = scale, .zero_point = zero_point, .out = out};
    run_split(dequantize_range, &e, count, 1, threads);
}

static void add_int8_range(const void *args, size_t first, size_t count) {
    const elementwise_args *e = (const elementwise_args *)args;
    edgeq_add_int8(e->isa, (const int8_t *)e->a + first, (const int8_t *)e->b + first, count, e->params,
                   (int8_t *)e->out + first);
}

EDGEQ_API void edgeq_add_int8_split(int isa, const int8_t *a, const int8_t *b, size_t count,
                                    const edgeq_add_params *params, int8_t *out, int threads) {
    elementwise_args e = {.isa = isa, .a = a, .b = b, .params = params, .out = out};
    run_split(add_int8_range, &e, count, 1, threads);
}

static void lookup_range(const void *args, size_t first, size_t count) {
    const elementwise_args *e = (const elementwise_args *)args;
    edgeq_lookup_pairs_int8(e->isa, (const int8_t *)e->a + first, (const int8_t *)e->b + first, count,
                            (const int8_t *)e->table, (int8_t *)e->out + first);
}

EDGEQ_API void edgeq_lookup_pairs_int8_split(int isa, const int8_t *a, const int8_t *b, size_t count,
                                             const int8_t *table, int8_t *out, int threads) {
    elementwise_args e = {.isa = isa, .a = a, .b = b, .table = table, .out = out};
    run_split(lookup_range, &e, count, 1, threads);
}

/* The bias + clamp pass over a GEMM's [rows][channels], split by whole rows. */
typedef struct {
    int isa, channels;
    float *out;
    const float *bias;
    float low, high;
} bias_activation_args;

static void bias_activation_rows(const void *args, size_t first, size_t count) {
    const bias_activation_args *e = (const bias_activation_args *)args;
    edgeq_bias_activation_f32(e->isa, e->out + first * e->channels, count, e->channels, e->bias, e->low, e->high);
}

EDGEQ_API void edgeq_bias_activation_f32_split(int isa, float *out, size_t rows, int channels, const float *bias,
                                               float low, float high, int threads) {
    bias_activation_args e = {isa, channels, out, bias, low, high};
    run_split(bias_activation_rows, &e, rows, channels > 0 ? (size_t)channels : 1, threads);
}

/* A float GEMM of the BLAS numpy loaded (cblas_sgemm, 32- or 64-bit integers), split into ranges of
 * rows, or of columns, over the pool while that BLAS itself runs on one thread. Callers keep every
 * range large enough that BLAS sums each output as one call over the whole product does (its blocking
 * runs along k; small products take other kernels). Columns when the weights are the larger operand:
 * each range then packs only its own part of them. */
typedef void (*cblas_sgemm_lp64)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                                 const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
typedef void (*cblas_sgemm_ilp64)(int order, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                                  const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                                  int64_t ldc);
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };

typedef struct {
    void *function;
    int ilp64, m, n, k, transpose_b, by_columns;
    const float *a, *b;
    size_t lda, ldb;
    float *c;
} blas_split_args;

static void blas_range(const void *args, size_t first, size_t count) {
    const blas_split_args *e = (const blas_split_args *)args;
    const float *a = e->a, *b = e->b;
    float *c = e->c;
    int64_t m = e->m, n = e->n;
    if (e->by_columns) {
        b += e->transpose_b ? first * e->ldb : first;
        c += first;
        n = (int64_t)count;
    } else {
        a += first * e->lda;
        c += first * (size_t)e->n;
        m = (int64_t)count;
    }
    const int trans_b = e->transpose_b ? CBLAS_TRANS : CBLAS_NO_TRANS;
    if (e->ilp64)
        ((cblas_sgemm_ilp64)e->function)(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, trans_b, m, n, e->k, 1.0f, a,
                                         (int64_t)e->lda, b, (int64_t)e->ldb, 0.0f, c, e->n);
    else
        ((cblas_sgemm_lp64)e->function)(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, trans_b, (int)m, (int)n, e->k, 1.0f, a,
                                        (int)e->lda, b, (int)e->ldb, 0.0f, c, e->n);
}

typedef struct {
    const blas_split_args *args;
    size_t count, chunk;
} blas_split_job;

static void blas_split_work(void *context, int index) {
    const blas_split_job *job = (const blas_split_job *)context;
    const size_t first = (size_t)index * job->chunk;
    blas_range(job->args, first, job->count - first < job->chunk ? job->count - first : job->chunk);
}

/* c [m][n] (rows n apart) = a [m][k] (rows lda apart) . b, b [k][n] rows ldb apart, or with
 * transpose_b its transpose stored [n][k]; `ranges` ranges of rows (or of columns), ceil(m / ranges)
 * (or n) each but the last, on up to `threads` threads. */
EDGEQ_API void edgeq_blas_sgemm_split(void *function, int ilp64, int m, int n, int k, const float *a, size_t lda,
                                      const float *b, size_t ldb, int transpose_b, float *c, int by_columns,
                                      int ranges, int threads) {
    blas_split_args e = {function, ilp64, m, n, k, transpose_b, by_columns, a, b, lda, ldb, c};
    const size_t count = (size_t)(by_columns ? n : m);
    if (ranges < 1) ranges = 1;
    blas_split_job job = {&e, count, (count + ranges - 1) / ranges};
    if (ranges == 1 || threads <= 1 || job.chunk == 0) {
        blas_range(&e, 0, count);
        return;
    }
    edgeq_parallel_for((int)((count + job.chunk - 1) / job.chunk), threads, blas_split_work, &job);
}

/* Float ADD of same-shape arrays with the fused activation as a clamp: one pass, the sum rounded as
 * numpy rounds it (one float add), then clamped as the other float kernels clamp. */
typedef struct {
    const float *a, *b;
    float low, high;
    float *out;
} add_f32_args;

static void add_f32_range(const void *args, size_t first, size_t count) {
    const add_f32_args *e = (const add_f32_args *)args;
    const float *restrict a = e->a + first, *restrict b = e->b + first;
    float *restrict out = e->out + first;
    const float low = e->low, high = e->high;
    for (size_t i = 0; i < count; i++) {
        float v = a[i] + b[i];
        v = v < low ? low : v;
        out[i] = v > high ? high : v;
    }
}

EDGEQ_API void edgeq_add_f32(const float *a, const float *b, size_t count, float low, float high, float *out,
                             int threads) {
    add_f32_args e = {a, b, low, high, out};
    run_split(add_f32_range, &e, count, 1, threads);
}

/* MAX/AVERAGE_POOL_2D split into ranges of output rows: a range is the same pool over one image with
 * fewer output rows and the padding above moved by the rows skipped, so every window is the one the
 * whole call takes. */
typedef struct {
    const edgeq_conv_geometry *g;
    int chunk_rows, chunks_per_image;
    int isa, kind; /* kind: 0 float max, 1 float average, 2 int8 max */
    const void *x;
    void *out;
    float low, high;
    int32_t ilow, ihigh;
} pool_split_job;

static void pool_rows(void *context, int index) {
    const pool_split_job *job = (const pool_split_job *)context;
    const edgeq_conv_geometry *g = job->g;
    const int n = index / job->chunks_per_image, r0 = (index % job->chunks_per_image) * job->chunk_rows;
    edgeq_conv_geometry part = *g;
    part.batch = 1;
    part.out_h = g->out_h - r0 < job->chunk_rows ? g->out_h - r0 : job->chunk_rows;
    part.pad_top = g->pad_top - r0 * g->stride_h;
    const size_t image = (size_t)n * g->in_h * g->in_w * g->in_c;
    const size_t first = ((size_t)n * g->out_h + r0) * g->out_w * g->out_c;
    if (job->kind == 2)
        edgeq_max_pool_int8_isa(job->isa, &part, (const int8_t *)job->x + image, job->ilow, job->ihigh,
                                (int8_t *)job->out + first);
    else
        edgeq_pool_f32(job->isa, job->kind, &part, (const float *)job->x + image, job->low, job->high,
                       (float *)job->out + first);
}

static void run_pool_split(pool_split_job *job, int threads) {
    const edgeq_conv_geometry *g = job->g;
    const long long work = (long long)g->batch * g->out_h * g->out_w * g->out_c * g->k_h * g->k_w;
    if (threads > 1 && g->out_h > 1 && work >= 4 * SPLIT_MIN_VALUES) {
        const int wanted = threads * 2 > g->out_h ? g->out_h : threads * 2; /* ranges per image */
        job->chunk_rows = (g->out_h + wanted - 1) / wanted;
        job->chunks_per_image = (g->out_h + job->chunk_rows - 1) / job->chunk_rows;
        edgeq_parallel_for(g->batch * job->chunks_per_image, threads, pool_rows, job);
        return;
    }
    if (job->kind == 2)
        edgeq_max_pool_int8_isa(job->isa, g, (const int8_t *)job->x, job->ilow, job->ihigh, (int8_t *)job->out);
    else
        edgeq_pool_f32(job->isa, job->kind, g, (const float *)job->x, job->low, job->high, (float *)job->out);
}

EDGEQ_API void edgeq_pool_f32_split(int isa, int average, const edgeq_conv_geometry *g, const float *x, float low,
                                    float high, float *out, int threads) {
    pool_split_job job = {g, 0, 0, isa, average ? 1 : 0, x, out, low, high, 0, 0};
    run_pool_split(&job, threads);
}

EDGEQ_API void edgeq_max_pool_int8_split(int isa, const edgeq_conv_geometry *g, const int8_t *x, int32_t low,
                                         int32_t high, int8_t *out, int threads) {
    pool_split_job job = {g, 0, 0, isa, 2, x, out, 0.0f, 0.0f, low, high};
    run_pool_split(&job, threads);
}
