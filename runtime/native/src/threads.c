/* A parallel for over a pool of worker threads started once and parked between calls.
 *
 * Workers are started when a call first asks for them (threads - 1 of them: the calling thread takes
 * part) and then live as long as the process. Between calls they wait on a condition variable, so an
 * idle pool uses no CPU; after a job a worker polls for the next one only for a few microseconds
 * (the gap between two kernels of one invoke), then parks. Indices are handed out one at a time
 * from a shared counter: a worker that wakes late, or a core another process holds, takes fewer of
 * them. Which thread computes an index never changes what it computes, so results do not depend on
 * the thread count.
 *
 * One job runs at a time: a call made while another is in flight (a second Python thread, or a
 * kernel called from a worker) runs on its own thread. Workers block every signal, so Ctrl-C reaches
 * the Python thread. After fork the child starts with no workers (it starts its own when asked); at
 * exit the workers are woken and joined. */
#define _GNU_SOURCE /* pthread_setname_np */
#include "native.h"

#if defined(_WIN32)
void edgeq_parallel_for(int count, int threads, void (*work)(void *, int), void *context) {
    (void)threads;
    for (int i = 0; i < count; i++) work(context, i);
}

EDGEQ_API int edgeq_pool_workers(void) { return 0; }
EDGEQ_API void edgeq_pool_shutdown(void) {}
#else
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EDGEQ_MAX_THREADS 64
/* How long a worker keeps polling for the next job after finishing one before it parks. */
#define POLL_NANOSECONDS 20000L

typedef struct {
    void (*work)(void *, int);
    void *context;
    int count;
    int helpers; /* workers that may join this job */
} pool_job;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;      /* a job was posted, or shutdown */
    pthread_cond_t done;      /* the last worker in a job left it */
    pthread_mutex_t caller;   /* held by the thread whose job runs */
    pthread_t ids[EDGEQ_MAX_THREADS];
    int workers;              /* started */
    int shutdown;
    unsigned long generation; /* jobs posted so far */
    int open;                 /* the current job still admits workers */
    int inside;               /* workers inside the current job */
    pool_job job;
    int next;                 /* next index to hand out (atomic) */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER};

static void run_indices(const pool_job *job) {
    for (;;) {
        const int i = __atomic_fetch_add(&pool.next, 1, __ATOMIC_RELAXED);
        if (i >= job->count) return;
        job->work(job->context, i);
    }
}

static long elapsed_nanoseconds(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000000000L + (now.tv_nsec - start->tv_nsec);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Poll briefly, without the lock, for a job newer than `seen`; 1 if one was posted. */
static int poll_for_job(unsigned long seen) {
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int spins = 0;; spins++) {
        if (__atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE) != seen) return 1;
        if ((spins & 63) == 63 && elapsed_nanoseconds(&start) > POLL_NANOSECONDS) return 0;
        cpu_relax();
    }
}

static void *worker_main(void *arg) {
    const int rank = (int)(size_t)arg; /* 0 for the first worker */
    pthread_mutex_lock(&pool.lock);
    unsigned long seen = pool.generation;
    for (;;) {
        if (pool.generation == seen && !pool.shutdown) {
            pthread_mutex_unlock(&pool.lock);
            poll_for_job(seen);
            pthread_mutex_lock(&pool.lock);
        }
        while (pool.generation == seen && !pool.shutdown) pthread_cond_wait(&pool.wake, &pool.lock);
        if (pool.shutdown) break;
        seen = pool.generation;
        if (!pool.open || rank >= pool.job.helpers) continue;
        pool_job job = pool.job;
        pool.inside++;
        pthread_mutex_unlock(&pool.lock);
        run_indices(&job);
        pthread_mutex_lock(&pool.lock);
        if (--pool.inside == 0 && !pool.open) pthread_cond_signal(&pool.done);
    }
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

/* Start workers until there are `wanted`; returns how many there are. Called with pool.lock held. */
static int start_workers(int wanted) {
    if (pool.workers >= wanted) return pool.workers;
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved); /* inherited: workers never take a signal */
    while (pool.workers < wanted) {
        if (pthread_create(&pool.ids[pool.workers], NULL, worker_main, (void *)(size_t)pool.workers) != 0) break;
#if defined(__GLIBC__)
        pthread_setname_np(pool.ids[pool.workers], "edgeq-worker");
#endif
        pool.workers++;
    }
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    return pool.workers;
}

static void reset_in_child(void) {
    /* Only the forking thread exists in the child: forget the workers and any job in flight. */
    pthread_mutex_init(&pool.lock, NULL);
    pthread_mutex_init(&pool.caller, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.workers = pool.shutdown = pool.open = pool.inside = 0;
}

EDGEQ_API void edgeq_pool_shutdown(void) {
    pthread_mutex_lock(&pool.caller);
    pthread_mutex_lock(&pool.lock);
    pool.shutdown = 1;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    for (int t = 0; t < pool.workers; t++) pthread_join(pool.ids[t], NULL);
    pthread_mutex_lock(&pool.lock);
    pool.workers = 0;
    pool.shutdown = 0;
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.caller);
}

static void shutdown_at_exit(void) {
    /* A job still running on another thread at exit: leave its workers to the process's end. */
    if (pthread_mutex_trylock(&pool.caller) != 0) return;
    pthread_mutex_unlock(&pool.caller);
    edgeq_pool_shutdown();
}

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

static void install_hooks(void) {
    pthread_atfork(NULL, NULL, reset_in_child);
    atexit(shutdown_at_exit);
}

EDGEQ_API int edgeq_pool_workers(void) {
    pthread_mutex_lock(&pool.lock);
    const int workers = pool.workers;
    pthread_mutex_unlock(&pool.lock);
    return workers;
}

void edgeq_parallel_for(int count, int threads, void (*work)(void *, int), void *context) {
    if (threads > count) threads = count;
    if (threads > EDGEQ_MAX_THREADS) threads = EDGEQ_MAX_THREADS;
    if (threads <= 1 || pthread_mutex_trylock(&pool.caller) != 0) {
        for (int i = 0; i < count; i++) work(context, i);
        return;
    }
    pthread_once(&hooks_once, install_hooks);
    pthread_mutex_lock(&pool.lock);
    const int helpers = start_workers(threads - 1) < threads - 1 ? pool.workers : threads - 1;
    pool_job job = {work, context, count, helpers};
    pool.job = job;
    __atomic_store_n(&pool.next, 0, __ATOMIC_RELAXED);
    pool.open = 1;
    pool.inside = 0;
    __atomic_store_n(&pool.generation, pool.generation + 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);

    run_indices(&job);

    /* Every index is handed out: close the job to late workers and wait for those inside. */
    pthread_mutex_lock(&pool.lock);
    pool.open = 0;
    while (pool.inside > 0) pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.caller);
}
#endif
