/* http-gateway/routes_auth.h: handlers of the OTP login routes (rows in routes.c). */
#ifndef ECOM_ROUTES_AUTH_H
#define ECOM_ROUTES_AUTH_H

#include "http-gateway/gw.h"

void gw_otp_request(gw_req_t *r);
void gw_otp_verify(gw_req_t *r);

#endif
