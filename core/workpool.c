/* core/workpool.c: see workpool.h. */
#include "core/workpool.h"

#include "core/alloc.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>

typedef struct job {
    workpool_fn fn;
    void *arg;
    size_t n, next, done; /* items; the next one to take; the ones returned */
    pthread_cond_t cv;    /* signalled when done reaches n */
    struct job *prev, *after;
} job_t;

struct workpool {
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* a job has items to take, or quit */
    job_t *head, *tail;     /* jobs with items not taken yet */
    int max, started, idle;
    bool quit;
    size_t stack;
    pthread_t *th;
};

static void unlink_job(workpool_t *p, job_t *j)
{
    if (j->prev)
        j->prev->after = j->after;
    else
        p->head = j->after;
    if (j->after)
        j->after->prev = j->prev;
    else
        p->tail = j->prev;
    j->prev = j->after = NULL;
}

/* Takes an item of j (p->mu held); the job leaves the queue with its last. */
static size_t take(workpool_t *p, job_t *j)
{
    size_t i = j->next++;
    if (j->next == j->n)
        unlink_job(p, j);
    return i;
}

/* Runs item i of j, then counts it (p->mu held on entry and on return). */
static void run_item(workpool_t *p, job_t *j, size_t i)
{
    pthread_mutex_unlock(&p->mu);
    j->fn(j->arg, i);
    pthread_mutex_lock(&p->mu);
    if (++j->done == j->n)
        pthread_cond_signal(&j->cv);
}

static void *worker(void *arg)
{
    workpool_t *p = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the main thread's */
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && !p->head) {
            p->idle++;
            pthread_cond_wait(&p->work_cv, &p->mu);
            p->idle--;
        }
        if (p->quit)
            break;
        job_t *j = p->head;
        run_item(p, j, take(p, j));
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

workpool_t *workpool_new(int threads, size_t stack_kb)
{
    workpool_t *p = xcalloc(1, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    p->max = threads > 0 ? threads : 0;
    p->stack = (stack_kb ? stack_kb : 256) * 1024;
    p->th = xcalloc(p->max ? (size_t)p->max : 1, sizeof *p->th);
    return p;
}

/* Starts threads until `want` are idle or new (p->mu held): a new thread
 * finds the queued job itself. A thread that cannot be started leaves its
 * items to the others and the caller. */
static void grow(workpool_t *p, int want)
{
    for (int fresh = 0; p->started < p->max && p->idle + fresh < want; fresh++) {
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setstacksize(&at, p->stack);
        int rc = pthread_create(&p->th[p->started], &at, worker, p);
        pthread_attr_destroy(&at);
        if (rc != 0)
            return;
        p->started++;
    }
}

void workpool_run(workpool_t *p, size_t n, workpool_fn fn, void *arg)
{
    if (n == 0)
        return;
    if (n == 1 || p->max == 0) {
        for (size_t i = 0; i < n; i++)
            fn(arg, i);
        return;
    }
    job_t j = {.fn = fn, .arg = arg, .n = n};
    pthread_cond_init(&j.cv, NULL);
    pthread_mutex_lock(&p->mu);
    j.prev = p->tail;
    if (p->tail)
        p->tail->after = &j;
    else
        p->head = &j;
    p->tail = &j;
    int want = n - 1 < (size_t)p->max ? (int)(n - 1) : p->max;
    grow(p, want);
    for (int k = 0; k < want && k < p->idle; k++)
        pthread_cond_signal(&p->work_cv);
    while (j.next < j.n)
        run_item(p, &j, take(p, &j));
    while (j.done < j.n)
        pthread_cond_wait(&j.cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_cond_destroy(&j.cv);
}

int workpool_started(const workpool_t *p)
{
    return p->started;
}

void workpool_free(workpool_t *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++)
        pthread_join(p->th[i], NULL);
    pthread_cond_destroy(&p->work_cv);
    pthread_mutex_destroy(&p->mu);
    free(p->th);
    free(p);
}
