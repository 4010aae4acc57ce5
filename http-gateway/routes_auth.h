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
/* Deletes up to limit rows of each of the login's tables that
 * ended more than retain_s ago (OTP tickets past their expiry, failure
 * budgets past their hour, sessions past their expiry, revocation or 7 days
 * idle, with their refresh tokens), sets *deleted to their sum. Every limit and window
 * the routes read is an hour at most, and a revocation matters for
 * ACCESS_TOKEN_TTL_S; the gateway's janitor (core/janitor.h) runs it with a
 * day, in PostgreSQL or the memory store. 0 or -1. */
int gw_auth_cleanup(db_t *db, int64_t retain_s, size_t limit, size_t *deleted);

#endif
