/* core/health.h: the process's readiness checks. Role loops report each
 * dependency as they use it; /ready (admin server, gateway) answers from these
 * cached results in application/health+json, never by calling out.
 * Owns: a fixed table of checks (component names are copied). */
#ifndef ECOM_HEALTH_H
#define ECOM_HEALTH_H

#include <stdbool.h>

struct evbuffer;

#define HEALTH_STALE_MS 15000 /* a check not reported for this long fails */

void health_report(const char *component, bool ok, double latency_ms);
/* Registers a component as required before its first report (so /ready fails until then). */
void health_require(const char *component);
void health_set_shutting_down(bool on);
/* Renders the health+json document; returns true when ready (pass). */
bool health_render(struct evbuffer *out, const char *version);

#endif
