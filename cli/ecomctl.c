/* cli/ecomctl.c: the replay and inspection CLI.
 *   ecomctl [--env-file FILE] publish --topic T --type X --tenant T --aggregate A --payload JSON [--count N]
 *                                     [--traceparent TP] [--request-id ID]
 *   ecomctl [--env-file FILE] status [--json]
 *   ecomctl [--env-file FILE] dlq list --group G [--id ENTRY] [--json]
 *   ecomctl [--env-file FILE] dlq replay --group G (--id ENTRY | --all)
 *   ecomctl [--env-file FILE] redrive --since SECONDS [--topic T]
 *   ecomctl [--env-file FILE] dead list [--json] | dead retry (--pos N | --all)
 * Reads DATABASE_URL and REDIS_URL like the daemons. Bad input: one line on
 * stderr and exit 2; an unreachable server: exit 1. */
#include "bus/bus.h"
#include "bus/outbox.h"
#include "core/alloc.h"
#include "core/config.h"
#include "core/json.h"
#include "core/log.h"
#include "core/pg.h"
#include "core/strmap.h"
#include "http-gateway/reqctx.h"
#include "outbox-worker/drain.h"
#include "services/registry.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ecomctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ecomctl [--env-file FILE] COMMAND\n"
            "  publish --topic T --type X --tenant T --aggregate A --payload JSON [--count N]\n"
            "          [--traceparent TP] [--request-id ID]   append to the outbox as a service would\n"
            "  status [--json]                                  outbox, streams, groups, DLQs, inboxes\n"
            "  dlq list --group G [--id ENTRY] [--json]         dead letters of a group (or one), with their errors\n"
            "  dlq replay --group G (--id ENTRY | --all)        send dead letters back to their group\n"
            "  dead list [--json]                               outbox rows the drainer could not publish\n"
            "  dead retry (--pos N | --all)                     move them back to the outbox\n"
            "  redrive --since SECONDS [--topic T]              publish again what was published in the last\n"
            "                                                   SECONDS (after Redis lost data; inboxes skip\n"
            "                                                   what was applied); outbox-workers stopped\n");
}

/* ---- publish ---- */

/* Option parsing: argv[*i] is the option; its value is argv[*i + 1], which
 * must exist and not be another option, and the option must not have come
 * before (*dst set). 0 with *dst set and *i moved on, or the exit code. */
static int opt_value(const char *cmd, int argc, char **argv, int *i, const char **dst)
{
    const char *a = argv[*i];
    if (*i + 1 >= argc || strncmp(argv[*i + 1], "--", 2) == 0)
        return fail(2, "%s: %s needs a value", cmd, a);
    if (*dst)
        return fail(2, "%s: %s given twice", cmd, a);
    *dst = argv[++*i];
    return 0;
}

/* A stream entry id as Redis writes them: <ms>-<seq>, both decimal 64-bit. */
static bool entry_id_valid(const char *s)
{
    const char *dash = strchr(s, '-');
    if (!dash || dash == s || !dash[1] || strchr(dash + 1, '-'))
        return false;
    for (const char *p = s; *p; p++)
        if (p != dash && (*p < '0' || *p > '9'))
            return false;
    /* no more than 20 digits a part, and within 2^64 - 1 */
    char *end;
    errno = 0;
    (void)strtoull(s, &end, 10);
    if (errno || end != dash || dash - s > 20)
        return false;
    (void)strtoull(dash + 1, &end, 10);
    return !errno && !*end && strlen(dash + 1) <= 20;
}

static int cmd_publish(const config_t *cfg, int argc, char **argv)
{
    outbox_msg_t m = {0};
    long count = 1;
    const char *count_s = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = strcmp(a, "--topic") == 0         ? &m.topic
                           : strcmp(a, "--type") == 0        ? &m.type
                           : strcmp(a, "--tenant") == 0      ? &m.tenant
                           : strcmp(a, "--aggregate") == 0   ? &m.aggregate_id
                           : strcmp(a, "--payload") == 0     ? &m.payload
                           : strcmp(a, "--traceparent") == 0 ? &m.traceparent
                           : strcmp(a, "--request-id") == 0  ? &m.request_id
                                                             : NULL;
        if (dst) {
            int rc = opt_value("publish", argc, argv, &i, dst);
            if (rc)
                return rc;
            continue;
        }
        if (strcmp(a, "--count") != 0)
            return fail(2, "publish: unknown option %s", a);
        int rc = opt_value("publish", argc, argv, &i, &count_s);
        if (rc)
            return rc;
        char *end;
        count = strtol(count_s, &end, 10);
        if (*end || count < 1 || count > 10000000)
            return fail(2, "publish: --count must be 1..10000000");
    }
    const char *missing = !m.topic ? "--topic" : !m.type ? "--type" : !m.tenant ? "--tenant"
                          : !m.aggregate_id ? "--aggregate" : !m.payload ? "--payload" : NULL;
    if (missing)
        return fail(2, "publish: %s is required", missing);
    /* what the gateway would accept in these headers: the services read them as such */
    traceparent_t tp;
    if (m.traceparent && *m.traceparent && reqctx_traceparent_parse(m.traceparent, &tp) != 0)
        return fail(2, "publish: --traceparent must be a W3C traceparent, 00-<32 hex>-<16 hex>-<2 hex>");
    if (m.request_id && *m.request_id && !reqctx_request_id_valid(m.request_id))
        return fail(2, "publish: --request-id must be 1..128 characters of [A-Za-z0-9._:-]");
    json_object *j = NULL;
    const char *why = NULL;
    if (json_parse_strict(m.payload, strlen(m.payload), &j, &why) != 0)
        return fail(2, "publish: --payload is not valid JSON: %s", why);
    json_object_put(j);
    outbox_params_t op; /* names and sizes, checked before any server is asked */
    if (outbox_params(&m, &op, &why) != 0)
        return fail(2, "publish: %s", why);
    if (!cfg->database_url[0])
        return fail(2, "publish: DATABASE_URL is not set (the in-memory outbox lives inside `ecom all`)");
    char *err = NULL;
    db_t *db = db_open_pg(cfg->database_url, "ecomctl", &err);
    if (!db) {
        int rc = fail(1, "cannot connect to postgres: %s", err);
        free(err);
        return rc;
    }
    char first[UUID_STR_LEN] = "", ids[10][UUID_STR_LEN]; /* with --count <= 10: printed once committed */
    long done = 0;
    int rc = 0;
    while (done < count && rc == 0) {
        long chunk = count - done < 1000 ? count - done : 1000;
        if (db_begin(db) != 0) {
            rc = fail(1, "publish: cannot begin a transaction");
            break;
        }
        for (long k = 0; k < chunk; k++) {
            char id[UUID_STR_LEN];
            if (outbox_append(db, &m, id, &why) != 0) {
                db_rollback(db);
                rc = fail(strcmp(why, "storage error") == 0 ? 1 : 2, "publish: %s", why);
                break;
            }
            if (!first[0])
                memcpy(first, id, sizeof id);
            if (count <= 10)
                memcpy(ids[k], id, sizeof id);
        }
        if (rc == 0 && db_commit(db) != 0)
            rc = fail(1, "publish: commit failed");
        if (rc == 0)
            done += chunk;
    }
    for (long k = 0; rc == 0 && count <= 10 && k < count; k++)
        printf("%s\n", ids[k]);
    if (rc == 0 && count > 10)
        printf("appended %ld messages (first id %s)\n", done, first);
    else if (rc != 0 && done > 0) /* committed 1,000 at a time: say what stays */
        fprintf(stderr, "ecomctl: publish: %ld of %ld messages were appended before the failure (first id %s)\n", done,
                count, first);
    db_close(db);
    return rc;
}

/* ---- dead rows: what the drainer could not publish ---- */

static const char sql_dead_list[] =
    "SELECT pos, id, topic, type, tenant, aggregate_id, seq, error,"
    " (extract(epoch FROM failed_at) * 1000)::bigint FROM bus.outbox_dead ORDER BY pos LIMIT 1000";
/* back with their positions: each goes out ahead of the later rows of its
 * partition (after its aggregate's successors that were published meanwhile) */
static const char sql_dead_retry[] =
    "WITH d AS (DELETE FROM bus.outbox_dead WHERE $1::bigint = 0 OR pos = $1::bigint RETURNING *)"
    " INSERT INTO bus.outbox (pos, id, partition, topic, type, tenant, aggregate_id, seq, ts, v, traceparent,"
    " request_id, payload) SELECT pos, id, partition, topic, type, tenant, aggregate_id, seq, ts, v, traceparent,"
    " request_id, payload FROM d";

static int cmd_dead(const config_t *cfg, int argc, char **argv)
{
    if (argc < 1 || (strcmp(argv[0], "list") != 0 && strcmp(argv[0], "retry") != 0))
        return fail(2, "dead: say list or retry");
    bool retry = strcmp(argv[0], "retry") == 0, all = false, as_json = false;
    const char *pos_s = NULL;
    for (int i = 1; i < argc; i++) {
        int rc = 0;
        if (strcmp(argv[i], "--pos") == 0 && retry)
            rc = opt_value("dead", argc, argv, &i, &pos_s);
        else if (strcmp(argv[i], "--all") == 0 && retry)
            all = true;
        else if (strcmp(argv[i], "--json") == 0 && !retry)
            as_json = true;
        else
            return fail(2, "dead %s: unknown option %s", argv[0], argv[i]);
        if (rc)
            return rc;
    }
    long long pos = 0;
    if (retry) {
        if (!pos_s == !all)
            return fail(2, "dead retry: give --pos N or --all");
        char *end = NULL;
        errno = 0;
        pos = pos_s ? strtoll(pos_s, &end, 10) : 0;
        if (pos_s && (!(*pos_s >= '0' && *pos_s <= '9') || *end || errno || pos < 1))
            return fail(2, "dead retry: --pos takes a row's position, as `ecomctl dead list` prints");
    }
    if (!cfg->database_url[0])
        return fail(2, "dead: DATABASE_URL is not set (the in-memory outbox lives inside `ecom all`)");
    char *err = NULL;
    PGconn *c = pg_connect(cfg->database_url, "ecomctl", &err);
    if (!c) {
        int rc = fail(1, "cannot connect to postgres: %s", err);
        free(err);
        return rc;
    }
    int rc = 0;
    if (!retry) {
        PGresult *r = pg_query(c, sql_dead_list, 0, NULL);
        if (!r) {
            rc = fail(1, "dead: cannot read bus.outbox_dead (run `ecom migrate`?)");
            goto out;
        }
        json_object *arr = json_object_new_array();
        static const char *const cols[] = {"pos",       "id",  "topic", "type",        "tenant",
                                           "aggregate", "seq", "error", "failed_at_ms"};
        for (int i = 0; i < PQntuples(r); i++) {
            json_object *o = json_object_new_object();
            for (int k = 0; k < 9; k++)
                json_object_object_add(o, cols[k],
                                       k == 0 || k == 6 || k == 8
                                           ? json_object_new_int64(strtoll(PQgetvalue(r, i, k), NULL, 10))
                                           : json_object_new_string(PQgetvalue(r, i, k)));
            json_object_array_add(arr, o);
        }
        if (as_json) {
            printf("%s\n", json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN));
        } else {
            printf("%-12s %-38s %-16s %-24s %s\n", "POS", "MESSAGE", "TOPIC", "TYPE", "ERROR");
            for (int i = 0; i < PQntuples(r); i++)
                printf("%-12s %-38s %-16s %-24s %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                       PQgetvalue(r, i, 3), PQgetvalue(r, i, 7));
        }
        if (PQntuples(r) == 1000)
            fprintf(stderr, "ecomctl: dead: the first 1000 rows; retry them to see the rest\n");
        json_object_put(arr);
        PQclear(r);
        goto out;
    }
    char pos_txt[24];
    snprintf(pos_txt, sizeof pos_txt, "%lld", pos);
    const char *p[] = {pos_txt};
    PGresult *r = pg_query(c, sql_dead_retry, 1, p);
    if (!r) {
        rc = fail(1, "dead retry: cannot move the rows back (run `ecom migrate`?)");
        goto out;
    }
    long moved = atol(PQcmdTuples(r));
    PQclear(r);
    if (pos && moved == 0) {
        rc = fail(2, "dead retry: no row %lld in bus.outbox_dead", pos);
        goto out;
    }
    printf("moved %ld rows back to the outbox\n", moved);
out:
    PQfinish(c);
    return rc;
}

/* ---- status ---- */

/* Both servers (PostgreSQL and Redis), or the exit code: 2 when a URL is
 * unset (the in-memory state lives inside `ecom all`), 1 when unreachable. */
static int open_both(const config_t *cfg, const char *what, db_t **db, bus_t **bus)
{
    if (!cfg->database_url[0] || !cfg->redis_url[0])
        return fail(2, "%s: DATABASE_URL and REDIS_URL must be set (in-memory state lives inside `ecom all`; "
                       "see its /metrics)",
                    what);
    char *err = NULL;
    *db = db_open_pg(cfg->database_url, "ecomctl", &err);
    if (!*db) {
        int rc = fail(1, "cannot connect to postgres: %s", err);
        free(err);
        return rc;
    }
    *bus = bus_open_redis(cfg->redis_url, &err);
    if (!*bus) {
        int rc = fail(1, "cannot connect to redis: %s", err);
        free(err);
        db_close(*db);
        *db = NULL;
        return rc;
    }
    return 0;
}

/* A string member of our own JSON for the text view, "?" when missing. */
static const char *shown(json_object *o, const char *key)
{
    const char *s = json_get_str(o, key);
    return s ? s : "?";
}

static int cmd_status(const config_t *cfg, int argc, char **argv)
{
    bool as_json = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            as_json = true;
        else
            return fail(2, "status: unknown option %s", argv[i]);
    }
    const char *unread = NULL; /* what could not be read: said after the rest, exit 1 */
    char unread_buf[BUS_STREAM_MAX + 16];
    db_t *db = NULL;
    bus_t *bus = NULL;
    int rc = open_both(cfg, "status", &db, &bus);
    if (rc != 0)
        return rc;
    uint64_t pending = 0, dead = 0;
    int64_t oldest = 0;
    json_object *root = json_object_new_object();
    if (outbox_stats(db, &pending, &oldest, &dead) != 0) {
        rc = fail(1, "status: cannot read the outbox (run `ecom migrate`?)");
        goto out;
    }
    json_object *jo = json_object_new_object();
    json_object_object_add(jo, "pending", json_object_new_int64((int64_t)pending));
    json_object_object_add(jo, "oldest_age_ms", json_object_new_int64(oldest));
    json_object_object_add(jo, "dead", json_object_new_int64((int64_t)dead));
    json_object_object_add(root, "outbox", jo);

    char **names = NULL;
    size_t ns = 0;
    if (bus_list_streams(bus, &names, &ns) != 0) {
        rc = fail(1, "status: cannot list streams");
        goto out;
    }
    json_object *js = json_object_new_array();
    json_object *jd = json_object_new_array();
    for (size_t i = 0; i < ns; i++) {
        bus_stream_info_t info;
        if (bus_stream_info(bus, names[i], &info) != 0) {
            snprintf(unread_buf, sizeof unread_buf, "stream %s", names[i]);
            unread = unread_buf;
            free(names[i]);
            continue;
        }
        json_object *s = json_object_new_object();
        json_object_object_add(s, "stream", json_object_new_string(names[i]));
        json_object_object_add(s, "length", json_object_new_int64((int64_t)info.length));
        bool dlq = strncmp(names[i], "ecom:dlq:", 9) == 0;
        if (!dlq) {
            json_object *gs = json_object_new_array();
            for (size_t g = 0; g < info.ngroups; g++) {
                json_object *jg = json_object_new_object();
                json_object_object_add(jg, "group", json_object_new_string(info.groups[g].name));
                json_object_object_add(jg, "lag", json_object_new_int64(info.groups[g].lag));
                json_object_object_add(jg, "pending", json_object_new_int64((int64_t)info.groups[g].pending));
                json_object_object_add(jg, "consumers", json_object_new_int64((int64_t)info.groups[g].consumers));
                json_object_array_add(gs, jg);
            }
            json_object_object_add(s, "groups", gs);
        }
        json_object_array_add(dlq ? jd : js, s);
        free(names[i]);
    }
    free(names);
    json_object_object_add(root, "streams", js);
    json_object_object_add(root, "dlq", jd);

    PGresult *r = pg_query(db_pg(db), "SELECT grp, count(*) FROM bus.inbox GROUP BY grp ORDER BY grp", 0, NULL);
    if (!r)
        unread = "bus.inbox";
    json_object *ji = json_object_new_object();
    for (int i = 0; r && i < PQntuples(r); i++)
        json_object_object_add(ji, PQgetvalue(r, i, 0), json_object_new_int64(strtoll(PQgetvalue(r, i, 1), NULL, 10)));
    PQclear(r);
    json_object_object_add(root, "inbox", ji);

    if (as_json) {
        printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN));
        goto out;
    }
    printf("outbox   pending %llu, oldest %lld ms, dead %llu\n", (unsigned long long)pending, (long long)oldest,
           (unsigned long long)dead);
    printf("\n%-32s %10s  %-16s %10s %10s\n", "STREAM", "LENGTH", "GROUP", "LAG", "PENDING");
    for (size_t i = 0; i < json_object_array_length(js); i++) {
        json_object *s = json_object_array_get_idx(js, i), *gs, *v;
        json_object_object_get_ex(s, "groups", &gs);
        json_object_object_get_ex(s, "length", &v);
        const char *sn = shown(s, "stream");
        size_t ng = json_object_array_length(gs);
        if (ng == 0)
            printf("%-32s %10lld  %-16s\n", sn, (long long)json_object_get_int64(v), "-");
        for (size_t g = 0; g < ng; g++) {
            json_object *jg = json_object_array_get_idx(gs, g), *lag, *pend;
            json_object_object_get_ex(jg, "lag", &lag);
            json_object_object_get_ex(jg, "pending", &pend);
            printf("%-32s %10lld  %-16s %10lld %10lld\n", g ? "" : sn, g ? 0LL : (long long)json_object_get_int64(v),
                   shown(jg, "group"), (long long)json_object_get_int64(lag), (long long)json_object_get_int64(pend));
        }
    }
    printf("\n%-32s %10s\n", "DLQ", "LENGTH");
    for (size_t i = 0; i < json_object_array_length(jd); i++) {
        json_object *s = json_object_array_get_idx(jd, i), *v;
        json_object_object_get_ex(s, "length", &v);
        printf("%-32s %10lld\n", shown(s, "stream"), (long long)json_object_get_int64(v));
    }
    printf("\n%-32s %10s\n", "INBOX", "APPLIED");
    json_object_object_foreach(ji, grp, cnt) printf("%-32s %10lld\n", grp, (long long)json_object_get_int64(cnt));
out:
    if (rc == 0 && unread) /* a partial picture is not a healthy one */
        rc = fail(1, "status: could not read %s (left out above)", unread);
    json_object_put(root);
    bus_close(bus);
    db_close(db);
    return rc;
}

/* ---- dlq ---- */

static const char *field(const bus_entry_t *e, const char *name)
{
    for (size_t i = 0; i < e->nfields; i++)
        if (strcmp(e->fields[2 * i], name) == 0)
            return e->fields[2 * i + 1];
    return NULL;
}

static int cmd_dlq(const config_t *cfg, int argc, char **argv)
{
    if (argc < 1 || (strcmp(argv[0], "list") != 0 && strcmp(argv[0], "replay") != 0))
        return fail(2, "dlq: say list or replay");
    bool replay = strcmp(argv[0], "replay") == 0, all = false, as_json = false;
    const char *group = NULL, *id = NULL;
    for (int i = 1; i < argc; i++) {
        int rc = 0;
        if (strcmp(argv[i], "--group") == 0)
            rc = opt_value("dlq", argc, argv, &i, &group);
        else if (strcmp(argv[i], "--id") == 0)
            rc = opt_value("dlq", argc, argv, &i, &id);
        else if (strcmp(argv[i], "--all") == 0 && replay)
            all = true;
        else if (strcmp(argv[i], "--json") == 0 && !replay)
            as_json = true;
        else
            return fail(2, "dlq %s: unknown option %s", argv[0], argv[i]);
        if (rc)
            return rc;
    }
    if (!group || !envelope_name_valid(group))
        return fail(2, "dlq: --group NAME is required");
    if (replay && !id == !all)
        return fail(2, "dlq replay: give --id ENTRY or --all");
    /* a whole id: "<ms>" alone would be a range, every entry of that millisecond */
    if (id && !entry_id_valid(id))
        return fail(2, "dlq: --id takes a stream entry id, <ms>-<seq> (as `ecomctl dlq list` prints)");
    if (!cfg->redis_url[0])
        return fail(2, "dlq: REDIS_URL is not set (the in-memory bus lives inside `ecom all`)");
    char *err = NULL;
    bus_t *bus = bus_open_redis(cfg->redis_url, &err);
    if (!bus) {
        int rc = fail(1, "cannot connect to redis: %s", err);
        free(err);
        return rc;
    }
    char dlq[BUS_STREAM_MAX];
    bus_dlq_stream(group, dlq, sizeof dlq);
    bus_entry_t *ents = NULL;
    size_t n = 0;
    int rc = 0;
    if (bus_range(bus, dlq, id ? id : "-", id ? id : "+", 0, &ents, &n) != 0) {
        rc = fail(1, "dlq: cannot read %s", dlq);
        goto out;
    }
    if (id && n == 0) {
        rc = fail(2, "dlq: no entry %s in %s", id, dlq);
        goto out;
    }
    if (n == 0 && !service_lookup(group)) { /* a misspelt group, most likely: not an empty list */
        rc = fail(2, "dlq: no service %s and nothing in %s", group, dlq);
        goto out;
    }
    if (!replay) {
        json_object *arr = json_object_new_array();
        for (size_t i = 0; i < n; i++) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "entry", json_object_new_string(ents[i].entry_id));
            for (size_t f = 0; f < ents[i].nfields; f++)
                json_object_object_add(o, ents[i].fields[2 * f], json_object_new_string(ents[i].fields[2 * f + 1]));
            json_object_array_add(arr, o);
        }
        if (as_json) {
            printf("%s\n", json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN));
        } else {
            printf("%-22s %-38s %-24s %5s  %s\n", "ENTRY", "MESSAGE", "TYPE", "TRIES", "ERROR");
            for (size_t i = 0; i < n; i++) {
                const char *mid = field(&ents[i], "id"), *type = field(&ents[i], "type");
                const char *tries = field(&ents[i], "deliveries"), *error = field(&ents[i], "error");
                printf("%-22s %-38s %-24s %5s  %s\n", ents[i].entry_id, mid ? mid : "-", type ? type : "-",
                       tries ? tries : "-", error ? error : "-");
            }
        }
        json_object_put(arr);
        goto out;
    }
    size_t sent = 0, skipped = 0, gone = 0;
    for (size_t i = 0; i < n; i++) {
        /* back to the group alone (its replay stream), out of the DLQ in the
         * same step; the inbox never recorded a dead-lettered message, so it
         * is applied when it succeeds */
        const char *why = NULL;
        int r = bus_replay_dead(bus, group, &ents[i], &why);
        if (r == 1) {
            fprintf(stderr, "ecomctl: dlq: entry %s cannot be replayed (%s); left in place\n", ents[i].entry_id, why);
            skipped++;
        } else if (r == 2) {
            fprintf(stderr, "ecomctl: dlq: entry %s is no longer in %s (replayed or deleted meanwhile); not sent\n",
                    ents[i].entry_id, dlq);
            gone++;
        } else if (r != 0) {
            rc = fail(1,
                      "dlq: replay of %s failed after %zu replayed; it is in %s or, if the connection broke, in "
                      "ecom:replay:%s (`ecomctl dlq list` tells)",
                      ents[i].entry_id, sent, dlq, group);
            goto out;
        } else {
            sent++;
        }
    }
    if (gone)
        printf("replayed %zu, left %zu, gone %zu\n", sent, skipped, gone);
    else
        printf("replayed %zu, left %zu\n", sent, skipped);
    if (skipped || gone)
        rc = 1;
out:
    bus_entries_free(ents, n);
    bus_close(bus);
    return rc;
}

/* ---- redrive: the published window back onto the streams ---- */

#define REDRIVE_BATCH 500 /* the LIMIT of the query below */

/* Every partition's lock, so no drainer publishes meanwhile (per aggregate
 * order). Fails, naming how many are held, when a drainer is running. */
static int lock_partitions(PGconn *c)
{
    char sql[160];
    int held = 0;
    for (int p = 0; p < OUTBOX_PARTITIONS; p++) {
        snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%d, %d)", DRAIN_LOCK_PARTITION, p);
        PGresult *r = pg_query(c, sql, 0, NULL);
        if (!r)
            return -1;
        held += PQgetvalue(r, 0, 0)[0] != 't';
        PQclear(r);
    }
    return held;
}

static int cmd_redrive(const config_t *cfg, int argc, char **argv)
{
    long since = -1;
    const char *topic = NULL, *since_s = NULL;
    for (int i = 0; i < argc; i++) {
        int rc;
        if (strcmp(argv[i], "--since") == 0) {
            if ((rc = opt_value("redrive", argc, argv, &i, &since_s)) != 0)
                return rc;
            char *end;
            since = strtol(since_s, &end, 10);
            if (*end || since < 1 || since > 365L * 86400)
                return fail(2, "redrive: --since takes seconds, 1..31536000");
        } else if (strcmp(argv[i], "--topic") == 0) {
            if ((rc = opt_value("redrive", argc, argv, &i, &topic)) != 0)
                return rc;
            if (!envelope_topic_valid(topic))
                return fail(2, "redrive: --topic must match [A-Za-z0-9._:-]{1,128} and not begin with dlq: or replay:");
        } else {
            return fail(2, "redrive: unknown option %s", argv[i]);
        }
    }
    if (since < 0)
        return fail(2, "redrive: --since SECONDS is required");
    db_t *db = NULL;
    bus_t *bus = NULL;
    int rc = open_both(cfg, "redrive", &db, &bus);
    if (rc != 0)
        return rc;
    PGconn *c = db_pg(db);
    int held = lock_partitions(c);
    if (held != 0) {
        rc = held < 0 ? fail(1, "redrive: cannot take the partition locks")
                      : fail(1, "redrive: %d partitions are held by running outbox-workers; stop them first", held);
        goto out;
    }
    char secs[24], last[24] = "0";
    snprintf(secs, sizeof secs, "%ld", since);
    long total = 0;
    strmap_t ready;
    strmap_init(&ready);
    for (;;) {
        const char *p[] = {secs, last, topic};
        PGresult *r = pg_query(c,
                               "SELECT pos, id, topic, type, tenant, aggregate_id, seq, ts, v, traceparent, request_id,"
                               " payload FROM bus.outbox_published WHERE published_at >= now() - make_interval(secs => $1)"
                               " AND pos > $2::bigint AND ($3::text IS NULL OR topic = $3) ORDER BY pos LIMIT 500",
                               3, p);
        if (!r) {
            rc = fail(1, "redrive: cannot read bus.outbox_published");
            break;
        }
        int n = PQntuples(r);
        envelope_t *envs = xcalloc((size_t)n + 1, sizeof *envs);
        for (int i = 0; i < n && rc == 0; i++) {
            envelope_t *e = &envs[i];
            snprintf(e->id, sizeof e->id, "%s", PQgetvalue(r, i, 1));
            e->topic = PQgetvalue(r, i, 2);
            e->type = PQgetvalue(r, i, 3);
            e->tenant = PQgetvalue(r, i, 4);
            e->aggregate_id = PQgetvalue(r, i, 5);
            e->seq = atoll(PQgetvalue(r, i, 6));
            e->ts = atoll(PQgetvalue(r, i, 7));
            e->v = atoi(PQgetvalue(r, i, 8));
            e->traceparent = PQgetvalue(r, i, 9);
            e->request_id = PQgetvalue(r, i, 10);
            e->payload = PQgetvalue(r, i, 11);
            /* the groups first, as the drainer does, so a lost stream's
             * subscribers read the entries from the start */
            if (!strmap_get(&ready, e->topic, strlen(e->topic))) {
                const char *groups[16];
                int ng = service_groups_for_topic(e->topic, groups, 16);
                char stream[BUS_STREAM_MAX];
                envelope_stream_name(e->topic, stream, sizeof stream);
                for (int g = 0; g < ng && rc == 0; g++)
                    if (bus_group_create(bus, stream, groups[g]) != 0)
                        rc = fail(1, "redrive: cannot create group %s on %s", groups[g], stream);
                strmap_put(&ready, e->topic, strlen(e->topic), NULL);
            }
        }
        if (rc == 0 && n > 0 && bus_publish(bus, envs, (size_t)n, NULL) != 0)
            rc = fail(1, "redrive: publishing failed after %ld messages", total);
        if (rc == 0 && n > 0) {
            total += n;
            snprintf(last, sizeof last, "%s", PQgetvalue(r, n - 1, 0));
        }
        free(envs);
        PQclear(r);
        if (rc != 0 || n < REDRIVE_BATCH)
            break;
    }
    strmap_free(&ready);
    if (rc == 0)
        printf("redrive: %ld messages published again (consumers skip those they applied)\n", total);
out:
    bus_close(bus);
    db_close(db); /* releases the partition locks */
    return rc;
}

int main(int argc, char **argv)
{
    const char *env_file = NULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--env-file") == 0 && i + 1 < argc) {
            env_file = argv[++i];
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            return fail(2, "unknown option %s (try --help)", argv[i]);
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i++];
    config_t cfg;
    char *errors = NULL;
    if (config_load(&cfg, env_file, CFG_ROLE_TOOL, &errors) != 0) {
        char *nl = strchr(errors, '\n');
        if (nl)
            *nl = '\0';
        int rc = fail(2, "configuration: %s", errors);
        free(errors);
        config_free(&cfg);
        return rc;
    }
    log_configure(getenv("LOG_LEVEL") ? cfg.log_level : "error", cfg.log_format);
    log_set_role("ecomctl");
    outbox_set_max_payload((size_t)cfg.outbox_max_payload);
    int rc;
    if (strcmp(cmd, "publish") == 0)
        rc = cmd_publish(&cfg, argc - i, argv + i);
    else if (strcmp(cmd, "status") == 0)
        rc = cmd_status(&cfg, argc - i, argv + i);
    else if (strcmp(cmd, "dlq") == 0)
        rc = cmd_dlq(&cfg, argc - i, argv + i);
    else if (strcmp(cmd, "redrive") == 0)
        rc = cmd_redrive(&cfg, argc - i, argv + i);
    else if (strcmp(cmd, "dead") == 0)
        rc = cmd_dead(&cfg, argc - i, argv + i);
    else
        rc = fail(2, "unknown command %s (try --help)", cmd);
    config_free(&cfg);
    /* ids or JSON that never reached a full disk or a closed pipe: not a success */
    if ((fflush(stdout) != 0 || ferror(stdout)) && rc == 0)
        rc = fail(1, "cannot write the output: %s", strerror(errno));
    return rc;
}
