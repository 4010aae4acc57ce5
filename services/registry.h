/* services/registry.h: the services `ecom service NAME` can run. */
#ifndef ECOM_REGISTRY_H
#define ECOM_REGISTRY_H

#include "services/runtime.h"

/* The service called name, or NULL. */
const svc_def_t *service_lookup(const char *name);
/* Names of every service, NULL-terminated (borrowed). */
const char *const *service_names(void);

#endif
