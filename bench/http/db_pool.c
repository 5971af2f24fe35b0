/*-------------------------------------------------------------------------
 *
 * db_pool.c
 *	  A few libpq connections driven from the libuv loop.
 *
 * Each connection runs one statement at a time, in non-blocking mode, with
 * its socket watched by a uv_poll handle; nothing here ever waits on the
 * network.  Work comes from the pool's queue and from the source registered
 * with db_set_source(), in turn; the pool knows nothing of what the
 * statements are for.
 *
 * A connection that fails fails its statement (the caller answers 503),
 * and is reopened after a delay that doubles up to a ceiling.  When no
 * connection is up, everything queued, and what the source holds, is
 * failed too, so that no request waits on a database that is not there.
 *
 * The poll handle is always closed before libpq may close its socket: a
 * socket number reused behind libuv's back would be watched by the wrong
 * handle, so the connection phase, in which libpq may open a new socket at
 * each step, gets a fresh handle at each step.
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "db_pool.h"

#define BACKOFF_FIRST_MS	100
#define BACKOFF_MAX_MS		2000

typedef enum DbState
{
	DB_DOWN,					/* waiting to reconnect */
	DB_CONNECTING,
	DB_PREPARING,
	DB_IDLE,
	DB_BUSY,
	DB_CLOSED					/* shut down for good */
} DbState;

typedef struct DbConn
{
	int			index;
	PGconn	   *pg;
	uv_poll_t  *poll;
	uv_timer_t	retry;
	DbState		state;
	int			prepared;		/* statements prepared so far */
	int			backoff_ms;
	DbWork	   *work;
	PGresult   *result;			/* the first result of the running statement */
} DbConn;

static const DbStatement *statements;	/* prepared on every connection */
static int	nstatements;
static DbConn *conns;
static Fifo queue;
static const DbSource *source;
static bool stopping;
static bool serve_source_next;	/* the source and the queue take turns */

static void db_retry_cb(uv_timer_t *timer);
static void db_poll_cb(uv_poll_t *handle, int status, int events);

static void
free_handle(uv_handle_t *handle)
{
	free(handle);
}

static void
db_unwatch(DbConn *c)
{
	if (c->poll != NULL)
	{
		uv_close((uv_handle_t *) c->poll, free_handle);
		c->poll = NULL;
	}
}

/* Watch the connection's socket for the events given. */
static bool
db_watch(DbConn *c, int events, bool fresh_handle)
{
	if (fresh_handle)
		db_unwatch(c);
	if (c->poll == NULL)
	{
		c->poll = malloc(sizeof(uv_poll_t));
		if (c->poll == NULL ||
			uv_poll_init_socket(loop, c->poll, PQsocket(c->pg)) != 0)
		{
			free(c->poll);
			c->poll = NULL;
			return false;
		}
		c->poll->data = c;
	}
	return uv_poll_start(c->poll, events, db_poll_cb) == 0;
}

static bool
is_up(DbConn *c)
{
	return c->state == DB_IDLE || c->state == DB_BUSY;
}

bool
db_available(void)
{
	int			i;

	for (i = 0; i < settings.pool_size; i++)
		if (is_up(&conns[i]))
			return true;
	return false;
}

static void
fail_queued_work(void)
{
	FifoLink   *link;

	while ((link = fifo_pop(&queue)) != NULL)
	{
		DbWork	   *w = fifo_entry(link, DbWork, queued);

		w->done(w, NULL);
	}
	if (source != NULL)
		source->fail_all();
}

/*
 * Give up on a connection: fail its statement, and try again later unless
 * shutting down.
 */
static void
db_conn_failed(DbConn *c, const char *why)
{
	bool		was_up = is_up(c);
	DbWork	   *w = c->work;

	db_unwatch(c);
	if (c->pg != NULL)
	{
		/* once per outage, and only the first line of libpq's message */
		if (was_up || c->backoff_ms == BACKOFF_FIRST_MS)
		{
			const char *message = why ? why : PQerrorMessage(c->pg);

			log_message("database connection %d %s: %.*s", c->index,
						was_up ? "lost" : "failed",
						(int) strcspn(message, "\n"), message);
		}
		PQfinish(c->pg);
		c->pg = NULL;
	}
	if (c->result != NULL)
		PQclear(c->result);
	c->result = NULL;
	c->work = NULL;

	if (stopping)
		c->state = DB_CLOSED;
	else
	{
		c->state = DB_DOWN;
		uv_timer_start(&c->retry, db_retry_cb, c->backoff_ms, 0);
		c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ?
			BACKOFF_MAX_MS : c->backoff_ms * 2;
	}

	if (w != NULL)
		w->done(w, NULL);
	if (!db_available())
		fail_queued_work();
}

/* Send what libpq has buffered, and watch for what comes next. */
static void
db_flush_and_watch(DbConn *c)
{
	int			r = PQflush(c->pg);

	if (r < 0)
		db_conn_failed(c, NULL);
	else if (!db_watch(c, UV_READABLE | (r == 1 ? UV_WRITABLE : 0), false))
		db_conn_failed(c, "cannot watch the socket");
}

static void
db_send_prepare(DbConn *c)
{
	if (!PQsendPrepare(c->pg, statements[c->prepared].name,
					   statements[c->prepared].sql, 0, NULL))
		db_conn_failed(c, NULL);
	else
		db_flush_and_watch(c);
}

static void
db_send(DbConn *c, DbWork *w)
{
	c->state = DB_BUSY;
	c->work = w;
	if (!PQsendQueryPrepared(c->pg, statements[w->stmt].name, w->nparams,
							 (const char *const *) w->params, NULL, NULL, 0))
		db_conn_failed(c, NULL);
	else
		db_flush_and_watch(c);
}

static void
ignore_notice(void *arg, const char *message)
{
}

static void
db_connected(DbConn *c)
{
	if (PQsetnonblocking(c->pg, 1) != 0)
	{
		db_conn_failed(c, NULL);
		return;
	}
	PQsetNoticeProcessor(c->pg, ignore_notice, NULL);
	c->state = DB_PREPARING;
	c->prepared = 0;
	db_send_prepare(c);
}

/* One step of an asynchronous connection attempt. */
static void
db_continue_connect(DbConn *c)
{
	switch (PQconnectPoll(c->pg))
	{
		case PGRES_POLLING_OK:
			db_connected(c);
			break;
		case PGRES_POLLING_READING:
			if (!db_watch(c, UV_READABLE, true))
				db_conn_failed(c, "cannot watch the socket");
			break;
		case PGRES_POLLING_WRITING:
			if (!db_watch(c, UV_WRITABLE, true))
				db_conn_failed(c, "cannot watch the socket");
			break;
		default:
			db_conn_failed(c, NULL);
			break;
	}
}

static void
db_connect(DbConn *c)
{
	/*
	 * The conninfo string comes last, expanded from dbname, so that what it
	 * says wins.  JSON is UTF-8, and so must be the server's messages.
	 */
	static const char *const keywords[] = {
		"client_encoding", "fallback_application_name", "dbname", NULL
	};
	const char *values[] = {"UTF8", "ledger-http", settings.conninfo, NULL};

	if (stopping)
		return;
	c->pg = PQconnectStartParams(keywords, values, 1);
	if (c->pg == NULL)
	{
		db_conn_failed(c, "out of memory");
		return;
	}
	c->state = DB_CONNECTING;
	if (PQstatus(c->pg) == CONNECTION_BAD)
		db_conn_failed(c, NULL);
	else if (!db_watch(c, UV_WRITABLE, true))
		db_conn_failed(c, "cannot watch the socket");
}

static void
db_retry_cb(uv_timer_t *timer)
{
	db_connect(timer->data);
}

static DbWork *
take_from_source(void)
{
	return source != NULL ? source->take() : NULL;
}

/* Pick the next statement to run: the source and the queue take turns. */
static DbWork *
next_work(void)
{
	DbWork	   *w = NULL;
	FifoLink   *link;

	serve_source_next = !serve_source_next;
	if (serve_source_next)
		w = take_from_source();
	if (w == NULL && (link = fifo_pop(&queue)) != NULL)
		w = fifo_entry(link, DbWork, queued);
	if (w == NULL && !serve_source_next)
		w = take_from_source();
	return w;
}

/*
 * Start work on every idle connection.  Failures inside may call back into
 * here; the outer call then goes round again instead of nesting.
 */
void
db_kick(void)
{
	static bool running = false;
	static bool again = false;

	if (running)
	{
		again = true;
		return;
	}
	running = true;
	do
	{
		int			i;

		again = false;
		for (i = 0; i < settings.pool_size; i++)
		{
			DbConn	   *c = &conns[i];
			DbWork	   *w;

			if (c->state != DB_IDLE)
				continue;
			w = next_work();
			if (w == NULL)
				break;
			db_send(c, w);
		}
	} while (again);
	running = false;
}

/* The running statement or preparation has returned all its results. */
static void
db_statement_done(DbConn *c)
{
	PGresult   *res = c->result;
	DbWork	   *w = c->work;

	c->result = NULL;
	c->work = NULL;
	if (c->state == DB_PREPARING)
	{
		if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
		{
			const char *message = res ?
				PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

			/* e.g. the extension is not installed: retry later */
			log_message("database connection %d cannot prepare %s: %s",
						c->index, statements[c->prepared].name,
						message ? message : "no result");
			PQclear(res);
			db_conn_failed(c, "preparation failed");
			return;
		}
		PQclear(res);
		res = NULL;
		if (++c->prepared < nstatements)
		{
			db_send_prepare(c);
			return;
		}
		log_message("database connection %d ready", c->index);
		c->backoff_ms = BACKOFF_FIRST_MS;
	}
	if (PQstatus(c->pg) == CONNECTION_BAD)
	{
		/*
		 * libpq has closed the socket already: stop watching its number now,
		 * before another socket can get it.
		 */
		db_unwatch(c);
		c->state = DB_DOWN;
	}
	else if (stopping)
	{
		db_unwatch(c);
		PQfinish(c->pg);
		c->pg = NULL;
		c->state = DB_CLOSED;
	}
	else
		c->state = DB_IDLE;
	if (w != NULL)
		w->done(w, res);
	PQclear(res);
	if (c->state == DB_DOWN)
		db_conn_failed(c, NULL);
	db_kick();
}

static void
db_read(DbConn *c)
{
	if (!PQconsumeInput(c->pg))
	{
		db_conn_failed(c, NULL);
		return;
	}
	while (!PQisBusy(c->pg))
	{
		PGresult   *res = PQgetResult(c->pg);

		if (res == NULL)
		{
			db_statement_done(c);
			return;
		}
		if (c->result == NULL)
			c->result = res;
		else
			PQclear(res);
	}
}

static void
db_poll_cb(uv_poll_t *handle, int status, int events)
{
	DbConn	   *c = handle->data;

	if (status < 0)
	{
		db_conn_failed(c, uv_strerror(status));
		return;
	}
	switch (c->state)
	{
		case DB_CONNECTING:
			db_continue_connect(c);
			break;
		case DB_PREPARING:
		case DB_BUSY:
			if (events & UV_WRITABLE)
			{
				db_flush_and_watch(c);
				if (c->state != DB_PREPARING && c->state != DB_BUSY)
					break;
			}
			if (events & UV_READABLE)
				db_read(c);
			break;
		case DB_IDLE:
			/* nothing is expected: this is the server going away */
			if (!PQconsumeInput(c->pg) || PQstatus(c->pg) == CONNECTION_BAD)
				db_conn_failed(c, NULL);
			break;
		default:
			break;
	}
}

/* Open the connections, each preparing the statements given. */
void
db_start(const DbStatement *stmts, int nstmts)
{
	int			i;

	statements = stmts;
	nstatements = nstmts;
	conns = calloc(settings.pool_size, sizeof(DbConn));
	if (conns == NULL)
	{
		log_message("out of memory");
		exit(1);
	}
	for (i = 0; i < settings.pool_size; i++)
	{
		DbConn	   *c = &conns[i];

		c->index = i;
		c->state = DB_DOWN;
		c->backoff_ms = BACKOFF_FIRST_MS;
		uv_timer_init(loop, &c->retry);
		c->retry.data = c;
		db_connect(c);
	}
}

/* Take statements from the source given too, whenever a connection is free. */
void
db_set_source(const DbSource *src)
{
	source = src;
}

/*
 * Queue a statement, at the head or the tail.  Callers check db_available()
 * first; should the last connection have gone since, the statement fails at
 * once.
 */
static void
submit(DbWork *w, bool first)
{
	if (!db_available())
	{
		w->done(w, NULL);
		return;
	}
	if (first)
		fifo_push_first(&queue, &w->queued);
	else
		fifo_push(&queue, &w->queued);
	db_kick();
}

void
db_submit(DbWork *w)
{
	submit(w, false);
}

/* Queue a statement ahead of the others: a retry, which has waited already. */
void
db_submit_first(DbWork *w)
{
	submit(w, true);
}

/* Whether no statement is queued or running. */
bool
db_idle(void)
{
	int			i;

	if (queue.count > 0)
		return false;
	for (i = 0; i < settings.pool_size; i++)
		if (conns[i].state == DB_BUSY)
			return false;
	return true;
}

/*
 * Close the connections that are not running a statement; the others close
 * when theirs returns.  Called at shutdown, once no more work can come.
 */
void
db_stop(void)
{
	int			i;

	stopping = true;
	for (i = 0; i < settings.pool_size; i++)
	{
		DbConn	   *c = &conns[i];

		uv_timer_stop(&c->retry);
		uv_close((uv_handle_t *) &c->retry, NULL);
		if (c->state == DB_BUSY)
			continue;
		db_unwatch(c);
		if (c->pg != NULL)
			PQfinish(c->pg);
		c->pg = NULL;
		c->state = DB_CLOSED;
	}
}

/* Free what db_start() allocated, once the loop has stopped. */
void
db_free(void)
{
	free(conns);
	conns = NULL;
}

/* Free a statement's parameters, leaving it with none. */
void
db_work_free_params(DbWork *w)
{
	int			i;

	for (i = 0; i < w->nparams; i++)
		free(w->params[i]);
	memset(w->params, 0, sizeof(w->params));
	w->nparams = 0;
}
