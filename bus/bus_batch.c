/* bus/bus_batch.c: bus_batch_t helpers (see bus.h). */
#include "bus/bus.h"

#include "core/alloc.h"

#include <stdlib.h>
#include <string.h>

bus_msg_t *bus_batch_push(bus_batch_t *bt)
{
    if (bt->n == bt->cap) {
        bt->cap = bt->cap ? bt->cap * 2 : 64;
        bt->msgs = xrealloc(bt->msgs, bt->cap * sizeof *bt->msgs);
    }
    bus_msg_t *m = &bt->msgs[bt->n++];
    memset(m, 0, sizeof *m);
    return m;
}

void bus_batch_clear(bus_batch_t *bt)
{
    for (size_t i = 0; i < bt->n; i++)
        envelope_clear(&bt->msgs[i].env);
    bt->n = 0;
}

void bus_batch_free(bus_batch_t *bt)
{
    bus_batch_clear(bt);
    free(bt->msgs);
    memset(bt, 0, sizeof *bt);
}
