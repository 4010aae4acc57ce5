/* services/registry.h: the services `ecom service NAME` can run, and the
 * configuration of the ones that read settings (payment, notification). */
#ifndef ECOM_REGISTRY_H
#define ECOM_REGISTRY_H

#include "core/config.h"
#include "services/runtime.h"

/* The service called name, or NULL. */
const svc_def_t *service_lookup(const char *name);
/* The consumer groups (service names) that consume topic: those listing it and
 * those consuming every topic. Fills out (borrowed names); returns the count. */
int service_groups_for_topic(const char *topic, const char **out, int max);
/* Names of every service, NULL-terminated (borrowed). */
const char *const *service_names(void);
/* Applies cfg to every service that reads settings; call once at startup,
 * before any service runs. On failure returns -1 and *errors (owned) holds
 * every problem, one per line. */
int service_configure(const config_t *cfg, char **errors) __attribute__((warn_unused_result));

#endif
