/* core/admin.h: the small admin HTTP server of the drainer and services:
 * GET /health (alive: answers while the process runs, checks nothing),
 * GET /ready (core/health.h; 503 when a dependency fails or during shutdown),
 * GET /metrics (Prometheus text). Runs its own event base on its own thread.
 * Owns: the thread, the event base and the listener. */
#ifndef ECOM_ADMIN_H
#define ECOM_ADMIN_H

typedef struct admin admin_t;

/* port 0 = off (returns NULL without error). NULL and *err (owned) on failure. */
admin_t *admin_start(int port, char **err);
void admin_stop(admin_t *a);

#endif
