/* http-gateway/gateway.h: `ecom gateway`. GATEWAY_THREADS threads (default:
 * cores), each with its own event base, evhttp and SO_REUSEPORT listener on
 * PORT, and its own PostgreSQL pool (or a handle on the shared memory store).
 * Shared by all threads: the route table, the response cache, the breakers,
 * the chaos budget, the token keys. */
#ifndef ECOM_GATEWAY_H
#define ECOM_GATEWAY_H

#include "core/config.h"
#include "core/db.h"

#include <stdatomic.h>

/* Validates routes and keys, binds, serves until *stop, drains, returns 0.
 * mem is the memory store when DATABASE_URL is unset (NULL otherwise).
 * On a startup problem prints every problem and returns -1. */
int gateway_run(const config_t *cfg, memstore_t *mem, atomic_bool *stop);

/* Checks routes and keys without binding (`ecom gateway --check`). */
int gateway_check(const config_t *cfg);

#endif
