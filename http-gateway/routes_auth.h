/* http-gateway/routes_auth.h: handlers of the OTP login routes (rows in routes.c) and of TOTP
 * enrolment (rows in routes_authx.c). */
#ifndef ECOM_ROUTES_AUTH_H
#define ECOM_ROUTES_AUTH_H

#include "http-gateway/gw.h"

void gw_otp_request(gw_req_t *r);
void gw_otp_verify(gw_req_t *r);
/* TOTP enrolment of the caller (a session token): enroll answers 201 with the
 * otpauth:// URI and the base32 secret of a pending enrolment; activate
 * {code} makes it active once a current code matches; remove deletes it. */
void gw_totp_enroll(gw_req_t *r);
void gw_totp_activate(gw_req_t *r);
void gw_totp_remove(gw_req_t *r);

#endif
