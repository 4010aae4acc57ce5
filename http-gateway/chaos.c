/* http-gateway/chaos.c: see chaos.h. */
#include "http-gateway/chaos.h"

#include "core/uuid.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int chaos_params_validate(const chaos_params_t *p, char *err, size_t cap)
{
    const char *problems[4];
    int n = 0;
    if (!(p->probability >= 0.0 && p->probability <= 1.0))
        problems[n++] = "chaos probability outside [0, 1]";
    if (!(p->error_rate >= 0.0 && p->error_rate <= 1.0))
        problems[n++] = "chaos error_rate outside [0, 1]";
    if (p->delay_ms < 0)
        problems[n++] = "chaos delay_ms is negative";
    if (p->error_status != 0 && (p->error_status < 400 || p->error_status > 599))
        problems[n++] = "chaos error_status outside 400..599";
    size_t used = 0;
    if (cap)
        err[0] = '\0';
    for (int i = 0; i < n && used < cap; i++) {
        int w = snprintf(err + used, cap - used, "%s%s", i ? "; " : "", problems[i]);
        used += w > 0 ? (size_t)w : 0;
    }
    return n ? -1 : 0;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void chaos_rng_seed(chaos_rng_t *r, uint64_t seed, uint64_t stream)
{
    if (seed == 0)
        random_bytes(&seed, sizeof seed);
    uint64_t x = seed ^ splitmix64(&stream);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
    if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0)
        r->s[0] = 1; /* xoshiro must not start from all zeros */
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman and Vigna). */
uint64_t chaos_rng_next(chaos_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double chaos_rng_double(chaos_rng_t *r)
{
    return (double)(chaos_rng_next(r) >> 11) * 0x1.0p-53;
}

void chaos_init(chaos_t *c, int max_active)
{
    atomic_init(&c->active, 0);
    c->max_active = max_active;
}

static bool take_slot(chaos_t *c)
{
    if (c->max_active <= 0) {
        atomic_fetch_add(&c->active, 1);
        return true;
    }
    int cur = atomic_load(&c->active);
    do {
        if (cur >= c->max_active)
            return false;
    } while (!atomic_compare_exchange_weak(&c->active, &cur, cur + 1));
    return true;
}

void chaos_decide(chaos_t *c, chaos_rng_t *rng, const chaos_params_t *p, chaos_decision_t *out)
{
    double select = chaos_rng_double(rng);
    double fail = chaos_rng_double(rng);
    memset(out, 0, sizeof *out);
    if (!(select < p->probability))
        return;
    bool delay = p->delay_ms > 0;
    bool abort = fail < p->error_rate;
    if (!delay && !abort)
        return;
    if (!take_slot(c))
        return;
    out->holds_slot = true;
    out->delay = delay;
    out->delay_ms = delay ? p->delay_ms : 0;
    out->abort = abort;
    out->status = abort ? (p->error_status ? p->error_status : CHAOS_DEFAULT_STATUS) : 0;
}

void chaos_done(chaos_t *c, chaos_decision_t *d)
{
    if (!d->holds_slot)
        return;
    d->holds_slot = false;
    atomic_fetch_sub(&c->active, 1);
}

const char *chaos_header_value(const chaos_decision_t *d)
{
    if (d->delay && d->abort)
        return "delay, abort";
    if (d->delay)
        return "delay";
    if (d->abort)
        return "abort";
    return NULL;
}
