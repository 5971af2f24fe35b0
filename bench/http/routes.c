/*-------------------------------------------------------------------------
 *
 * routes.c
 *	  The routes of ledger-http: from a parsed request to a statement, and
 *	  from the statement's result to a JSON response.
 *
 *	  POST /transfer			{"from", "to", "amount", "idempotency_key"?}
 *	  POST /transfer/test		a transfer of 1 between two test accounts
 *	  POST /deposit				{"account", "amount", "idempotency_key"?}
 *	  POST /withdraw			{"account", "amount", "idempotency_key"?}
 *	  POST /disburse			{"from", "to": [...], "amounts": [...],
 *								 "idempotency_key"?}
 *	  GET  /events/N			the event's status and contents
 *	  GET  /accounts/N/balance	the account's balance
 *
 * Only the shape of a request is checked here (fields present, integers
 * where integers are due); the rules about values (amounts positive,
 * accounts existing, ...) are the extension's, and its errors come back
 * as 4xx with their SQLSTATE.  Transfers go to transfers.c to be grouped;
 * the other routes run a statement of their own.
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>

#include "common.h"
#include "db_pool.h"
#include "pgtext.h"
#include "request.h"
#include "routes.h"
#include "statements.h"
#include "transfers.h"

typedef enum Route
{
	ROUTE_NONE,
	ROUTE_TRANSFER,
	ROUTE_TRANSFER_TEST,
	ROUTE_DEPOSIT,
	ROUTE_WITHDRAW,
	ROUTE_DISBURSE,
	ROUTE_EVENT,
	ROUTE_BALANCE
} Route;

/* A decimal id of at most 18 digits, so that it cannot overflow. */
static bool
parse_id(const char *s, size_t len, long long *id)
{
	size_t		i;

	if (len == 0 || len > 18)
		return false;
	*id = 0;
	for (i = 0; i < len; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return false;
		*id = *id * 10 + (s[i] - '0');
	}
	return true;
}

/* Which route a path (without its query string) names. */
static Route
match_route(const char *path, size_t len, long long *id)
{
	static const struct
	{
		const char *path;
		Route		route;
	}			fixed[] = {
		{"/transfer", ROUTE_TRANSFER},
		{"/transfer/test", ROUTE_TRANSFER_TEST},
		{"/deposit", ROUTE_DEPOSIT},
		{"/withdraw", ROUTE_WITHDRAW},
		{"/disburse", ROUTE_DISBURSE},
	};
	const char *events = "/events/";
	const char *accounts = "/accounts/";
	const char *balance = "/balance";
	size_t		i;

	for (i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		if (strlen(fixed[i].path) == len && memcmp(fixed[i].path, path, len) == 0)
			return fixed[i].route;

	if (len > strlen(events) && memcmp(path, events, strlen(events)) == 0 &&
		parse_id(path + strlen(events), len - strlen(events), id))
		return ROUTE_EVENT;

	if (len > strlen(accounts) + strlen(balance) &&
		memcmp(path, accounts, strlen(accounts)) == 0 &&
		memcmp(path + len - strlen(balance), balance, strlen(balance)) == 0 &&
		parse_id(path + strlen(accounts),
				 len - strlen(accounts) - strlen(balance), id))
		return ROUTE_BALANCE;

	return ROUTE_NONE;
}

/* Parse the body as a JSON object, or answer 400 and return NULL. */
static json_t *
parse_body(Request *req, const char *body, size_t len)
{
	json_error_t error;
	json_t	   *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &error);
	char		message[256];

	if (root == NULL)
	{
		snprintf(message, sizeof(message), "malformed JSON: %s", error.text);
		respond_error(req, 400, message);
		return NULL;
	}
	if (!json_is_object(root))
	{
		json_decref(root);
		respond_error(req, 400, "the body must be a JSON object");
		return NULL;
	}
	return root;
}

static bool
field_error(Request *req, const char *name, const char *problem)
{
	char		message[128];

	snprintf(message, sizeof(message), "field \"%s\" %s", name, problem);
	respond_error(req, 400, message);
	return false;
}

static bool
get_integer(Request *req, json_t *obj, const char *name, long long *value)
{
	json_t	   *v = json_object_get(obj, name);

	if (v == NULL)
		return field_error(req, name, "is missing");
	if (!json_is_integer(v))
		return field_error(req, name, "must be an integer");
	*value = json_integer_value(v);
	return true;
}

/* An array of integers, malloc'd into *values. */
static bool
get_integer_array(Request *req, json_t *obj, const char *name,
				  long long **values, int *n)
{
	json_t	   *v = json_object_get(obj, name);
	size_t		i;

	if (v == NULL)
		return field_error(req, name, "is missing");
	if (!json_is_array(v))
		return field_error(req, name, "must be an array of integers");
	*n = (int) json_array_size(v);
	*values = malloc(sizeof(long long) * (*n + 1));
	if (*values == NULL)
	{
		respond_error(req, 500, "out of memory");
		return false;
	}
	for (i = 0; i < json_array_size(v); i++)
	{
		json_t	   *e = json_array_get(v, i);

		if (!json_is_integer(e))
		{
			free(*values);
			*values = NULL;
			return field_error(req, name, "must be an array of integers");
		}
		(*values)[i] = json_integer_value(e);
	}
	return true;
}

/* The optional idempotency key: absent or null for none. */
static bool
get_key(Request *req, json_t *obj)
{
	json_t	   *v = json_object_get(obj, "idempotency_key");

	req->key = NULL;
	if (v == NULL || json_is_null(v))
		return true;
	if (!json_is_string(v))
		return field_error(req, "idempotency_key", "must be a string");
	req->key = strdup(json_string_value(v));
	return true;
}

/*
 * Answer a request whose statement failed: with 503 if it did not run (no
 * result), else with the error.  Returns whether it did.
 */
static bool
respond_if_failed(Request *req, const PGresult *res)
{
	if (res == NULL)
		respond_error(req, 503, "database unavailable");
	else if (PQresultStatus(res) != PGRES_TUPLES_OK)
		respond_sql_error(req, res);
	else
		return false;
	return true;
}

/* A 404: the read's subject, an event or an account (what), is not there. */
static void
respond_not_found(Request *req, const char *what)
{
	char		message[64];

	snprintf(message, sizeof(message), "%s %lld not found", what, req->subject);
	respond_error(req, 404, message);
}

static void
submit_statement(Request *req, Statement stmt, DbDone done)
{
	req->work.stmt = stmt;
	req->work.done = done;
	if (!db_available())
	{
		respond_error(req, 503, "database unavailable");
		return;
	}
	db_submit(&req->work);
}

/* Deposits, withdrawals and disbursements: 202 with the event's id. */
static void
enqueue_done(DbWork *work, PGresult *res)
{
	Request    *req = (Request *) work;

	if (!respond_if_failed(req, res))
		request_respond(req, 202,
						json_pack("{s:I}", "event_id",
								  (json_int_t) strtoll(PQgetvalue(res, 0, 0), NULL, 10)));
}

/* '{1,2}' from the server into a JSON array of integers. */
static json_t *
json_from_bigint_array(const char *text)
{
	json_t	   *array = json_array();
	const char *p = text;
	long long	v;

	while (bigint_array_next(&p, &v))
		json_array_append_new(array, json_integer(v));
	return array;
}

/* Column col of row 0 as JSON; kind 'i' integer, 'a' bigint[], 's' text. */
static json_t *
column_json(const PGresult *res, int col, char kind)
{
	const char *v;

	if (PQgetisnull(res, 0, col))
		return json_null();
	v = PQgetvalue(res, 0, col);
	switch (kind)
	{
		case 'i':
			return json_integer(strtoll(v, NULL, 10));
		case 'a':
			return json_from_bigint_array(v);
		default:
			return json_string(v);
	}
}

static void
event_done(DbWork *work, PGresult *res)
{
	Request    *req = (Request *) work;

	if (respond_if_failed(req, res))
		return;
	if (PQntuples(res) == 0)
		respond_not_found(req, "event");
	else
		request_respond(req, 200,
						json_pack("{s:I,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}",
								  "event_id", (json_int_t) req->subject,
								  "kind", column_json(res, 0, 's'),
								  "account", column_json(res, 1, 'i'),
								  "to", column_json(res, 2, 'a'),
								  "amounts", column_json(res, 3, 'a'),
								  "amount", column_json(res, 4, 'i'),
								  "status", column_json(res, 5, 's'),
								  "reason", column_json(res, 6, 's'),
								  "enqueued_at", column_json(res, 7, 's'),
								  "applied_at", column_json(res, 8, 's')));
}

static void
balance_done(DbWork *work, PGresult *res)
{
	Request    *req = (Request *) work;

	if (respond_if_failed(req, res))
		return;
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
		respond_not_found(req, "account");
	else
		request_respond(req, 200,
						json_pack("{s:I,s:o}",
								  "account", (json_int_t) req->subject,
								  "balance", column_json(res, 0, 'i')));
}

static void
handle_transfer(Request *req, json_t *body)
{
	if (get_integer(req, body, "from", &req->from) &&
		get_integer(req, body, "to", &req->to) &&
		get_integer(req, body, "amount", &req->amount) &&
		get_key(req, body))
		transfers_add(req);
}

/*
 * The prototype's benchmark: 1 between two distinct accounts drawn from
 * 1..--test-accounts (xorshift64*, good enough to spread the load).
 */
static void
handle_transfer_test(Request *req)
{
	static uint64_t state = 0;
	long long	n = settings.test_accounts;

	if (n < 2)
	{
		respond_error(req, 409, "test transfers need --test-accounts of at least 2");
		return;
	}
	if (state == 0)
		state = uv_hrtime() | 1;
	state ^= state >> 12;
	state ^= state << 25;
	state ^= state >> 27;
	req->from = 1 + (long long) ((state * 0x2545F4914F6CDD1DULL) % (uint64_t) n);
	state ^= state >> 12;
	state ^= state << 25;
	state ^= state >> 27;
	req->to = 1 + (long long) ((state * 0x2545F4914F6CDD1DULL) % (uint64_t) (n - 1));
	if (req->to >= req->from)
		req->to++;
	req->amount = 1;
	transfers_add(req);
}

/* A deposit or a withdrawal. */
static void
handle_external(Request *req, json_t *body, Statement stmt)
{
	long long	account;
	long long	amount;

	if (!get_integer(req, body, "account", &account) ||
		!get_integer(req, body, "amount", &amount) ||
		!get_key(req, body))
		return;
	req->work.nparams = 3;
	req->work.params[0] = int_to_text(account);
	req->work.params[1] = int_to_text(amount);
	req->work.params[2] = req->key ? strdup(req->key) : NULL;
	submit_statement(req, stmt, enqueue_done);
}

static void
handle_disburse(Request *req, json_t *body)
{
	long long	from;
	long long  *to = NULL;
	long long  *amounts = NULL;
	int			nto;
	int			namounts;

	if (get_integer(req, body, "from", &from) &&
		get_integer_array(req, body, "to", &to, &nto) &&
		get_integer_array(req, body, "amounts", &amounts, &namounts) &&
		get_key(req, body))
	{
		req->work.nparams = 4;
		req->work.params[0] = int_to_text(from);
		req->work.params[1] = bigint_array_literal(to, nto);
		req->work.params[2] = bigint_array_literal(amounts, namounts);
		req->work.params[3] = req->key ? strdup(req->key) : NULL;
		submit_statement(req, STMT_DISBURSE, enqueue_done);
	}
	free(to);
	free(amounts);
}

static void
handle_read(Request *req, Statement stmt, DbDone done)
{
	req->work.nparams = 1;
	req->work.params[0] = int_to_text(req->subject);
	submit_statement(req, stmt, done);
}

/* The method each route takes, and the name for an Allow header. */
static bool
method_allowed(Route route, int method, Request *req)
{
	bool		is_read = route == ROUTE_EVENT || route == ROUTE_BALANCE;

	req->allow = is_read ? "GET" : "POST";
	return method == (is_read ? HTTP_GET : HTTP_POST);
}

/*
 * Answer a request, now or once the database has.  Takes the request; the
 * body is only borrowed.
 */
void
route_request(Request *req, int method, const char *url,
			  const char *body, size_t body_len)
{
	const char *query = strchr(url, '?');
	size_t		path_len = query ? (size_t) (query - url) : strlen(url);
	Route		route = match_route(url, path_len, &req->subject);
	json_t	   *json = NULL;

	if (route == ROUTE_NONE)
	{
		respond_error(req, 404, "not found");
		return;
	}
	if (!method_allowed(route, method, req))
	{
		respond_error(req, 405, "method not allowed");
		return;
	}
	req->allow = NULL;

	if (route == ROUTE_EVENT)
		handle_read(req, STMT_EVENT, event_done);
	else if (route == ROUTE_BALANCE)
		handle_read(req, STMT_BALANCE, balance_done);
	else if (route == ROUTE_TRANSFER_TEST)
		handle_transfer_test(req);
	else if ((json = parse_body(req, body, body_len)) != NULL)
	{
		switch (route)
		{
			case ROUTE_TRANSFER:
				handle_transfer(req, json);
				break;
			case ROUTE_DEPOSIT:
				handle_external(req, json, STMT_DEPOSIT);
				break;
			case ROUTE_WITHDRAW:
				handle_external(req, json, STMT_WITHDRAW);
				break;
			case ROUTE_DISBURSE:
				handle_disburse(req, json);
				break;
			default:
				respond_error(req, 500, "unexpected route");
				break;
		}
		json_decref(json);
	}
}
