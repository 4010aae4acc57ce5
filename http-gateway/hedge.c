/* http-gateway/hedge.c: see hedge.h. */
#include "http-gateway/hedge.h"

#include "core/alloc.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int hedge_params_validate(const hedge_params_t *p, char *err, size_t cap)
{
    int n = 0;
    size_t used = 0;
    if (cap)
        err[0] = '\0';
    if (p->delay_ms < 0) {
        n++;
        int w = snprintf(err, cap, "hedge delay_ms is negative");
        used = w > 0 ? (size_t)w : 0;
    }
    if (p->max_attempts < 0 || p->max_attempts > HEDGE_MAX_ATTEMPTS ||
        (p->enabled && p->max_attempts == 1)) {
        n++;
        if (used < cap)
            snprintf(err + used, cap - used, "%shedge max_attempts %d outside [2, %d]",
                     used ? "; " : "", p->max_attempts, HEDGE_MAX_ATTEMPTS);
    }
    return n ? -1 : 0;
}

int hedge_max_attempts(const hedge_params_t *p)
{
    return p->max_attempts > 0 ? p->max_attempts : HEDGE_DEFAULT_ATTEMPTS;
}

void hedge_budget_init(hedge_budget_t *b, int max_tokens, double token_ratio)
{
    if (max_tokens <= 0)
        max_tokens = HEDGE_DEFAULT_MAX_TOKENS;
    if (!(token_ratio > 0))
        token_ratio = HEDGE_DEFAULT_TOKEN_RATIO;
    b->max_milli = (int64_t)max_tokens * 1000;
    b->ratio_milli = (int64_t)llround(token_ratio * 1000.0);
    if (b->ratio_milli < 1)
        b->ratio_milli = 1;
    atomic_init(&b->milli, b->max_milli);
}

bool hedge_budget_allows(const hedge_budget_t *b)
{
    /* tokens > max/2, in thousandths: 2 * milli > max_milli */
    return 2 * atomic_load(&b->milli) > b->max_milli;
}

void hedge_budget_record(hedge_budget_t *b, bool success)
{
    int64_t cur = atomic_load(&b->milli);
    int64_t next;
    do {
        next = success ? cur + b->ratio_milli : cur - 1000;
        if (next > b->max_milli)
            next = b->max_milli;
        if (next < 0)
            next = 0;
    } while (!atomic_compare_exchange_weak(&b->milli, &cur, next));
}

double hedge_budget_tokens(const hedge_budget_t *b)
{
    return (double)atomic_load(&b->milli) / 1000.0;
}

struct hedge_tracker {
    pthread_mutex_t mu;
    size_t n;    /* samples held, <= HEDGE_RING */
    size_t next; /* ring slot for the next sample */
    int64_t ring[HEDGE_RING];
};

hedge_tracker_t *hedge_tracker_new(void)
{
    hedge_tracker_t *t = xcalloc(1, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    return t;
}

void hedge_tracker_free(hedge_tracker_t *t)
{
    if (!t)
        return;
    pthread_mutex_destroy(&t->mu);
    free(t);
}

void hedge_tracker_observe(hedge_tracker_t *t, int64_t latency_us)
{
    if (latency_us < 0)
        latency_us = 0;
    pthread_mutex_lock(&t->mu);
    t->ring[t->next] = latency_us;
    t->next = (t->next + 1) % HEDGE_RING;
    if (t->n < HEDGE_RING)
        t->n++;
    pthread_mutex_unlock(&t->mu);
}

static void swap64(int64_t *x, int64_t *y)
{
    int64_t t = *x;
    *x = *y;
    *y = t;
}

/* The k-th smallest (0-based) of a[0..n), reordering a (quickselect, Lomuto
 * partition around the middle element; n is at most HEDGE_RING). */
static int64_t select_kth(int64_t *a, size_t n, size_t k)
{
    ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1, want = (ptrdiff_t)k;
    while (lo < hi) {
        swap64(&a[lo + (hi - lo) / 2], &a[hi]);
        int64_t pivot = a[hi];
        ptrdiff_t store = lo;
        for (ptrdiff_t i = lo; i < hi; i++)
            if (a[i] < pivot)
                swap64(&a[i], &a[store++]);
        swap64(&a[store], &a[hi]);
        if (want == store)
            return a[store];
        if (want < store)
            hi = store - 1;
        else
            lo = store + 1;
    }
    return a[want];
}

int64_t hedge_tracker_p95_us(hedge_tracker_t *t)
{
    int64_t copy[HEDGE_RING];
    pthread_mutex_lock(&t->mu);
    size_t n = t->n;
    memcpy(copy, t->ring, n * sizeof copy[0]);
    pthread_mutex_unlock(&t->mu);
    if (n < HEDGE_MIN_SAMPLES)
        return -1;
    size_t rank = (n * 95 + 99) / 100; /* ceil(0.95 n), 1-based */
    return select_kth(copy, n, rank - 1);
}

int64_t hedge_delay_ms(hedge_tracker_t *t, const hedge_params_t *p)
{
    if (p->delay_ms > 0)
        return p->delay_ms;
    int64_t us = hedge_tracker_p95_us(t);
    if (us < 0)
        return -1;
    int64_t ms = (us + 999) / 1000;
    return ms < 1 ? 1 : ms;
}
