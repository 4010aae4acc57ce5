/* bus/reply_arena.h: hiredis replies built in one arena. hiredis allocates
 * every element of a reply on its own, two allocations per string: a stream
 * read of 1,000 entries of 11 fields is some 50,000 allocations and as many
 * frees. A read's replies live only until its entries are decoded, so while
 * an arena is attached to a reader, the reader builds them in the arena's
 * chunks, and reply_arena_reset drops them all at once.
 *
 *   reply_arena_attach(a, ctx->reader);
 *   ... redisGetReply(...) ...          (never freeReplyObject on these)
 *   reply_arena_detach(a, ctx->reader);  (unless the context was freed)
 *   ... use the replies ...
 *   reply_arena_reset(a);
 *
 * Owns: its chunks (kept across resets up to REPLY_ARENA_KEEP bytes). */
#ifndef ECOM_BUS_REPLY_ARENA_H
#define ECOM_BUS_REPLY_ARENA_H

#include <hiredis/hiredis.h>

typedef struct reply_arena reply_arena_t;

reply_arena_t *reply_arena_new(void);
void reply_arena_free(reply_arena_t *a); /* NULL is a no-op */
/* Replies the reader parses from now on are built in a. A freed context
 * (redisFree) with an arena attached frees nothing of it. */
void reply_arena_attach(reply_arena_t *a, redisReader *rd);
/* The reader allocates on its own again. */
void reply_arena_detach(reply_arena_t *a, redisReader *rd);
/* Drops every reply built in a since the last reset. */
void reply_arena_reset(reply_arena_t *a);

#endif
