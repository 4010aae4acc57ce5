/* core/breaker.c: see breaker.h.
 *
 * The window is a ring of one bucket per second; a bucket whose second has left
 * the window is reset when its slot is reused and skipped when summing. Every
 * state change bumps the epoch, so a call admitted in an earlier state cannot
 * influence the new one (resilience4j lets them leak into HALF_OPEN). */
#include "core/breaker.h"

#include "core/alloc.h"
#include "core/clock.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct bucket {
    int64_t sec;
    uint32_t calls;
    uint32_t failures;
    uint32_t slow;
} bucket_t;

struct breaker {
    pthread_mutex_t mu;
    breaker_params_t p;
    breaker_state_t state;
    uint64_t epoch;
    int64_t open_until_ms;      /* OPEN */
    int64_t half_open_since_ms; /* HALF_OPEN */
    int trials_issued;          /* HALF_OPEN permits handed out and not released */
    uint32_t trials_done, trial_failures, trial_slow;
    uint64_t rejected;
    size_t nbuckets;
    bucket_t *buckets;
};

double breaker_percent(double v)
{
    return v <= 1.0 ? v * 100.0 : v;
}

/* Problems joined by "; " into a fixed buffer (truncated, never overflowed). */
typedef struct errbuf {
    char *s;
    size_t cap, used;
    int count;
} errbuf_t;

static void err_add(errbuf_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void err_add(errbuf_t *e, const char *fmt, ...)
{
    e->count++;
    if (e->cap == 0 || e->used + 1 >= e->cap)
        return;
    if (e->count > 1) {
        int n = snprintf(e->s + e->used, e->cap - e->used, "; ");
        e->used += (size_t)n < e->cap - e->used ? (size_t)n : e->cap - e->used - 1;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->s + e->used, e->cap - e->used, fmt, ap);
    va_end(ap);
    if (n > 0)
        e->used += (size_t)n < e->cap - e->used ? (size_t)n : e->cap - e->used - 1;
}

static bool rate_ok(double v)
{
    if (isnan(v) || v < 0)
        return false;
    if (v == 0)
        return true; /* default */
    double pct = breaker_percent(v);
    return pct > 0 && pct <= 100.0;
}

int breaker_params_validate(const breaker_params_t *p, char *err, size_t cap)
{
    errbuf_t e = {err, cap, 0, 0};
    if (cap)
        err[0] = '\0';
    if (!rate_ok(p->failure_rate_threshold))
        err_add(&e, "failure_rate_threshold %g outside (0, 100]", p->failure_rate_threshold);
    if (!rate_ok(p->slow_call_rate_threshold))
        err_add(&e, "slow_call_rate_threshold %g outside (0, 100]", p->slow_call_rate_threshold);
    if (p->slow_call_duration_ms < 0)
        err_add(&e, "slow_call_duration_ms is negative");
    if (p->window_ms < 0 || p->window_ms > BREAKER_MAX_WINDOW_MS)
        err_add(&e, "window_ms %lld outside [0, %d]", (long long)p->window_ms,
                BREAKER_MAX_WINDOW_MS);
    if (p->minimum_calls < 0)
        err_add(&e, "minimum_calls is negative");
    if (p->open_duration_ms < 0)
        err_add(&e, "open_duration_ms is negative");
    if (p->half_open_max_calls < 0 || p->half_open_max_calls > 100000)
        err_add(&e, "half_open_max_calls %d outside [0, 100000]", p->half_open_max_calls);
    if (p->max_half_open_wait_ms < 0)
        err_add(&e, "max_half_open_wait_ms is negative");
    return e.count ? -1 : 0;
}

void breaker_params_normalize(const breaker_params_t *in, breaker_params_t *out)
{
    breaker_params_t p = *in;
    p.failure_rate_threshold = p.failure_rate_threshold > 0
                                   ? breaker_percent(p.failure_rate_threshold)
                                   : BREAKER_DEFAULT_FAILURE_RATE;
    p.slow_call_rate_threshold = p.slow_call_rate_threshold > 0
                                     ? breaker_percent(p.slow_call_rate_threshold)
                                     : BREAKER_DEFAULT_SLOW_RATE;
    if (p.slow_call_duration_ms <= 0)
        p.slow_call_duration_ms = BREAKER_DEFAULT_SLOW_MS;
    if (p.window_ms <= 0)
        p.window_ms = BREAKER_DEFAULT_WINDOW_MS;
    if (p.minimum_calls <= 0)
        p.minimum_calls = BREAKER_DEFAULT_MIN_CALLS;
    if (p.open_duration_ms <= 0)
        p.open_duration_ms = BREAKER_DEFAULT_OPEN_MS;
    if (p.half_open_max_calls <= 0)
        p.half_open_max_calls = BREAKER_DEFAULT_HALF_OPEN_CALLS;
    if (p.max_half_open_wait_ms <= 0)
        p.max_half_open_wait_ms = BREAKER_DEFAULT_HALF_OPEN_WAIT_MS;
    *out = p;
}

breaker_t *breaker_new(const breaker_params_t *p)
{
    char err[256];
    if (breaker_params_validate(p, err, sizeof err) != 0)
        return NULL;
    breaker_t *b = xcalloc(1, sizeof *b);
    breaker_params_normalize(p, &b->p);
    pthread_mutex_init(&b->mu, NULL);
    b->state = BREAKER_CLOSED;
    b->nbuckets = (size_t)((b->p.window_ms + 999) / 1000);
    b->buckets = xcalloc(b->nbuckets, sizeof *b->buckets);
    for (size_t i = 0; i < b->nbuckets; i++)
        b->buckets[i].sec = INT64_MIN;
    return b;
}

void breaker_free(breaker_t *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->mu);
    free(b->buckets);
    free(b);
}

static void window_reset(breaker_t *b)
{
    for (size_t i = 0; i < b->nbuckets; i++)
        b->buckets[i] = (bucket_t){.sec = INT64_MIN};
}

static void window_sum(const breaker_t *b, int64_t now_ms, bucket_t *sum)
{
    int64_t sec = now_ms / 1000;
    *sum = (bucket_t){0};
    for (size_t i = 0; i < b->nbuckets; i++) {
        const bucket_t *k = &b->buckets[i];
        if (k->sec > sec - (int64_t)b->nbuckets && k->sec <= sec) {
            sum->calls += k->calls;
            sum->failures += k->failures;
            sum->slow += k->slow;
        }
    }
}

static bucket_t *window_bucket(breaker_t *b, int64_t now_ms)
{
    int64_t sec = now_ms / 1000;
    bucket_t *k = &b->buckets[(uint64_t)sec % b->nbuckets];
    if (k->sec != sec)
        *k = (bucket_t){.sec = sec};
    return k;
}

static bool over(uint32_t part, uint32_t total, double threshold_pct)
{
    return total > 0 && (double)part * 100.0 >= threshold_pct * (double)total;
}

static void enter(breaker_t *b, breaker_state_t to, int64_t now)
{
    b->state = to;
    b->epoch++;
    b->trials_issued = 0;
    b->trials_done = b->trial_failures = b->trial_slow = 0;
    if (to == BREAKER_OPEN)
        b->open_until_ms = now + b->p.open_duration_ms;
    else if (to == BREAKER_HALF_OPEN)
        b->half_open_since_ms = now;
    else if (to == BREAKER_CLOSED)
        window_reset(b);
}

/* Time-driven transitions. */
static void advance(breaker_t *b, int64_t now)
{
    if (b->state == BREAKER_OPEN && now >= b->open_until_ms)
        enter(b, BREAKER_HALF_OPEN, now);
    if (b->state == BREAKER_HALF_OPEN && now - b->half_open_since_ms >= b->p.max_half_open_wait_ms)
        enter(b, BREAKER_OPEN, now);
}

bool breaker_acquire(breaker_t *b, breaker_permit_t *permit)
{
    int64_t now = clock_mono_ms();
    bool ok = false;
    pthread_mutex_lock(&b->mu);
    advance(b, now);
    permit->epoch = b->epoch;
    permit->trial = false;
    permit->retry_after_ms = 0;
    switch (b->state) {
    case BREAKER_CLOSED:
    case BREAKER_DISABLED: ok = true; break;
    case BREAKER_OPEN: permit->retry_after_ms = b->open_until_ms - now; break;
    case BREAKER_FORCED_OPEN: permit->retry_after_ms = b->p.open_duration_ms; break;
    case BREAKER_HALF_OPEN:
        if (b->trials_issued < b->p.half_open_max_calls) {
            b->trials_issued++;
            permit->trial = true;
            ok = true;
        } else {
            /* the verdict comes when the trials finish, at the latest at the wait limit */
            int64_t left = b->half_open_since_ms + b->p.max_half_open_wait_ms - now;
            permit->retry_after_ms = left < 1000 ? left : 1000;
        }
        break;
    }
    if (!ok) {
        b->rejected++;
        if (permit->retry_after_ms < 1)
            permit->retry_after_ms = 1;
    }
    pthread_mutex_unlock(&b->mu);
    return ok;
}

static void record_closed(breaker_t *b, breaker_outcome_t outcome, bool slow, int64_t now)
{
    bucket_t *k = window_bucket(b, now);
    k->calls++;
    k->failures += outcome == BREAKER_FAILURE;
    k->slow += slow;
    bucket_t sum;
    window_sum(b, now, &sum);
    if (sum.calls < (uint32_t)b->p.minimum_calls)
        return;
    if (over(sum.failures, sum.calls, b->p.failure_rate_threshold) ||
        over(sum.slow, sum.calls, b->p.slow_call_rate_threshold))
        enter(b, BREAKER_OPEN, now);
}

static void record_trial(breaker_t *b, breaker_outcome_t outcome, bool slow, int64_t now)
{
    b->trials_done++;
    b->trial_failures += outcome == BREAKER_FAILURE;
    b->trial_slow += slow;
    if (b->trials_done < (uint32_t)b->p.half_open_max_calls)
        return;
    bool trip = over(b->trial_failures, b->trials_done, b->p.failure_rate_threshold) ||
                over(b->trial_slow, b->trials_done, b->p.slow_call_rate_threshold);
    enter(b, trip ? BREAKER_OPEN : BREAKER_CLOSED, now);
}

void breaker_record(breaker_t *b, const breaker_permit_t *permit, breaker_outcome_t outcome,
                    int64_t duration_ms)
{
    int64_t now = clock_mono_ms();
    bool slow = outcome != BREAKER_IGNORED && duration_ms > b->p.slow_call_duration_ms;
    pthread_mutex_lock(&b->mu);
    advance(b, now);
    if (permit->epoch == b->epoch) {
        if (b->state == BREAKER_CLOSED && outcome != BREAKER_IGNORED)
            record_closed(b, outcome, slow, now);
        else if (b->state == BREAKER_HALF_OPEN && permit->trial && outcome == BREAKER_IGNORED)
            b->trials_issued--;
        else if (b->state == BREAKER_HALF_OPEN && permit->trial)
            record_trial(b, outcome, slow, now);
    }
    pthread_mutex_unlock(&b->mu);
}

breaker_state_t breaker_state(breaker_t *b)
{
    pthread_mutex_lock(&b->mu);
    advance(b, clock_mono_ms());
    breaker_state_t s = b->state;
    pthread_mutex_unlock(&b->mu);
    return s;
}

void breaker_transition(breaker_t *b, breaker_state_t to)
{
    pthread_mutex_lock(&b->mu);
    enter(b, to, clock_mono_ms());
    pthread_mutex_unlock(&b->mu);
}

void breaker_stats(breaker_t *b, breaker_stats_t *out)
{
    int64_t now = clock_mono_ms();
    pthread_mutex_lock(&b->mu);
    advance(b, now);
    out->state = b->state;
    out->rejected = b->rejected;
    if (b->state == BREAKER_HALF_OPEN) {
        out->calls = b->trials_done;
        out->failures = b->trial_failures;
        out->slow = b->trial_slow;
    } else {
        bucket_t sum;
        window_sum(b, now, &sum);
        out->calls = sum.calls;
        out->failures = sum.failures;
        out->slow = sum.slow;
    }
    pthread_mutex_unlock(&b->mu);
}

const char *breaker_state_name(breaker_state_t s)
{
    switch (s) {
    case BREAKER_CLOSED: return "CLOSED";
    case BREAKER_OPEN: return "OPEN";
    case BREAKER_HALF_OPEN: return "HALF_OPEN";
    case BREAKER_FORCED_OPEN: return "FORCED_OPEN";
    case BREAKER_DISABLED: return "DISABLED";
    }
    return "UNKNOWN";
}
