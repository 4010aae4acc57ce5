/* inbox/inbox.c: see inbox.h. */
#include "inbox/inbox.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/pg.h"
#include "core/pgarray.h"
#include "core/strmap.h"
#include "core/uuid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- memory table: group \0 id -> received ms ---- */

typedef struct mem_inbox {
    strmap_t ids;
} mem_inbox_t;

static void *mem_make(void)
{
    mem_inbox_t *m = xcalloc(1, sizeof *m);
    strmap_init(&m->ids);
    return m;
}

static void mem_free(void *p)
{
    mem_inbox_t *m = p;
    strmap_free(&m->ids);
    free(m);
}

typedef struct undo {
    mem_inbox_t *m;
    size_t klen;
    char key[];
} undo_t;

static void undo_record(void *arg)
{
    undo_t *u = arg;
    strmap_del(&u->m->ids, u->key, u->klen, NULL);
    free(u);
}

static int mem_record(db_t *tx, const char *group, const char *id)
{
    mem_inbox_t *m = db_mem_slot(tx, MEM_SLOT_INBOX, mem_make, mem_free);
    size_t gl = strlen(group), il = strlen(id);
    undo_t *u = xmalloc(sizeof *u + gl + il + 1);
    memcpy(u->key, group, gl + 1);
    memcpy(u->key + gl + 1, id, il);
    u->klen = gl + 1 + il;
    u->m = m;
    bool created;
    void **v = strmap_put(&m->ids, u->key, u->klen, &created);
    if (!created) {
        free(u);
        return 0;
    }
    *v = (void *)(intptr_t)clock_now_ms();
    db_mem_undo(tx, undo_record, u, free);
    return 1;
}

int inbox_record(db_t *tx, const char *group, const char *msg_id)
{
    if (tx->kind == DB_MEMORY)
        return mem_record(tx, group, msg_id);
    if (db_prepare(tx, DB_STMT_INBOX_ONE, "INSERT INTO bus.inbox (grp, id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                   2) != 0)
        return -1;
    const char *p[] = {group, msg_id};
    PGresult *r = db_exec_prepared(tx, DB_STMT_INBOX_ONE, 2, p);
    if (!r)
        return -1;
    int added = atoi(PQcmdTuples(r));
    PQclear(r);
    return added == 1 ? 1 : 0;
}

/* The ids as a binary uuid[] parameter; -1 when one is not a UUID. */
static int uuid_array(const char *const *ids, size_t n, pg_array_t *a)
{
    pg_array_begin(a, PG_OID_UUID, n);
    for (size_t i = 0; i < n; i++)
        if (pg_array_uuid(a, ids[i]) != 0)
            return -1;
    return 0;
}

static const char sql_fresh[] = "INSERT INTO bus.inbox (grp, id) SELECT $1, unnest($2::uuid[])";

static int record_fresh(db_t *tx, const char *group, const char *const *ids, size_t n, bool hold)
{
    if (tx->kind == DB_MEMORY) {
        int rc = 0;
        for (size_t i = 0; i < n; i++)
            if (mem_record(tx, group, ids[i]) != 1)
                rc = 1; /* the caller's rollback undoes the others */
        return rc;
    }
    if (db_prepare(tx, DB_STMT_INBOX_FRESH, sql_fresh, 2) != 0)
        return -1;
    pg_array_t arr = {0};
    int rc = -1;
    if (uuid_array(ids, n, &arr) == 0) {
        const char *p[] = {group, (const char *)arr.buf};
        int lens[] = {0, (int)arr.len}, fmts[] = {0, 1};
        /* a duplicate is an expected answer, not an error to log */
        if (hold) {
            rc = db_defer(tx, DB_STMT_INBOX_FRESH, sql_fresh, 2, p, lens, fmts, "23505");
        } else {
            PGresult *r = db_exec_prepared_bin(tx, DB_STMT_INBOX_FRESH, 2, p, lens, fmts, "23505");
            rc = r ? 0 : strcmp(pg_last_sqlstate(), "23505") == 0 ? 1 : -1;
            PQclear(r);
        }
    }
    pg_array_free(&arr);
    return rc;
}

int inbox_record_fresh(db_t *tx, const char *group, const char *const *ids, size_t n)
{
    return record_fresh(tx, group, ids, n, false);
}

int inbox_hold_fresh(db_t *tx, const char *group, const char *const *ids, size_t n)
{
    return record_fresh(tx, group, ids, n, true);
}

int inbox_record_batch(db_t *tx, const char *group, const char *const *ids, size_t n, bool *is_new)
{
    if (tx->kind == DB_MEMORY) {
        for (size_t i = 0; i < n; i++)
            is_new[i] = mem_record(tx, group, ids[i]) == 1;
        return 0;
    }
    if (db_prepare(tx, DB_STMT_INBOX_BATCH,
                   "INSERT INTO bus.inbox (grp, id) SELECT $1, unnest($2::uuid[])"
                   " ON CONFLICT DO NOTHING RETURNING id",
                   2) != 0)
        return -1;
    pg_array_t arr = {0};
    PGresult *r = NULL;
    if (uuid_array(ids, n, &arr) == 0) {
        const char *p[] = {group, (const char *)arr.buf};
        int lens[] = {0, (int)arr.len}, fmts[] = {0, 1};
        r = db_exec_prepared_bin(tx, DB_STMT_INBOX_BATCH, 2, p, lens, fmts, NULL);
    }
    pg_array_free(&arr);
    if (!r)
        return -1;
    /* RETURNING gives the new ids; mark them (ids are few hundred: a map keeps it linear) */
    strmap_t fresh;
    strmap_init(&fresh);
    for (int i = 0; i < PQntuples(r); i++)
        strmap_put(&fresh, PQgetvalue(r, i, 0), 36, NULL);
    for (size_t i = 0; i < n; i++) {
        char low[UUID_STR_LEN];
        uuid_lower(ids[i], low);
        void **v = strmap_get(&fresh, low, 36);
        is_new[i] = v != NULL;
        if (v) /* a duplicate id inside one batch counts once */
            strmap_del(&fresh, low, 36, NULL);
    }
    strmap_free(&fresh);
    PQclear(r);
    return 0;
}

int inbox_count(db_t *db, const char *group, uint64_t *n)
{
    *n = 0;
    if (db->kind == DB_MEMORY) {
        if (db_begin(db) != 0)
            return -1;
        mem_inbox_t *m = db_mem_slot(db, MEM_SLOT_INBOX, mem_make, mem_free);
        size_t gl = strlen(group);
        const char *k;
        size_t kl;
        for (size_t i = 0; strmap_next(&m->ids, &i, &k, &kl, NULL);)
            if (kl > gl && memcmp(k, group, gl + 1) == 0)
                (*n)++;
        return db_commit(db);
    }
    const char *p[] = {group};
    PGresult *r = pg_query(db_pg(db), "SELECT count(*) FROM bus.inbox WHERE grp = $1", 1, p);
    if (!r)
        return -1;
    *n = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return 0;
}

int inbox_cleanup(db_t *db, int64_t retain_s, size_t limit, size_t *deleted)
{
    *deleted = 0;
    if (db->kind == DB_MEMORY) {
        if (db_begin(db) != 0)
            return -1;
        mem_inbox_t *m = db_mem_slot(db, MEM_SLOT_INBOX, mem_make, mem_free);
        int64_t cutoff = clock_now_ms() - retain_s * 1000;
        const char *k;
        size_t kl;
        void *v;
        for (size_t i = 0; *deleted < limit && strmap_next(&m->ids, &i, &k, &kl, &v);)
            if ((intptr_t)v < cutoff && strmap_del(&m->ids, k, kl, NULL))
                (*deleted)++;
        return db_commit(db);
    }
    /* any limit old rows, by their row addresses (the BRIN index of bus/002
     * finds them; an order would sort every old row first). The generic plan
     * of the janitor's connection (db_index_scans_only) keeps to that index
     * too, for 20,000 to 1,000,000 rows with nothing old (EXPLAIN ANALYZE);
     * test_backbone checks a cleanup's reads. */
    return pg_delete_older(db_pg(db),
                           "DELETE FROM bus.inbox WHERE ctid = ANY (ARRAY(SELECT ctid FROM bus.inbox"
                           " WHERE received_at < now() - make_interval(secs => $1::double precision)"
                           " LIMIT $2))",
                           retain_s, limit, deleted);
}
