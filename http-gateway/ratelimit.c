/* http-gateway/ratelimit.c: GCRA (see ratelimit.h). Times are kept in
 * microseconds so that limits of thousands per second stay exact. */
#include "http-gateway/ratelimit.h"

#include "core/alloc.h"
#include "core/strmap.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define STRIPES 16

typedef struct stripe {
    pthread_mutex_t mu;
    strmap_t tat; /* key -> int64_t* theoretical arrival time, µs */
} stripe_t;

struct rl {
    stripe_t s[STRIPES];
    size_t max_per_stripe;
};

rl_t *rl_new(size_t max_keys)
{
    rl_t *rl = xcalloc(1, sizeof *rl);
    rl->max_per_stripe = max_keys / STRIPES + 1;
    for (int i = 0; i < STRIPES; i++) {
        pthread_mutex_init(&rl->s[i].mu, NULL);
        strmap_init(&rl->s[i].tat);
    }
    return rl;
}

void rl_free(rl_t *rl)
{
    if (!rl)
        return;
    for (int i = 0; i < STRIPES; i++) {
        const char *k;
        void *v;
        for (size_t j = 0; strmap_next(&rl->s[i].tat, &j, &k, NULL, &v);)
            free(v);
        strmap_free(&rl->s[i].tat);
        pthread_mutex_destroy(&rl->s[i].mu);
    }
    free(rl);
}

static size_t stripe_of(const char *key, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)key[i]) * 1099511628211ull;
    return (size_t)(h % STRIPES);
}

/* Drops keys whose arrival time has passed: they are back at a full burst. */
static void sweep(stripe_t *s, int64_t now_us)
{
    const char *k;
    size_t kl;
    void *v;
    for (size_t j = 0; strmap_next(&s->tat, &j, &k, &kl, &v);)
        if (*(int64_t *)v <= now_us) {
            void *old = NULL;
            strmap_del(&s->tat, k, kl, &old);
            free(old);
        }
}

void rl_take(rl_t *rl, const char *key, const rl_limit_t *lim, int64_t now_ms, rl_result_t *out)
{
    memset(out, 0, sizeof *out);
    if (lim->count <= 0 || lim->period_ms <= 0) {
        out->allowed = true;
        out->remaining = 1;
        return;
    }
    int64_t now = now_ms * 1000;
    int64_t t = lim->period_ms * 1000 / lim->count; /* emission interval */
    if (t < 1)
        t = 1;
    int64_t tau = t * (lim->burst > 0 ? lim->burst : 0); /* tolerance */
    size_t n = strlen(key);
    stripe_t *s = &rl->s[stripe_of(key, n)];
    pthread_mutex_lock(&s->mu);
    void **slot = strmap_get(&s->tat, key, n);
    if (!slot && s->tat.live >= rl->max_per_stripe)
        sweep(s, now);
    if (!slot && s->tat.live >= rl->max_per_stripe) {
        /* full of live keys: let the request through rather than refuse strangers */
        pthread_mutex_unlock(&s->mu);
        out->allowed = true;
        out->remaining = 0;
        return;
    }
    if (!slot) {
        slot = strmap_put(&s->tat, key, n, NULL);
        *slot = xcalloc(1, sizeof(int64_t));
    }
    int64_t *stored = *slot;
    int64_t tat = *stored > now ? *stored : now;
    if (tat - now > tau) {
        out->allowed = false;
        out->retry_after_ms = (tat - tau - now + 999) / 1000;
        out->reset_ms = (tat - now + 999) / 1000;
    } else {
        int64_t next = tat + t;
        *stored = next;
        out->allowed = true;
        out->remaining = next - now <= tau ? (int)((tau - (next - now)) / t) + 1 : 0;
        out->reset_ms = (next - now + 999) / 1000;
    }
    pthread_mutex_unlock(&s->mu);
}

size_t rl_keys(rl_t *rl)
{
    size_t n = 0;
    for (int i = 0; i < STRIPES; i++) {
        pthread_mutex_lock(&rl->s[i].mu);
        n += rl->s[i].tat.live;
        pthread_mutex_unlock(&rl->s[i].mu);
    }
    return n;
}
