/*-------------------------------------------------------------------------
 *
 * wait.c
 *	  Waking workers and waiting for them.
 *
 * Two directions.  A backend that enqueued events wakes, when its
 * transaction commits, the workers of the buckets it wrote to: before the
 * commit they could not see the events, after it they need not wait for
 * their next poll.  A worker that committed a batch wakes every backend
 * sleeping in ledger_wait(), which then looks at its event again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "catalog/pg_type.h"
#include "utils/timestamp.h"

#include "ledger.h"
#include "wait.h"

/* Workers to wake when the current transaction commits, one bit each. */
static uint64 wake_mask = 0;
/* Did the current transaction change an account's limits? */
static bool limits_changed = false;
/* Wake the backends in ledger_wait() when the current transaction commits? */
static bool wake_waiters = false;
static bool callback_registered = false;

static void announce_at_transaction_end(XactEvent event, void *arg);

static void
register_callback(void)
{
	if (!callback_registered)
	{
		RegisterXactCallback(announce_at_transaction_end, NULL);
		callback_registered = true;
	}
}

/*
 * Remember to wake the worker of a bucket once the enqueueing transaction
 * commits.
 */
void
ledger_wake_at_commit(int bucket)
{
	if (ledger_shared == NULL)
		return;

	register_callback();
	wake_mask |= UINT64CONST(1) << ledger_worker_of_bucket(bucket);
}

/*
 * Tell the workers, once the current transaction commits, that limits
 * changed: they reload the accounts they hold, limits with them, before
 * their next batch.
 */
void
ledger_limits_changed_at_commit(void)
{
	if (ledger_shared == NULL)
		return;

	register_callback();
	limits_changed = true;
}

/*
 * What the transaction announces as it ends, if it committed: the limits
 * it changed (before the commit is visible, and after), the workers it
 * queued events for, the ledger_wait() sleepers a batch may have answered.
 * A transaction that changed limits may not be prepared: the announcement
 * would come at PREPARE, not when it commits.  An aborted one announces
 * nothing.
 */
static void
announce_at_transaction_end(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:

			/*
			 * Limits are announced twice: before the commit is visible and
			 * after.  A worker reads the count before taking its snapshot
			 * and after (worker.c, installed.c): a snapshot that sees the new limits sees
			 * the first announcement, and one that does not is followed by a
			 * batch that sees the second.
			 */
			if (limits_changed)
				pg_atomic_fetch_add_u64(&ledger_shared->limits_generation, 1);
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (limits_changed)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has set ledger limits"),
						 errdetail("The workers would not learn of the limits when the prepared transaction commits.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			{
				int			worker;

				if (limits_changed)
					pg_atomic_fetch_add_u64(&ledger_shared->limits_generation, 1);
				limits_changed = false;
				if (wake_waiters)
					ConditionVariableBroadcast(&ledger_shared->batch_applied);
				wake_waiters = false;
				for (worker = 0; wake_mask != 0; worker++, wake_mask >>= 1)
				{
					if (wake_mask & 1)
						ledger_wake_worker(worker);
				}
				break;
			}
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_mask = 0;
			limits_changed = false;
			wake_waiters = false;
			break;
		default:
			break;
	}
}

void
ledger_wake_worker(int worker)
{
	Latch	   *latch;

	if (ledger_shared == NULL || worker >= LEDGER_MAX_BUCKETS)
		return;

	pg_atomic_fetch_add_u64(&ledger_shared->workers[worker].wakeups, 1);
	SpinLockAcquire(&ledger_shared->workers[worker].mutex);
	latch = ledger_shared->workers[worker].latch;
	SpinLockRelease(&ledger_shared->workers[worker].mutex);

	/* a latch belongs to a PGPROC and stays valid memory: setting it is safe */
	if (latch)
		SetLatch(latch);
}

/*
 * ledger_wake_buckets(buckets[]) - wake the workers of these buckets when the
 * current transaction commits: for credits queued by SQL, as those that
 * arrive from other nodes.
 */
PG_FUNCTION_INFO_V1(ledger_wake_buckets);
Datum
ledger_wake_buckets(PG_FUNCTION_ARGS)
{
	ArrayType  *array = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	deconstruct_array(array, INT4OID, 4, true, TYPALIGN_INT, &elems, &nulls, &n);
	for (i = 0; i < n; i++)
		if (!nulls[i] && DatumGetInt32(elems[i]) >= 0)
			ledger_wake_at_commit(DatumGetInt32(elems[i]));
	PG_RETURN_VOID();
}

/*
 * ledger.wake_waiters() - wake the backends in ledger_wait() when the current
 * transaction commits: for a confirmation from a payee's node, which makes
 * an event credited without a batch of this node.
 */
PG_FUNCTION_INFO_V1(ledger_wake_waiters);
Datum
ledger_wake_waiters(PG_FUNCTION_ARGS)
{
	if (ledger_shared != NULL)
	{
		register_callback();
		wake_waiters = true;
	}
	PG_RETURN_VOID();
}

/* Called by a worker after committing a batch. */
void
ledger_announce_batch(void)
{
	if (ledger_shared)
		ConditionVariableBroadcast(&ledger_shared->batch_applied);
}

/*
 * Has every credit this node sent for an applied event been confirmed by
 * its payee's node?  A credit sent is a row of ledger.transit until its
 * confirmation moves it to ledger.transit_acked; a confirmation that
 * arrived before the row was visible waits in ledger.transit_acks.  Events
 * without payees on other nodes have nothing to confirm.
 */
static bool
credits_confirmed(int64 event_id)
{
	static SPIPlanPtr plan = NULL;

	if (!ledger_in_cluster())
		return true;
	if (ledger_execute_by_id(&plan,
							 "SELECT FROM ledger.transit t"
							 " WHERE t.event_id = $1 AND t.source_node = ledger.node_id()"
							 "   AND NOT EXISTS (SELECT FROM ledger.transit_acks a"
							 "                    WHERE a.source_node = t.source_node AND a.id = t.id)",
							 event_id) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the credits of event " INT64_FORMAT, event_id);
	return SPI_processed == 0;
}

/*
 * The status of an event, as ledger_event_status() reports it ("pending",
 * "applied", "rejected", or NULL when unknown), and whether the calling
 * transaction itself enqueued it.  With credited, an applied event whose
 * credits to other nodes have all been received there is "credited".
 */
static const char *
event_status(int64 event_id, bool credited, bool *own)
{
	static SPIPlanPtr plan = NULL;
	HeapTuple	row;
	TupleDesc	desc;
	Datum		value;
	bool		isnull;

	ledger_require_schema();
	if (ledger_execute_by_id(&plan,
							 "SELECT e.xmin, ledger.event_state(e) FROM ledger.event_log e"
							 " WHERE e.id = $1 AND e.credit_of IS NULL",
							 event_id) != SPI_OK_SELECT)
		elog(ERROR, "could not look up event " INT64_FORMAT, event_id);
	*own = false;
	if (SPI_processed != 1)
		return NULL;
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	switch (DatumGetChar(SPI_getbinval(row, desc, 2, &isnull)))
	{
		case LEDGER_APPLIED:
			return credited && credits_confirmed(event_id) ? "credited" : "applied";
		case LEDGER_REJECTED:
			return "rejected";
	}
	value = SPI_getbinval(row, desc, 1, &isnull);
	*own = TransactionIdIsCurrentTransactionId(DatumGetTransactionId(value));
	return "pending";
}

/*
 * ledger_event_status(event_id) - "pending", "applied", "rejected", or NULL
 * for an unknown event.
 */
PG_FUNCTION_INFO_V1(ledger_event_status);
Datum
ledger_event_status(PG_FUNCTION_ARGS)
{
	const char *status;
	bool		own;

	SPI_connect();
	status = event_status(PG_GETARG_INT64(0), false, &own);
	SPI_finish();

	if (status == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(status));
}

/*
 * ledger_wait(event_id, timeout_ms, until) - sleep until the event is
 * applied or rejected (until 'decided'), or until it is rejected or applied
 * with every credit received (until 'credited', then reported "credited"),
 * or the timeout passes; return its status.
 *
 * In a cluster, "applied" means the payer's node has debited the payer; its
 * credits to other nodes follow by replication.  A credit is received when
 * the payee's node has committed it to its log: from then on it can be
 * neither lost nor refused, and that node's worker posts it in its next
 * batch.  Here, on the payer's node, that shows as the confirmation coming
 * back, which wakes the waiters as a batch does.  On a ledger on its own an
 * event is applied only once its credits to other buckets are posted, so
 * applied is credited.
 *
 * Each look at the event takes a new snapshot, so this is only useful in
 * READ COMMITTED.  An event enqueued by the waiting transaction itself
 * cannot be applied before that transaction commits: it is reported pending
 * at once rather than after a pointless sleep.
 */
PG_FUNCTION_INFO_V1(ledger_wait);
Datum
ledger_wait(PG_FUNCTION_ARGS)
{
	int64		event_id;
	int			timeout_ms;
	TimestampTz deadline;
	const char *status;
	bool		own;
	bool		credited = false;

	/* 1.6's ledger_wait() has two arguments */
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || (PG_NARGS() > 2 && PG_ARGISNULL(2)))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event_id, timeout_ms and until must not be null")));
	if (PG_NARGS() > 2)
	{
		char	   *until = text_to_cstring(PG_GETARG_TEXT_PP(2));

		if (strcmp(until, "credited") == 0)
			credited = true;
		else if (strcmp(until, "decided") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid value for until: \"%s\"", until),
					 errhint("Wait until 'decided' (applied or rejected) or 'credited' (applied, and its credits received by the payees' nodes).")));
	}
	event_id = PG_GETARG_INT64(0);
	timeout_ms = PG_GETARG_INT32(1);
	if (timeout_ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout_ms must not be negative")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("ledger_wait cannot run in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("Its snapshot would never show the event change."),
				 errhint("Wait in a READ COMMITTED transaction.")));

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	SPI_connect();
	for (;;)
	{
		long		remaining;

		/* prepare before looking, so that a broadcast in between counts */
		if (ledger_shared)
			ConditionVariablePrepareToSleep(&ledger_shared->batch_applied);

		status = event_status(event_id, credited, &own);
		if (status == NULL || own)
			break;
		/* with credited, "applied" is still on its way */
		if (strcmp(status, "pending") != 0 &&
			!(credited && strcmp(status, "applied") == 0))
			break;

		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;

		if (ledger_shared)
			(void) ConditionVariableTimedSleep(&ledger_shared->batch_applied,
											   remaining, PG_WAIT_EXTENSION);
		else
		{
			/* library not preloaded: no worker will announce anything */
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 remaining, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
		CHECK_FOR_INTERRUPTS();
	}
	if (ledger_shared)
		ConditionVariableCancelSleep();

	SPI_finish();

	if (status == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(status));
}
