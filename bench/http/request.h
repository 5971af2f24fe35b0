/*-------------------------------------------------------------------------
 *
 * request.h
 *	  One HTTP request of ledger-http, from its parsing until its answer.
 *
 * http_conn.c creates a request when one has been parsed, saying how its
 * answer reaches the client; routes.c and transfers.c answer it.  Every
 * request is answered exactly once, which frees it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_HTTP_REQUEST_H
#define LEDGER_HTTP_REQUEST_H

#include <jansson.h>
#include <libpq-fe.h>

#include "db_pool.h"
#include "fifo.h"

/* The connection a request came on: http_conn.c's, opaque here. */
typedef struct Client Client;

/* Deliver an answer to the client; the body is only borrowed. */
typedef void (*RequestSend) (Client *client, int status, json_t *body,
							 const char *allow);

/*
 * A request outlives its client if that goes away meanwhile: the client
 * pointer is then NULL and the answer is dropped.
 */
typedef struct Request
{
	DbWork		work;			/* for a statement of its own; first, so that
								 * a DbWork of a request is the request */
	Client	   *client;
	RequestSend send;
	long long	subject;		/* the id in the URL */
	/* a transfer, kept apart until transfers.c groups it */
	long long	from;
	long long	to;
	long long	amount;
	char	   *key;			/* idempotency key, or NULL */
	const char *allow;			/* methods for a 405's Allow header */
	FifoLink	waiting;		/* in transfers.c's list of transfers to
								 * group */
} Request;

extern Request *request_new(Client *client, RequestSend send);
extern void request_client_gone(Request *req);
extern void request_respond(Request *req, int status, json_t *body);
extern void respond_error(Request *req, int status, const char *message);
extern void respond_sql_error(Request *req, const PGresult *result);

#endif							/* LEDGER_HTTP_REQUEST_H */
