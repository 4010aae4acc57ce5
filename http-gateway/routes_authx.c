/* http-gateway/routes_authx.c: AuthX sessions and administration over HTTP. */
#include "http-gateway/gw.h"

const route_t *const gw_routes_authx = NULL;
const size_t gw_routes_authx_n = 0;
