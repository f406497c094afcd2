/* A parallel for over a few pthreads, started per call: kernels call it only for work large enough
 * (milliseconds) that starting threads (tens of microseconds) is noise. */
#include "native.h"

#if defined(_WIN32)
void edgeq_parallel_for(int count, int threads, void (*work)(void *, int), void *context) {
    (void)threads;
    for (int i = 0; i < count; i++) work(context, i);
}
#else
#include <pthread.h>

typedef struct {
    void (*work)(void *, int);
    void *context;
    int first, last;
} slice_task;

static void *run_slice(void *arg) {
    slice_task *task = (slice_task *)arg;
    for (int i = task->first; i < task->last; i++) task->work(task->context, i);
    return NULL;
}

#define EDGEQ_MAX_THREADS 64

void edgeq_parallel_for(int count, int threads, void (*work)(void *, int), void *context) {
    if (threads > count) threads = count;
    if (threads > EDGEQ_MAX_THREADS) threads = EDGEQ_MAX_THREADS;
    if (threads <= 1) {
        for (int i = 0; i < count; i++) work(context, i);
        return;
    }
    slice_task tasks[EDGEQ_MAX_THREADS];
    pthread_t ids[EDGEQ_MAX_THREADS];
    int started[EDGEQ_MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        tasks[t].work = work;
        tasks[t].context = context;
        tasks[t].first = (int)((long long)count * t / threads);
        tasks[t].last = (int)((long long)count * (t + 1) / threads);
    }
    /* Slice 0 runs on the calling thread; a slice whose thread cannot start runs here too. */
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], NULL, run_slice, &tasks[t]) == 0;
    run_slice(&tasks[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(ids[t], NULL);
        else
            run_slice(&tasks[t]);
    }
}
#endif
