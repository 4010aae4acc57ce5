/* http-gateway/routes_payments.h: handlers of the payment routes (rows in routes.c). */
#ifndef ECOM_ROUTES_PAYMENTS_H
#define ECOM_ROUTES_PAYMENTS_H

#include "http-gateway/gw.h"

void gw_post_payment(gw_req_t *r);
void gw_get_payment(gw_req_t *r);
void gw_post_refund(gw_req_t *r);

#endif
