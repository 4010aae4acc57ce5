/* http-gateway/authx/policy.c: the authorization snapshot (see policy.h).
 * Keys join their parts with the unit separator 0x1f, which the grammar
 * checks keep out of every part. */
#include "http-gateway/authx/policy.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/errlist.h"
#include "core/log.h"
#include "core/strmap.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SEP '\x1f'
#define KEY_MAX (3 * POLICY_REF_MAX + 128)
#define MAX_RULES 32
#define MAX_TERMS 8
#define VISITED_INLINE 64 /* expanded nodes kept in the walk itself; more go to a hash set */

/* ---- the schema ---- */

typedef struct term {
    char rel[POLICY_NAME_MAX + 1];
    char tupleset[POLICY_NAME_MAX + 1]; /* "" for a computed userset */
} term_t;

typedef struct rule {
    char rel[POLICY_NAME_MAX + 1];
    term_t terms[MAX_TERMS];
    int n;
} rule_t;

/* ---- rows ---- */

typedef struct vec {
    char **s;
    size_t n, cap;
} vec_t;

typedef struct row { /* a tuple or a binding: presence with its revision */
    int64_t rev;
    bool deleted;
} row_t;

typedef struct tset { /* live subjects of one tenant, object and relation */
    vec_t plain;    /* "type:id" */
    vec_t usersets; /* "type:id#relation" */
} tset_t;

typedef struct role {
    int64_t rev;
    bool deleted;
    vec_t perms;
    char *text; /* perms as written (the store's column), for policy_role_rev */
} role_t;

typedef struct bset { /* role names bound to one tenant and subject */
    vec_t roles;
} bset_t;

struct policy {
    pthread_rwlock_t lock;
    rule_t rules[MAX_RULES];
    int nrules;
    bool memory;
    strmap_t tuples;   /* tenant object relation subject -> row_t */
    strmap_t sets;     /* tenant object relation -> tset_t */
    strmap_t roles;    /* tenant name -> role_t */
    strmap_t bindings; /* tenant subject role -> row_t */
    strmap_t bsets;    /* tenant subject -> bset_t */
    strmap_t revoked;  /* sid -> int64_t until_ms */
    size_t ntuples;
    int64_t rev;
    _Atomic uint64_t gen; /* bumped by every applied change of roles, bindings or tuples */
    int64_t synced_ms;
    int64_t next_purge_ms;
    pthread_mutex_t poke_mu;
    pthread_cond_t poke_cv;
    bool poked;
};

static void vec_add(vec_t *v, const char *s)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 4;
        v->s = xrealloc(v->s, v->cap * sizeof *v->s);
    }
    v->s[v->n++] = xstrdup(s);
}

static void vec_remove(vec_t *v, const char *s)
{
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->s[i], s) == 0) {
            free(v->s[i]);
            v->s[i] = v->s[--v->n];
            return;
        }
}

static bool vec_has(const vec_t *v, const char *s)
{
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->s[i], s) == 0)
            return true;
    return false;
}

static void vec_free(vec_t *v)
{
    for (size_t i = 0; i < v->n; i++)
        free(v->s[i]);
    free(v->s);
    memset(v, 0, sizeof *v);
}

/* parts joined by SEP into buf; the length, or 0 when too long */
static size_t key(char *buf, const char *a, const char *b, const char *c, const char *d)
{
    const char *parts[] = {a, b, c, d};
    size_t n = 0;
    for (int i = 0; i < 4 && parts[i]; i++) {
        size_t l = strlen(parts[i]);
        if (n + l + 2 > KEY_MAX)
            return 0;
        if (i)
            buf[n++] = SEP;
        memcpy(buf + n, parts[i], l);
        n += l;
    }
    buf[n] = '\0';
    return n;
}

/* ---- grammar ---- */

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == ':' || c == '.' || c == '*' ||
           c == '-';
}

bool policy_name_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 1 && s[0] == '*')
        return true;
    if (n == 0 || n > POLICY_NAME_MAX || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!name_char(s[i]))
            return false;
    return true;
}

static bool relation_valid(const char *s, size_t n)
{
    if (n == 0 || n > POLICY_NAME_MAX || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

bool policy_relation_valid(const char *rel)
{
    return rel && relation_valid(rel, strlen(rel));
}

bool policy_ref_valid(const char *s, bool userset)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > POLICY_REF_MAX)
        return false;
    const char *colon = strchr(s, ':');
    if (!colon || colon == s || !relation_valid(s, (size_t)(colon - s)))
        return false;
    const char *id = colon + 1, *hash = strchr(id, '#');
    size_t idn = hash ? (size_t)(hash - id) : strlen(id);
    if (idn == 0)
        return false;
    for (size_t i = 0; i < idn; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("_.@|:+=-", c)))
            return false;
    }
    if (!hash)
        return true;
    return userset && relation_valid(hash + 1, strlen(hash + 1));
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n'))
        *--e = '\0';
    return s;
}

static int parse_schema(policy_t *p, const char *schema, errlist_t *errs)
{
    char *copy = xstrdup(schema), *save = NULL;
    for (char *stmt = strtok_r(copy, ";", &save); stmt; stmt = strtok_r(NULL, ";", &save)) {
        stmt = trim(stmt);
        if (!*stmt)
            continue;
        char *colon = strchr(stmt, ':');
        if (!colon) {
            errlist_add(errs, "schema: \"%s\" is not \"relation: term | term\"", stmt);
            continue;
        }
        *colon = '\0';
        char *rel = trim(stmt);
        if (!relation_valid(rel, strlen(rel)) || p->nrules == MAX_RULES) {
            errlist_add(errs, "schema: bad relation \"%s\" (or more than %d rules)", rel, MAX_RULES);
            continue;
        }
        rule_t *r = &p->rules[p->nrules++];
        memset(r, 0, sizeof *r);
        snprintf(r->rel, sizeof r->rel, "%s", rel);
        char *tsave = NULL;
        for (char *t = strtok_r(colon + 1, "|", &tsave); t; t = strtok_r(NULL, "|", &tsave)) {
            t = trim(t);
            char *arrow = strstr(t, "->");
            const char *ts = "", *tr = t;
            if (arrow) {
                *arrow = '\0';
                ts = trim(t);
                tr = trim(arrow + 2);
            }
            if (!relation_valid(tr, strlen(tr)) || (arrow && !relation_valid(ts, strlen(ts))) || r->n == MAX_TERMS) {
                errlist_add(errs, "schema: bad term in the rule of \"%s\"", r->rel);
                continue;
            }
            snprintf(r->terms[r->n].rel, sizeof r->terms[0].rel, "%s", tr);
            snprintf(r->terms[r->n].tupleset, sizeof r->terms[0].tupleset, "%s", ts);
            r->n++;
        }
    }
    free(copy);
    return errs->s ? -1 : 0;
}

policy_t *policy_new(const char *schema, bool synced, char **errors)
{
    policy_t *p = xcalloc(1, sizeof *p);
    errlist_t errs = {0};
    if (parse_schema(p, schema && *schema ? schema : POLICY_DEFAULT_SCHEMA, &errs) != 0) {
        *errors = errs.s;
        free(p);
        return NULL;
    }
    pthread_rwlock_init(&p->lock, NULL);
    pthread_mutex_init(&p->poke_mu, NULL);
    pthread_cond_init(&p->poke_cv, NULL);
    strmap_init(&p->tuples);
    strmap_init(&p->sets);
    strmap_init(&p->roles);
    strmap_init(&p->bindings);
    strmap_init(&p->bsets);
    strmap_init(&p->revoked);
    p->memory = synced;
    return p;
}

static void free_values(strmap_t *m, void (*f)(void *))
{
    const char *k;
    void *v;
    for (size_t i = 0; strmap_next(m, &i, &k, NULL, &v);) {
        if (f)
            f(v);
        free(v);
    }
    strmap_free(m);
}

static void tset_clear(void *v)
{
    tset_t *t = v;
    vec_free(&t->plain);
    vec_free(&t->usersets);
}

static void role_clear(void *v)
{
    vec_free(&((role_t *)v)->perms);
    free(((role_t *)v)->text);
}

static void bset_clear(void *v)
{
    vec_free(&((bset_t *)v)->roles);
}

void policy_free(policy_t *p)
{
    if (!p)
        return;
    free_values(&p->tuples, NULL);
    free_values(&p->sets, tset_clear);
    free_values(&p->roles, role_clear);
    free_values(&p->bindings, NULL);
    free_values(&p->bsets, bset_clear);
    free_values(&p->revoked, NULL);
    pthread_rwlock_destroy(&p->lock);
    pthread_mutex_destroy(&p->poke_mu);
    pthread_cond_destroy(&p->poke_cv);
    free(p);
}

/* ---- writes ---- */

/* The row's slot; false when rev is not newer than what it holds. */
static row_t *newer_row(strmap_t *m, const char *k, size_t kl, int64_t rev)
{
    void **slot = strmap_put(m, k, kl, NULL);
    if (!*slot)
        *slot = xcalloc(1, sizeof(row_t));
    row_t *r = *slot;
    return rev > r->rev ? r : NULL;
}

/* A row changed (under the write lock). */
static void bump(policy_t *p, int64_t rev)
{
    atomic_fetch_add(&p->gen, 1);
    if (p->memory && rev > p->rev)
        p->rev = rev;
}

void policy_put_tuple(policy_t *p, int64_t rev, const char *tenant, const char *object, const char *relation,
                      const char *subject, bool deleted)
{
    char k[KEY_MAX];
    size_t kl = key(k, tenant, object, relation, subject);
    if (!kl)
        return;
    pthread_rwlock_wrlock(&p->lock);
    bool had = false;
    void **existing = strmap_get(&p->tuples, k, kl);
    if (existing && *existing)
        had = !((row_t *)*existing)->deleted;
    row_t *row = newer_row(&p->tuples, k, kl, rev);
    if (row) {
        row->rev = rev;
        row->deleted = deleted;
        size_t sl = key(k, tenant, object, relation, NULL);
        void **slot = strmap_put(&p->sets, k, sl, NULL);
        if (!*slot)
            *slot = xcalloc(1, sizeof(tset_t));
        tset_t *t = *slot;
        vec_t *v = strchr(subject, '#') ? &t->usersets : &t->plain;
        if (deleted && had) {
            vec_remove(v, subject);
            p->ntuples--;
        } else if (!deleted && !had) {
            vec_add(v, subject);
            p->ntuples++;
        }
        bump(p, rev);
    }
    pthread_rwlock_unlock(&p->lock);
}

void policy_put_role(policy_t *p, int64_t rev, const char *tenant, const char *name, const char *perms, bool deleted)
{
    char k[KEY_MAX];
    size_t kl = key(k, tenant, name, NULL, NULL);
    if (!kl)
        return;
    pthread_rwlock_wrlock(&p->lock);
    void **slot = strmap_put(&p->roles, k, kl, NULL);
    if (!*slot)
        *slot = xcalloc(1, sizeof(role_t));
    role_t *r = *slot;
    if (rev > r->rev) {
        r->rev = rev;
        r->deleted = deleted;
        vec_free(&r->perms);
        free(r->text);
        r->text = xstrdup(perms ? perms : "");
        char *copy = xstrdup(r->text), *save = NULL;
        for (char *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save))
            if (!vec_has(&r->perms, t))
                vec_add(&r->perms, t);
        free(copy);
        bump(p, rev);
    }
    pthread_rwlock_unlock(&p->lock);
}

void policy_put_binding(policy_t *p, int64_t rev, const char *tenant, const char *subject, const char *role,
                        bool deleted)
{
    char k[KEY_MAX];
    size_t kl = key(k, tenant, subject, role, NULL);
    if (!kl)
        return;
    pthread_rwlock_wrlock(&p->lock);
    bool had = false;
    void **existing = strmap_get(&p->bindings, k, kl);
    if (existing && *existing)
        had = !((row_t *)*existing)->deleted;
    row_t *row = newer_row(&p->bindings, k, kl, rev);
    if (row) {
        row->rev = rev;
        row->deleted = deleted;
        size_t sl = key(k, tenant, subject, NULL, NULL);
        void **slot = strmap_put(&p->bsets, k, sl, NULL);
        if (!*slot)
            *slot = xcalloc(1, sizeof(bset_t));
        bset_t *b = *slot;
        if (deleted && had)
            vec_remove(&b->roles, role);
        else if (!deleted && !had)
            vec_add(&b->roles, role);
        bump(p, rev);
    }
    pthread_rwlock_unlock(&p->lock);
}

static void purge_revoked(policy_t *p, int64_t now_ms)
{
    if (now_ms < p->next_purge_ms)
        return;
    p->next_purge_ms = now_ms + 60000;
    const char *k;
    size_t kl;
    void *v;
    for (size_t i = 0; strmap_next(&p->revoked, &i, &k, &kl, &v);)
        if (*(int64_t *)v <= now_ms) {
            void *old = NULL;
            strmap_del(&p->revoked, k, kl, &old);
            free(old);
        }
}

void policy_revoke_sid(policy_t *p, const char *sid, int64_t until_ms)
{
    pthread_rwlock_wrlock(&p->lock);
    purge_revoked(p, clock_now_ms());
    void **slot = strmap_put(&p->revoked, sid, strlen(sid), NULL);
    if (!*slot)
        *slot = xcalloc(1, sizeof(int64_t));
    if (*(int64_t *)*slot < until_ms)
        *(int64_t *)*slot = until_ms;
    pthread_rwlock_unlock(&p->lock);
}

int64_t policy_revision(policy_t *p)
{
    pthread_rwlock_rdlock(&p->lock);
    int64_t r = p->rev;
    pthread_rwlock_unlock(&p->lock);
    return r;
}

void policy_synced(policy_t *p, int64_t rev, int64_t now_ms)
{
    pthread_rwlock_wrlock(&p->lock);
    if (rev > p->rev)
        p->rev = rev;
    p->synced_ms = now_ms;
    pthread_rwlock_unlock(&p->lock);
}

int64_t policy_next_revision(policy_t *p)
{
    pthread_rwlock_wrlock(&p->lock);
    int64_t r = ++p->rev;
    pthread_rwlock_unlock(&p->lock);
    return r;
}

bool policy_fresh(policy_t *p, int64_t now_ms)
{
    if (p->memory)
        return true;
    pthread_rwlock_rdlock(&p->lock);
    bool fresh = p->synced_ms && now_ms - p->synced_ms <= POLICY_STALE_MS;
    pthread_rwlock_unlock(&p->lock);
    return fresh;
}

void policy_poke(policy_t *p)
{
    pthread_mutex_lock(&p->poke_mu);
    p->poked = true;
    pthread_cond_signal(&p->poke_cv);
    pthread_mutex_unlock(&p->poke_mu);
}

bool policy_wait_poke(policy_t *p, int ms)
{
    struct timespec ts;
    clock_deadline(&ts, CLOCK_REALTIME, ms);
    pthread_mutex_lock(&p->poke_mu);
    while (!p->poked && pthread_cond_timedwait(&p->poke_cv, &p->poke_mu, &ts) == 0) {
    }
    bool poked = p->poked;
    p->poked = false;
    pthread_mutex_unlock(&p->poke_mu);
    return poked;
}

/* ---- checks ---- */

static const role_t *find_role(policy_t *p, const char *tenant, const char *name)
{
    char k[KEY_MAX];
    size_t kl = key(k, tenant, name, NULL, NULL);
    void **v = kl ? strmap_get(&p->roles, k, kl) : NULL;
    if (v && *v && !((role_t *)*v)->deleted)
        return *v;
    if (strcmp(tenant, "*") == 0)
        return NULL;
    kl = key(k, "*", name, NULL, NULL);
    v = kl ? strmap_get(&p->roles, k, kl) : NULL;
    return v && *v && !((role_t *)*v)->deleted ? *v : NULL;
}

static const bset_t *find_bset(policy_t *p, const char *tenant, const char *subject)
{
    char k[KEY_MAX];
    size_t kl = key(k, tenant, subject, NULL, NULL);
    void **v = kl ? strmap_get(&p->bsets, k, kl) : NULL;
    return v ? *v : NULL;
}

/* Calls f for each role bound to subject in tenant until it returns true. */
static bool each_role(policy_t *p, const char *tenant, const char *subject,
                      bool (*f)(policy_t *p, const char *tenant, const char *role, void *arg), void *arg)
{
    const char *bt[] = {tenant, tenant, "*", "*"};
    const char *bs[] = {subject, "*", subject, "*"};
    for (int i = 0; i < 4; i++) {
        if (i >= 2 && strcmp(tenant, "*") == 0)
            break;
        const bset_t *b = find_bset(p, bt[i], bs[i]);
        for (size_t k = 0; b && k < b->roles.n; k++)
            if (f(p, tenant, b->roles.s[k], arg))
                return true;
    }
    return false;
}

static bool role_grants(policy_t *p, const char *tenant, const char *role, void *arg)
{
    const role_t *r = find_role(p, tenant, role);
    for (size_t i = 0; r && i < r->perms.n; i++)
        if (strcmp(r->perms.s[i], "*") == 0 || strcmp(r->perms.s[i], (const char *)arg) == 0)
            return true;
    return false;
}

bool policy_allows(policy_t *p, const char *tenant, const char *subject, const char *perm)
{
    pthread_rwlock_rdlock(&p->lock);
    bool ok = each_role(p, tenant, subject, role_grants, (void *)perm);
    pthread_rwlock_unlock(&p->lock);
    return ok;
}

static bool collect_role(policy_t *p, const char *tenant, const char *role, void *arg)
{
    (void)p;
    (void)tenant;
    json_object *a = arg;
    for (size_t i = 0; i < json_object_array_length(a); i++)
        if (strcmp(json_object_get_string(json_object_array_get_idx(a, i)), role) == 0)
            return false;
    json_object_array_add(a, json_object_new_string(role));
    return false;
}

json_object *policy_roles_of(policy_t *p, const char *tenant, const char *subject)
{
    json_object *a = json_object_new_array();
    pthread_rwlock_rdlock(&p->lock);
    each_role(p, tenant, subject, collect_role, a);
    pthread_rwlock_unlock(&p->lock);
    return a;
}

typedef struct walk {
    policy_t *p;
    const char *tenant, *user;
    bool depth_exceeded;
    size_t expanded;                  /* object#relation nodes expanded */
    uint64_t visited[VISITED_INLINE]; /* FNV-1a of "object#relation" expanded so far */
    int nvisited;
    uint64_t *spill; /* the rest: open addressing, 0 = empty slot */
    size_t spill_n, spill_cap;
} walk_t;

/* Records a node: true the first time. Every node is kept, however many: a
 * node expanded again would make a dense graph of usersets a walk of every
 * path instead of every node. */
static bool visit(walk_t *w, uint64_t h)
{
    for (int i = 0; i < w->nvisited; i++)
        if (w->visited[i] == h)
            return false;
    if (w->nvisited < VISITED_INLINE) {
        w->visited[w->nvisited++] = h;
        return true;
    }
    h = h ? h : 1;
    if (2 * (w->spill_n + 1) > w->spill_cap) {
        size_t cap = w->spill_cap ? 2 * w->spill_cap : 256;
        uint64_t *t = xcalloc(cap, sizeof *t);
        for (size_t i = 0; i < w->spill_cap; i++)
            if (w->spill[i]) {
                size_t k = w->spill[i] & (cap - 1);
                while (t[k])
                    k = (k + 1) & (cap - 1);
                t[k] = w->spill[i];
            }
        free(w->spill);
        w->spill = t;
        w->spill_cap = cap;
    }
    size_t k = h & (w->spill_cap - 1);
    for (; w->spill[k]; k = (k + 1) & (w->spill_cap - 1))
        if (w->spill[k] == h)
            return false;
    w->spill[k] = h;
    w->spill_n++;
    return true;
}

static uint64_t fnv1a(const char *a, const char *b)
{
    uint64_t h = 14695981039346656037ull;
    for (const char *s = a; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    h = (h ^ '#') * 1099511628211ull;
    for (const char *s = b; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static bool has_tuple(walk_t *w, const char *object, const char *relation, const char *subject)
{
    char k[KEY_MAX];
    size_t kl = key(k, w->tenant, object, relation, subject);
    void **v = kl ? strmap_get(&w->p->tuples, k, kl) : NULL;
    return v && *v && !((row_t *)*v)->deleted;
}

static const tset_t *find_set(walk_t *w, const char *object, const char *relation)
{
    char k[KEY_MAX];
    size_t kl = key(k, w->tenant, object, relation, NULL);
    void **v = kl ? strmap_get(&w->p->sets, k, kl) : NULL;
    return v ? *v : NULL;
}

static const rule_t *find_rule(const policy_t *p, const char *rel)
{
    for (int i = 0; i < p->nrules; i++)
        if (strcmp(p->rules[i].rel, rel) == 0)
            return &p->rules[i];
    return NULL;
}

/* Is user in relation(object)? Each object#relation is expanded once per
 * check (a cycle ends there); deeper than POLICY_DEPTH_MAX hops denies. */
static bool check(walk_t *w, const char *object, const char *relation, int depth)
{
    if (depth > POLICY_DEPTH_MAX) {
        w->depth_exceeded = true;
        return false;
    }
    if (!visit(w, fnv1a(object, relation)))
        return false;
    w->expanded++;
    if (has_tuple(w, object, relation, w->user))
        return true;
    const tset_t *t = find_set(w, object, relation);
    for (size_t i = 0; t && i < t->usersets.n; i++) {
        char ref[POLICY_REF_MAX + 1];
        snprintf(ref, sizeof ref, "%s", t->usersets.s[i]);
        char *hash = strchr(ref, '#');
        *hash = '\0';
        if (check(w, ref, hash + 1, depth + 1))
            return true;
    }
    const rule_t *r = find_rule(w->p, relation);
    for (int i = 0; r && i < r->n; i++) {
        const term_t *term = &r->terms[i];
        if (!term->tupleset[0]) {
            if (check(w, object, term->rel, depth + 1))
                return true;
            continue;
        }
        const tset_t *ts = find_set(w, object, term->tupleset);
        for (size_t k = 0; ts && k < ts->plain.n; k++)
            if (check(w, ts->plain.s[k], term->rel, depth + 1))
                return true;
    }
    return false;
}

policy_verdict_t policy_check_counted(policy_t *p, const char *tenant, const char *object, const char *relation,
                                      const char *subject, size_t *expanded)
{
    walk_t w = {.p = p, .tenant = tenant, .user = subject};
    pthread_rwlock_rdlock(&p->lock);
    bool ok = check(&w, object, relation, 0);
    pthread_rwlock_unlock(&p->lock);
    free(w.spill);
    if (expanded)
        *expanded = w.expanded;
    policy_verdict_t v = ok ? POLICY_ALLOW : w.depth_exceeded ? POLICY_DEPTH_EXCEEDED : POLICY_DENY;
    if (v == POLICY_DEPTH_EXCEEDED)
        log_error("relation check %s#%s@%s in tenant %s went deeper than %d hops: denied", object, relation, subject,
                  tenant, POLICY_DEPTH_MAX);
    return v;
}

policy_verdict_t policy_check(policy_t *p, const char *tenant, const char *object, const char *relation,
                              const char *subject)
{
    return policy_check_counted(p, tenant, object, relation, subject, NULL);
}

struct policy_cache_entry {
    uint64_t gen;
    policy_verdict_t v;
    size_t len;
    char key[];
};

policy_verdict_t policy_check_cached(policy_t *p, policy_cache_t *c, const char *tenant, const char *object,
                                     const char *relation, const char *subject)
{
    char k[KEY_MAX];
    size_t kl = key(k, tenant, object, relation, subject);
    if (!kl)
        return policy_check(p, tenant, object, relation, subject);
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < kl; i++)
        h = (h ^ (unsigned char)k[i]) * 1099511628211ull;
    policy_cache_entry_t **s = &c->slot[h % POLICY_CACHE_SLOTS];
    uint64_t gen = atomic_load(&p->gen);
    if (*s && (*s)->gen == gen && (*s)->len == kl && memcmp((*s)->key, k, kl) == 0)
        return (*s)->v;
    walk_t w = {.p = p, .tenant = tenant, .user = subject};
    pthread_rwlock_rdlock(&p->lock);
    gen = atomic_load(&p->gen); /* the generation this verdict was computed at */
    bool ok = check(&w, object, relation, 0);
    pthread_rwlock_unlock(&p->lock);
    free(w.spill);
    if (w.depth_exceeded && !ok)
        return policy_check(p, tenant, object, relation, subject); /* logs it; not remembered */
    if (!*s || (*s)->len < kl) {
        free(*s);
        *s = xmalloc(sizeof **s + kl);
    }
    (*s)->gen = gen;
    (*s)->v = ok ? POLICY_ALLOW : POLICY_DENY;
    (*s)->len = kl;
    memcpy((*s)->key, k, kl);
    return (*s)->v;
}

void policy_cache_free(policy_cache_t *c)
{
    for (size_t i = 0; i < POLICY_CACHE_SLOTS; i++) {
        free(c->slot[i]);
        c->slot[i] = NULL;
    }
}

bool policy_sid_revoked(policy_t *p, const char *sid, int64_t now_ms)
{
    if (!sid || !*sid)
        return false;
    pthread_rwlock_rdlock(&p->lock);
    void **v = strmap_get(&p->revoked, sid, strlen(sid));
    bool revoked = v && *v && *(int64_t *)*v > now_ms;
    pthread_rwlock_unlock(&p->lock);
    return revoked;
}

static int64_t live_row(policy_t *p, strmap_t *m, const char *a, const char *b, const char *c, const char *d)
{
    char k[KEY_MAX];
    size_t kl = key(k, a, b, c, d);
    pthread_rwlock_rdlock(&p->lock);
    void **v = kl ? strmap_get(m, k, kl) : NULL;
    int64_t rev = v && *v && !((row_t *)*v)->deleted ? ((row_t *)*v)->rev : 0;
    pthread_rwlock_unlock(&p->lock);
    return rev;
}

int64_t policy_tuple_rev(policy_t *p, const char *tenant, const char *object, const char *relation, const char *subject)
{
    return live_row(p, &p->tuples, tenant, object, relation, subject);
}

int64_t policy_binding_rev(policy_t *p, const char *tenant, const char *subject, const char *role)
{
    return live_row(p, &p->bindings, tenant, subject, role, NULL);
}

int64_t policy_role_rev(policy_t *p, const char *tenant, const char *name, const char *perms)
{
    char k[KEY_MAX];
    size_t kl = key(k, tenant, name, NULL, NULL);
    pthread_rwlock_rdlock(&p->lock);
    void **v = kl ? strmap_get(&p->roles, k, kl) : NULL;
    const role_t *r = v ? *v : NULL;
    int64_t rev = r && !r->deleted && (!perms || !strcmp(perms, r->text ? r->text : "")) ? r->rev : 0;
    pthread_rwlock_unlock(&p->lock);
    return rev;
}

bool policy_is_member(policy_t *p, const char *tenant, const char *subject)
{
    if (!strcmp(tenant, "*") || !strcmp(subject, "*"))
        return false;
    pthread_rwlock_rdlock(&p->lock);
    const bset_t *b = find_bset(p, tenant, subject);
    bool member = b && b->roles.n > 0;
    pthread_rwlock_unlock(&p->lock);
    return member;
}

/* ---- lists ---- */

static int cmp_tuple(const void *a, const void *b)
{
    json_object *x = *(json_object *const *)a, *y = *(json_object *const *)b;
    const char *keys[] = {"object", "relation", "subject"};
    for (int i = 0; i < 3; i++) {
        json_object *u, *v;
        json_object_object_get_ex(x, keys[i], &u);
        json_object_object_get_ex(y, keys[i], &v);
        int c = strcmp(json_object_get_string(u), json_object_get_string(v));
        if (c)
            return c;
    }
    return 0;
}

json_object *policy_list_tuples(policy_t *p, const char *tenant, const char *object, const char *relation,
                                const char *subject, size_t limit)
{
    json_object *a = json_object_new_array();
    size_t tl = strlen(tenant);
    pthread_rwlock_rdlock(&p->lock);
    const char *k;
    size_t kl;
    void *v;
    for (size_t i = 0; strmap_next(&p->tuples, &i, &k, &kl, &v) && json_object_array_length(a) < limit;) {
        if (((row_t *)v)->deleted || kl <= tl || memcmp(k, tenant, tl) != 0 || k[tl] != SEP)
            continue;
        char buf[KEY_MAX];
        snprintf(buf, sizeof buf, "%.*s", (int)(kl - tl - 1), k + tl + 1);
        char *obj = buf, *rel = strchr(obj, SEP), *sub = rel ? strchr(rel + 1, SEP) : NULL;
        if (!sub)
            continue;
        *rel++ = '\0';
        *sub++ = '\0';
        if ((object && strcmp(object, obj)) || (relation && strcmp(relation, rel)) || (subject && strcmp(subject, sub)))
            continue;
        json_object *t = json_object_new_object();
        json_object_object_add(t, "object", json_object_new_string(obj));
        json_object_object_add(t, "relation", json_object_new_string(rel));
        json_object_object_add(t, "subject", json_object_new_string(sub));
        json_object_array_add(a, t);
    }
    pthread_rwlock_unlock(&p->lock);
    json_object_array_sort(a, cmp_tuple);
    return a;
}

json_object *policy_list_roles(policy_t *p, const char *tenant)
{
    json_object *o = json_object_new_object();
    pthread_rwlock_rdlock(&p->lock);
    const char *scopes[] = {"*", tenant};
    for (int s = 0; s < 2; s++) {
        size_t tl = strlen(scopes[s]);
        const char *k;
        size_t kl;
        void *v;
        for (size_t i = 0; strmap_next(&p->roles, &i, &k, &kl, &v);) {
            const role_t *r = v;
            if (kl <= tl || memcmp(k, scopes[s], tl) != 0 || k[tl] != SEP)
                continue;
            char name[POLICY_NAME_MAX + 1];
            snprintf(name, sizeof name, "%.*s", (int)(kl - tl - 1), k + tl + 1);
            if (r->deleted)
                continue; /* a tenant's deleted override leaves the default */
            json_object *perms = json_object_new_array();
            for (size_t j = 0; j < r->perms.n; j++)
                json_object_array_add(perms, json_object_new_string(r->perms.s[j]));
            json_object_object_add(o, name, perms);
        }
        if (strcmp(tenant, "*") == 0)
            break;
    }
    pthread_rwlock_unlock(&p->lock);
    return o;
}

size_t policy_tuple_count(policy_t *p)
{
    pthread_rwlock_rdlock(&p->lock);
    size_t n = p->ntuples;
    pthread_rwlock_unlock(&p->lock);
    return n;
}
