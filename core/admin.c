/* core/admin.c: see admin.h. */
#include "core/admin.h"

#include "core/alloc.h"
#include "core/health.h"
#include "core/metrics.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct admin {
    struct event_base *base;
    struct evhttp *http;
    pthread_t thread;
};

static void reply(struct evhttp_request *req, int code, const char *ctype, struct evbuffer *body)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    evhttp_send_reply(req, code, code == 200 ? "OK" : code == 404 ? "Not Found" : "Service Unavailable", body);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    const char *uri = evhttp_request_get_uri(req);
    size_t plen = strcspn(uri, "?");
    struct evbuffer *body = evbuffer_new();
    if (plen == 7 && strncmp(uri, "/health", 7) == 0) {
        evbuffer_add_printf(body, "{\"status\":\"pass\"}");
        reply(req, 200, "application/health+json", body);
    } else if (plen == 6 && strncmp(uri, "/ready", 6) == 0) {
        bool ok = health_render(body, "1");
        reply(req, ok ? 200 : 503, "application/health+json", body);
    } else if (plen == 8 && strncmp(uri, "/metrics", 8) == 0) {
        metrics_render(body);
        reply(req, 200, "text/plain; version=0.0.4", body);
    } else {
        evbuffer_add_printf(body, "{\"type\":\"about:blank\",\"title\":\"Not Found\",\"status\":404}");
        reply(req, 404, "application/problem+json", body);
    }
    evbuffer_free(body);
}

static void *run(void *arg)
{
    admin_t *a = arg;
    event_base_dispatch(a->base);
    return NULL;
}

admin_t *admin_start(int port, char **err)
{
    *err = NULL;
    if (port == 0)
        return NULL;
    evthread_use_pthreads();
    admin_t *a = xcalloc(1, sizeof *a);
    a->base = event_base_new();
    a->http = evhttp_new(a->base);
    evhttp_set_gencb(a->http, on_request, a);
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    if (evhttp_bind_socket(a->http, "0.0.0.0", (ev_uint16_t)port) != 0) {
        *err = xasprintf("admin port %d: cannot bind", port);
        evhttp_free(a->http);
        event_base_free(a->base);
        free(a);
        return NULL;
    }
    pthread_create(&a->thread, NULL, run, a);
    return a;
}

void admin_stop(admin_t *a)
{
    if (!a)
        return;
    event_base_loopbreak(a->base);
    pthread_join(a->thread, NULL);
    evhttp_free(a->http);
    event_base_free(a->base);
    free(a);
}
