/*-------------------------------------------------------------------------
 *
 * routes.h
 *	  The routes of ledger-http: from a parsed request to a statement, and
 *	  from the statement's result to a JSON answer.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_HTTP_ROUTES_H
#define LEDGER_HTTP_ROUTES_H

#include <stddef.h>

#include "request.h"

extern void route_request(Request *req, int method, const char *url,
						  const char *body, size_t body_len);

#endif							/* LEDGER_HTTP_ROUTES_H */
