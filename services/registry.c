/* services/registry.c: see registry.h. */
#include "services/registry.h"

#include "core/alloc.h"
#include "services/analytics/analytics.h"
#include "services/notification/notification.h"
#include "services/payment/payment.h"

#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

static const char *const names[] = {"analytics", "payment", "notification", NULL};

const svc_def_t *service_lookup(const char *name)
{
    if (strcmp(name, "analytics") == 0)
        return analytics_service();
    if (strcmp(name, "payment") == 0)
        return payment_service();
    if (strcmp(name, "notification") == 0)
        return notification_service();
    return NULL;
}

const char *const *service_names(void)
{
    return names;
}

int service_groups_for_topic(const char *topic, const char **out, int max)
{
    int n = 0;
    for (const char *const *name = names; *name && n < max; name++) {
        const svc_def_t *d = service_lookup(*name);
        bool wants = d->topics == NULL;
        for (const char *const *t = d->topics; t && *t && !wants; t++)
            wants = strcmp(*t, topic) == 0;
        if (wants)
            out[n++] = d->group;
    }
    return n;
}

int service_configure(const config_t *cfg, char **errors)
{
    *errors = NULL;
    char perr[512] = "", nerr[1024] = "";
    payment_config_t pc = {
        .provider_latency_ms = cfg->payment_provider_latency_ms,
        .provider_failure_rate = (double)cfg->payment_provider_failure_rate,
        .breaker = {.open_duration_ms = cfg->payment_breaker_open_ms},
    };
    int prc = payment_configure(&pc, perr, sizeof perr);
    notification_config_t nc = {
        .channels = cfg->notify_channels,
        .sink_file = cfg->notify_sink_file,
        .webhook_url = cfg->notify_webhook_url,
        .webhook_secret = cfg->notify_webhook_secret,
        .smtp_host = cfg->smtp_host,
        .smtp_port = (int)cfg->smtp_port,
        .smtp_from = cfg->smtp_from,
        .timeout_ms = cfg->notify_timeout_ms,
    };
    int nrc = notification_configure(&nc, nerr, sizeof nerr);
    if (prc == 0 && nrc == 0)
        return 0;
    /* one problem per line, as config_load reports them */
    char *all = xasprintf("%s%s%s%s", prc ? "payment: " : "", prc ? perr : "", prc && nrc ? "; " : "", nrc ? nerr : "");
    for (char *p = all; (p = strstr(p, "; ")) != NULL;) {
        *p = '\n';
        memmove(p + 1, p + 2, strlen(p + 2) + 1);
    }
    *errors = xasprintf("%s\n", all);
    free(all);
    return -1;
}
