/*-------------------------------------------------------------------------
 *
 * ledger_http.h
 *	  Declarations shared by the parts of ledger-http, the HTTP endpoint of
 *	  the ledger extension.
 *
 * One thread runs one libuv loop.  http_conn.c owns the client sockets and
 * the HTTP framing, routes.c turns requests into statements and results into
 * JSON, transfers.c groups transfers into ledger_transfer_many() calls, and
 * db_pool.c runs statements on a few non-blocking libpq connections.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_HTTP_H
#define LEDGER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <uv.h>

/* Command-line settings; see usage() in ledger_http.c. */
typedef struct Settings
{
	const char *listen;
	int			port;
	const char *conninfo;
	int			pool_size;
	int			group_max;
	long		group_wait_us;
	long long	test_accounts;
	size_t		max_body;
	size_t		max_header;
	int			timeout_ms;		/* to receive a whole request, or send a
								 * response */
	int			idle_timeout_ms;	/* between requests on a keep-alive
									 * connection */
} Settings;

extern Settings settings;
extern uv_loop_t *loop;
extern bool shutting_down;

/* The prepared statements, one per kind of database call. */
typedef enum Statement
{
	STMT_TRANSFER_MANY,
	STMT_DEPOSIT,
	STMT_WITHDRAW,
	STMT_DISBURSE,
	STMT_EVENT,
	STMT_BALANCE,
	NUM_STATEMENTS
} Statement;

#define MAX_PARAMS 4

/*
 * A statement waiting for, or running on, a database connection.  done()
 * gets the statement's result, or NULL when the connection failed first; the
 * pool clears the result after done() returns.
 */
typedef struct DbWork DbWork;
typedef void (*DbDone) (DbWork *work, PGresult *result);

struct DbWork
{
	Statement	stmt;
	int			nparams;
	char	   *params[MAX_PARAMS];	/* text values, NULL for SQL NULL */
	DbDone		done;
	DbWork	   *next;			/* in the pool's queue */
};

typedef struct Client Client;

/*
 * One HTTP request, from its parsing until its response is sent.  It
 * outlives its client if that goes away meanwhile: the client pointer is
 * then NULL and the response is dropped.
 */
typedef struct Request
{
	DbWork		work;			/* for a statement of its own */
	Client	   *client;
	long long	subject;		/* the id in the URL */
	/* a transfer, kept apart until grouped */
	long long	from;
	long long	to;
	long long	amount;
	char	   *key;			/* idempotency key, or NULL */
	const char *allow;			/* methods for a 405's Allow header */
	struct Request *next;		/* in the list of transfers to group */
} Request;

/* http_conn.c */
extern int	http_listen(void);
extern void http_stop_accepting(void);
extern int	http_client_count(void);
extern void request_respond(Request *req, int status, json_t *body);

/* routes.c */
extern void route_request(Request *req, int method, const char *url,
						  const char *body, size_t body_len);
extern void respond_error(Request *req, int status, const char *message);
extern void respond_sql_error(Request *req, const PGresult *result);
extern int	sqlstate_http_status(const char *sqlstate);
extern void request_free(Request *req);
extern char *bigint_array_literal(const long long *values, int n);
extern char *text_array_literal(char *const *values, int n);
extern char *int_to_text(long long value);

/* transfers.c */
extern int	transfers_init(void);
extern void transfers_add(Request *req);
extern DbWork *transfers_take_group(void);
extern void transfers_fail_pending(void);
extern bool transfers_idle(void);
extern void transfers_flush(void);
extern void transfers_close(void);
extern void transfers_report(void);

/* db_pool.c */
extern void db_start(void);
extern bool db_available(void);
extern void db_submit(DbWork *work);
extern void db_submit_first(DbWork *work);
extern void db_kick(void);
extern bool db_idle(void);
extern void db_stop(void);
extern void db_free(void);

/* ledger_http.c */
extern void log_message(const char *fmt,...) __attribute__((format(printf, 1, 2)));

#endif							/* LEDGER_HTTP_H */
