/* http-gateway/routes_reads.c: the services' read models over HTTP. */
#include "http-gateway/gw.h"

const route_t *const gw_routes_reads = NULL;
const size_t gw_routes_reads_n = 0;
