/* services/registry.c: see registry.h. */
#include "services/registry.h"

#include "services/analytics/analytics.h"

#include <string.h>

static const char *const names[] = {"analytics", NULL};

const svc_def_t *service_lookup(const char *name)
{
    if (strcmp(name, "analytics") == 0)
        return analytics_service();
    return NULL;
}

const char *const *service_names(void)
{
    return names;
}
