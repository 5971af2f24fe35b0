/*-------------------------------------------------------------------------
 *
 * transfers.c
 *	  Concurrent transfers grouped into one ledger_transfer_many() call.
 *
 * An enqueue costs a commit, that is a WAL flush, so transfers that arrive
 * together share one.  They wait in a list until a group is ready: at the
 * end of the loop iteration that read them, or --group-wait-us after the
 * first of them arrived, or as soon as --group-max are waiting.  A free
 * connection then takes up to --group-max of them as one statement.  While
 * every connection is busy the list keeps growing, so groups grow with the
 * load and cost nothing when it is light.
 *
 * Each request is answered only once its statement has returned, that is
 * committed, so nothing acknowledged can be lost.  A statement failing
 * because of one element (a line of its error context names it, in the
 * form of LEDGER_ELEMENT_CONTEXT, a contract of the extension's) answers
 * that element with the error and sends the others again without it; a
 * failure that names no element sends each transfer alone.
 *
 * Within a group the transfers are sorted by idempotency key: two groups
 * claiming the same keys then claim them in the same order and cannot
 * deadlock.  Concurrent requests have no order among themselves, so the
 * sort takes nothing away.
 *
 * The pool knows nothing of all this: transfers_init() registers this file
 * as the pool's source of statements, asked for a group whenever a
 * connection is free.
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "common.h"
#include "db_pool.h"
#include "fifo.h"
#include "ledger_errors.h"
#include "pgtext.h"
#include "request.h"
#include "statements.h"
#include "transfers.h"

/* Attempts at a group that deadlocked or hit a serialization failure. */
#define MAX_ATTEMPTS 3

typedef struct TransferGroup
{
	DbWork		work;
	int			attempts;
	int			n;
	Request    *reqs[];
} TransferGroup;

static Fifo pending;			/* transfers waiting to be grouped */
static bool group_ready;
static int	groups_in_flight;

/* for the report at exit: how well grouping worked */
static long long groups_taken;
static long long transfers_taken;
static long long groups_resent;

/* readiness: a check handle at the end of the iteration, or a timerfd */
static uv_check_t ready_check;
static uv_poll_t wait_poll;
static int	wait_fd = -1;

static void
set_ready(void)
{
	struct itimerspec never = {{0, 0}, {0, 0}};

	group_ready = true;
	uv_check_stop(&ready_check);
	if (wait_fd >= 0)
		timerfd_settime(wait_fd, 0, &never, NULL);
	db_kick();
}

static void
ready_check_cb(uv_check_t *handle)
{
	set_ready();
}

static void
wait_expired_cb(uv_poll_t *handle, int status, int events)
{
	uint64_t	expirations;

	if (read(wait_fd, &expirations, sizeof(expirations)) < 0)
	{
		/* spurious wake-up: the timer was disarmed meanwhile */
	}
	if (pending.count > 0)
		set_ready();
}

/* The first transfer of a group has arrived: start its wait. */
static void
start_wait(void)
{
	struct itimerspec wait = {{0, 0}, {0, 0}};

	if (settings.group_wait_us == 0)
	{
		uv_check_start(&ready_check, ready_check_cb);
		return;
	}
	wait.it_value.tv_sec = settings.group_wait_us / 1000000;
	wait.it_value.tv_nsec = (settings.group_wait_us % 1000000) * 1000;
	timerfd_settime(wait_fd, 0, &wait, NULL);
}

static DbWork *take_group(void);
static void fail_pending(void);

/* Set up the group timer, and become the pool's source of statements. */
int
transfers_init(void)
{
	static const DbSource source = {take_group, fail_pending};
	int			rc;

	db_set_source(&source);
	uv_check_init(loop, &ready_check);
	if (settings.group_wait_us == 0)
		return 0;

	/* libuv's timers count milliseconds; a timerfd counts what we ask */
	wait_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (wait_fd < 0)
		return -1;
	rc = uv_poll_init(loop, &wait_poll, wait_fd);
	if (rc == 0)
		rc = uv_poll_start(&wait_poll, UV_READABLE, wait_expired_cb);
	return rc;
}

void
transfers_close(void)
{
	uv_close((uv_handle_t *) &ready_check, NULL);
	if (wait_fd >= 0)
	{
		/* uv_close() stops the polling at once, so the fd can go now */
		uv_close((uv_handle_t *) &wait_poll, NULL);
		close(wait_fd);
		wait_fd = -1;
	}
}

/* Take a transfer to group with others; it is answered when committed. */
void
transfers_add(Request *req)
{
	if (!db_available())
	{
		respond_error(req, 503, "database unavailable");
		return;
	}
	fifo_push(&pending, &req->waiting);
	if (pending.count >= settings.group_max || shutting_down)
		set_ready();
	else if (pending.count == 1 && !group_ready)
		start_wait();
}

/* Whatever waits goes at once: we are shutting down. */
void
transfers_flush(void)
{
	if (pending.count > 0)
		set_ready();
}

bool
transfers_idle(void)
{
	return pending.count == 0 && groups_in_flight == 0;
}

static TransferGroup *
group_new(int n)
{
	TransferGroup *g = calloc(1, sizeof(TransferGroup) + sizeof(Request *) * n);

	if (g != NULL)
		groups_in_flight++;
	return g;
}

static void
group_free(TransferGroup *g)
{
	db_work_free_params(&g->work);
	free(g);
	groups_in_flight--;
}

static int
compare_keys(const void *a, const void *b)
{
	const char *x = (*(Request *const *) a)->key;
	const char *y = (*(Request *const *) b)->key;

	if (x == NULL || y == NULL)
		return (x != NULL) - (y != NULL);
	return strcmp(x, y);
}

static void group_done(DbWork *work, PGresult *res);

/* (Re)build the statement's parameters from the group's transfers. */
static bool
group_build_statement(TransferGroup *g)
{
	long long  *values = malloc(sizeof(long long) * g->n);
	char	  **keys = malloc(sizeof(char *) * g->n);
	bool		any_key = false;
	int			i;

	db_work_free_params(&g->work);
	g->work.stmt = STMT_TRANSFER_MANY;
	g->work.nparams = 4;
	g->work.done = group_done;
	if (values == NULL || keys == NULL)
	{
		free(values);
		free(keys);
		return false;
	}

	for (i = 0; i < g->n; i++)
		values[i] = g->reqs[i]->from;
	g->work.params[0] = bigint_array_literal(values, g->n);
	for (i = 0; i < g->n; i++)
		values[i] = g->reqs[i]->to;
	g->work.params[1] = bigint_array_literal(values, g->n);
	for (i = 0; i < g->n; i++)
		values[i] = g->reqs[i]->amount;
	g->work.params[2] = bigint_array_literal(values, g->n);
	for (i = 0; i < g->n; i++)
	{
		keys[i] = g->reqs[i]->key;
		any_key |= keys[i] != NULL;
	}
	/* without keys the whole array is NULL: less to send and to parse */
	g->work.params[3] = any_key ? text_array_literal(keys, g->n) : NULL;
	free(values);
	free(keys);
	return g->work.params[0] && g->work.params[1] && g->work.params[2] &&
		(!any_key || g->work.params[3]);
}

/* Answer every transfer of a group with the same error, and drop it. */
static void
group_fail(TransferGroup *g, int status, const char *message)
{
	int			i;

	for (i = 0; i < g->n; i++)
		respond_error(g->reqs[i], status, message);
	group_free(g);
}

/* The pool's source: a group ready to run, asked for by a free connection. */
static DbWork *
take_group(void)
{
	TransferGroup *g;
	int			n;
	int			i;

	if (!group_ready || pending.count == 0)
		return NULL;
	n = pending.count < settings.group_max ? pending.count : settings.group_max;
	g = group_new(n);
	if (g == NULL)
		return NULL;
	for (i = 0; i < n; i++)
		g->reqs[i] = fifo_entry(fifo_pop(&pending), Request, waiting);
	if (pending.count == 0)
		group_ready = false;
	g->n = n;
	groups_taken++;
	transfers_taken += n;

	qsort(g->reqs, n, sizeof(Request *), compare_keys);
	if (!group_build_statement(g))
	{
		group_fail(g, 500, "out of memory");
		return NULL;
	}
	return &g->work;
}

/* The pool's source: the database went away, nothing waiting can be sent. */
static void
fail_pending(void)
{
	FifoLink   *link;

	while ((link = fifo_pop(&pending)) != NULL)
		respond_error(fifo_entry(link, Request, waiting), 503,
					  "database unavailable");
	group_ready = false;
	uv_check_stop(&ready_check);
}

static void
group_resend(TransferGroup *g)
{
	groups_resent++;
	if (!group_build_statement(g))
		group_fail(g, 500, "out of memory");
	else
		db_submit_first(&g->work);
}

/*
 * The 0-based element a batch error names, or -1.  The extension names it
 * with a context line of exactly the form LEDGER_ELEMENT_CONTEXT, counting
 * from 1: a documented contract (include/ledger_errors.h), not a wording
 * copied here.  Other context lines, if any, are skipped.
 */
static int
failed_element(const PGresult *res, int n)
{
	const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *line = PQresultErrorField(res, PG_DIAG_CONTEXT);

	if (sqlstate == NULL ||
		(strncmp(sqlstate, "22", 2) != 0 && strncmp(sqlstate, "23", 2) != 0 &&
		 strcmp(sqlstate, "42501") != 0))
		return -1;
	while (line != NULL)
	{
		int			element;
		int			end = -1;	/* set only if the whole format matched */

		if (sscanf(line, LEDGER_ELEMENT_CONTEXT "%n", &element, &end) == 1 &&
			end >= 0 && (line[end] == '\n' || line[end] == '\0'))
			return element >= 1 && element <= n ? element - 1 : -1;
		line = strchr(line, '\n');
		if (line != NULL)
			line++;
	}
	return -1;
}

/* Answer each transfer with its event id, in the order sent. */
static void
group_answer_ids(TransferGroup *g, const PGresult *res)
{
	const char *p = PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "";
	long long  *ids = malloc(sizeof(long long) * g->n);
	int			found = 0;
	int			i;

	if (ids == NULL)
	{
		group_fail(g, 500, "out of memory");
		return;
	}
	while (found < g->n && bigint_array_next(&p, &ids[found]))
		found++;
	if (found != g->n)
	{
		free(ids);
		group_fail(g, 500, "unexpected result from ledger_transfer_many");
		return;
	}
	for (i = 0; i < g->n; i++)
		request_respond(g->reqs[i], 202,
						json_pack("{s:I}", "event_id", (json_int_t) ids[i]));
	free(ids);
	group_free(g);
}

/* Send each transfer of a group alone, in the group's order. */
static void
group_split(TransferGroup *g)
{
	int			i;

	for (i = g->n - 1; i >= 0; i--)
	{
		TransferGroup *one = group_new(1);

		if (one == NULL)
		{
			respond_error(g->reqs[i], 500, "out of memory");
			continue;
		}
		one->n = 1;
		one->reqs[0] = g->reqs[i];
		group_resend(one);
	}
	group_free(g);
}

static bool
is_retryable(const char *sqlstate)
{
	return sqlstate != NULL &&
		(strcmp(sqlstate, "40001") == 0 || strcmp(sqlstate, "40P01") == 0);
}

static void
group_done(DbWork *work, PGresult *res)
{
	TransferGroup *g = (TransferGroup *) work;
	const char *sqlstate;
	int			bad;
	int			i;

	if (res == NULL)
	{
		group_fail(g, 503, "database unavailable");
		return;
	}
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
	{
		group_answer_ids(g, res);
		return;
	}

	sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	bad = failed_element(res, g->n);
	if (bad >= 0)
	{
		/* nothing was committed: the others go again without it */
		if (g->n > 1)
			log_message("a group of %d transfers failed on transfer %d (%s): sending the other %d again",
						g->n, bad + 1, sqlstate, g->n - 1);
		respond_sql_error(g->reqs[bad], res);
		memmove(&g->reqs[bad], &g->reqs[bad + 1],
				sizeof(Request *) * (g->n - bad - 1));
		if (--g->n == 0)
			group_free(g);
		else
			group_resend(g);
	}
	else if (g->n > 1 && sqlstate != NULL &&
			 (strncmp(sqlstate, "22", 2) == 0 || strncmp(sqlstate, "23", 2) == 0 ||
			  strncmp(sqlstate, "54", 2) == 0))
		group_split(g);
	else if (is_retryable(sqlstate) && ++g->attempts < MAX_ATTEMPTS)
		group_resend(g);
	else
	{
		for (i = 0; i < g->n; i++)
			respond_sql_error(g->reqs[i], res);
		group_free(g);
	}
}

void
transfers_report(void)
{
	if (groups_taken > 0)
		log_message("%lld transfers in %lld groups (%.1f a group), %lld statements sent again",
					transfers_taken, groups_taken,
					(double) transfers_taken / groups_taken, groups_resent);
}
