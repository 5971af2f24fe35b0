/*-------------------------------------------------------------------------
 *
 * request.c
 *	  The life of a request: created once parsed, answered once, then
 *	  freed; and the answers for errors, with their HTTP status.
 *
 * Its answer is delivered through the function the request was created
 * with, so that this file needs nothing of the connections it serves.
 *
 *-------------------------------------------------------------------------
 */
#include <stdlib.h>
#include <string.h>

#include "request.h"

/* A request from the client given, answered through send; NULL if no memory. */
Request *
request_new(Client *client, RequestSend send)
{
	Request    *req = calloc(1, sizeof(Request));

	if (req != NULL)
	{
		req->client = client;
		req->send = send;
	}
	return req;
}

/* The client has gone: the answer, when it comes, is dropped. */
void
request_client_gone(Request *req)
{
	req->client = NULL;
}

static void
request_free(Request *req)
{
	db_work_free_params(&req->work);
	free(req->key);
	free(req);
}

/*
 * Answer a request and free it.  Takes the body.  The client may have gone
 * away meanwhile; the answer is then dropped.
 */
void
request_respond(Request *req, int status, json_t *body)
{
	if (req->client != NULL)
		req->send(req->client, status, body, req->allow);
	json_decref(body);
	request_free(req);
}

void
respond_error(Request *req, int status, const char *message)
{
	request_respond(req, status, json_pack("{s:s}", "error", message));
}

/*
 * The HTTP status for an error of the extension: the caller's fault for
 * bad values (class 22), unknown accounts (23503), an idempotency key used
 * for another request (23L01), a debit its role may not make (42501) and
 * other rules (class 23, and 54 for limits), the service's when the
 * database is unreachable.
 */
static int
sqlstate_http_status(const char *sqlstate)
{
	if (sqlstate == NULL)
		return 503;				/* libpq's own: the connection failed */
	if (strcmp(sqlstate, "23503") == 0)
		return 404;
	if (strcmp(sqlstate, "23L01") == 0)
		return 409;
	if (strcmp(sqlstate, "42501") == 0)
		return 403;
	if (strncmp(sqlstate, "22", 2) == 0)
		return 400;
	if (strncmp(sqlstate, "23", 2) == 0 || strncmp(sqlstate, "54", 2) == 0)
		return 422;
	if (strncmp(sqlstate, "08", 2) == 0 || strncmp(sqlstate, "57", 2) == 0 ||
		strncmp(sqlstate, "53", 2) == 0 || strcmp(sqlstate, "40001") == 0 ||
		strcmp(sqlstate, "40P01") == 0)
		return 503;
	return 500;
}

void
respond_sql_error(Request *req, const PGresult *result)
{
	const char *sqlstate = PQresultErrorField(result, PG_DIAG_SQLSTATE);
	const char *message = PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
	int			status = sqlstate_http_status(sqlstate);

	if (sqlstate == NULL)
	{
		respond_error(req, 503, "database unavailable");
		return;
	}
	request_respond(req, status,
					json_pack("{s:s,s:s}", "error", message ? message : "error",
							  "sqlstate", sqlstate));
}
