/* bus/reply_arena.c: see reply_arena.h. */
#include "bus/reply_arena.h"

#include "core/alloc.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_BYTES (64 * 1024)
#define REPLY_ARENA_KEEP (4 * 1024 * 1024) /* chunk bytes kept across resets */

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    alignas(max_align_t) unsigned char data[];
} chunk_t;

struct reply_arena {
    chunk_t *first, *cur; /* chunks in fill order; cur is being filled */
    redisReplyObjectFunctions *saved; /* the reader's own functions while attached */
};

static void *arena_alloc(reply_arena_t *a, size_t n)
{
    n = (n + alignof(max_align_t) - 1) & ~(alignof(max_align_t) - 1);
    while (a->cur && a->cur->cap - a->cur->used < n) {
        if (!a->cur->next)
            break;
        a->cur = a->cur->next; /* kept from before the last reset: empty */
    }
    if (!a->cur || a->cur->cap - a->cur->used < n) {
        size_t cap = n > CHUNK_BYTES ? n : CHUNK_BYTES;
        chunk_t *c = xmalloc(sizeof *c + cap);
        *c = (chunk_t){.cap = cap};
        if (a->cur) { /* after cur: the chunks behind it are empty and stay next */
            c->next = a->cur->next;
            a->cur->next = c;
        } else {
            a->first = c;
        }
        a->cur = c;
    }
    void *p = a->cur->data + a->cur->used;
    a->cur->used += n;
    return p;
}

/* A reply of the task's type, linked into its parent array. */
static redisReply *new_reply(const redisReadTask *task)
{
    reply_arena_t *a = task->privdata;
    redisReply *r = arena_alloc(a, sizeof *r);
    memset(r, 0, sizeof *r);
    r->type = task->type;
    if (task->parent) {
        redisReply *parent = task->parent->obj;
        parent->element[task->idx] = r;
    }
    return r;
}

static void *create_string(const redisReadTask *task, char *str, size_t len)
{
    redisReply *r = new_reply(task);
    r->str = arena_alloc(task->privdata, len + 1);
    memcpy(r->str, str, len);
    r->str[len] = '\0';
    r->len = len;
    return r;
}

static void *create_array(const redisReadTask *task, int elements)
{
    redisReply *r = new_reply(task);
    if (elements > 0) {
        r->element = arena_alloc(task->privdata, (size_t)elements * sizeof *r->element);
        memset(r->element, 0, (size_t)elements * sizeof *r->element);
    }
    r->elements = (size_t)(elements > 0 ? elements : 0);
    return r;
}

static void *create_integer(const redisReadTask *task, long long value)
{
    redisReply *r = new_reply(task);
    r->integer = value;
    return r;
}

static void *create_nil(const redisReadTask *task)
{
    redisReply *r = new_reply(task);
    r->type = REDIS_REPLY_NIL; /* the task's type is the one announced ($-1, *-1) */
    return r;
}

static void free_object(void *reply)
{
    (void)reply; /* the arena's reset frees it */
}

static redisReplyObjectFunctions arena_functions = {
    .createString = create_string,
    .createArray = create_array,
    .createInteger = create_integer,
    .createNil = create_nil,
    .freeObject = free_object,
};

reply_arena_t *reply_arena_new(void)
{
    return xcalloc(1, sizeof(reply_arena_t));
}

void reply_arena_free(reply_arena_t *a)
{
    if (!a)
        return;
    for (chunk_t *c = a->first, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(a);
}

void reply_arena_attach(reply_arena_t *a, redisReader *rd)
{
    a->saved = rd->fn;
    rd->fn = &arena_functions;
    rd->privdata = a;
}

void reply_arena_detach(reply_arena_t *a, redisReader *rd)
{
    rd->fn = a->saved;
    rd->privdata = NULL;
}

void reply_arena_reset(reply_arena_t *a)
{
    size_t kept = 0;
    chunk_t **link = &a->first;
    while (*link) {
        chunk_t *c = *link;
        if (kept + c->cap > REPLY_ARENA_KEEP) {
            *link = c->next;
            free(c);
            continue;
        }
        kept += c->cap;
        c->used = 0;
        link = &c->next;
    }
    a->cur = a->first;
}
