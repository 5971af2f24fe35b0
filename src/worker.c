/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The bucket worker: a background worker that applies its buckets' events.
 *
 * Each worker loops: apply one batch of each bucket it serves, one
 * transaction per batch, and sleep on its latch when every bucket is done.
 * Enqueueing backends (and workers that log credits for other buckets) set
 * the latch when they commit, and count the wake-up, so the poll interval
 * only bounds the wait for events that came without one.
 *
 * The worker waits for the extension to exist in ledger.database, and notices
 * when it is dropped and created again.  An error ends the worker; the
 * postmaster starts it again, and it carries on from its bucket's newest
 * batch, which the failed one did not replace.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "portability/instr_time.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "ledger.h"
#include "node_map.h"
#include "stats.h"
#include "wait.h"
#include "worker.h"

static int	my_worker;

/* Does the node map leave this worker without accounts, and since when? */
static bool unmapped = false;
static TimestampTz map_checked = 0;

/* How often an idle worker of a cluster node reads the node map again. */
#define MAP_CHECK_MS 1000

static void
release_slot(int code, Datum arg)
{
	LedgerWorkerSlot *slot = &ledger_shared->workers[my_worker];

	SpinLockAcquire(&slot->mutex);
	if (slot->pid == MyProcPid)
	{
		slot->pid = 0;
		slot->latch = NULL;
		slot->state = LEDGER_STATE_STOPPED;
	}
	SpinLockRelease(&slot->mutex);
}

static void
claim_slot(void)
{
	LedgerWorkerSlot *slot = &ledger_shared->workers[my_worker];

	SpinLockAcquire(&slot->mutex);
	slot->pid = MyProcPid;
	slot->latch = MyLatch;
	slot->state = LEDGER_STATE_IDLE;
	SpinLockRelease(&slot->mutex);
	before_shmem_exit(release_slot, (Datum) 0);
}

/*
 * A pass failed: note it in the slot, for ledger_stats and for the next
 * worker's wait.  The error then ends this worker as before; its
 * transaction is rolled back, and the next worker starts from the bucket's
 * newest batch, with nothing cached from this one.
 */
static void
record_failure(void)
{
	LedgerWorkerSlot *slot = &ledger_shared->workers[my_worker];
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	ErrorData  *edata = CopyErrorData();

	MemoryContextSwitchTo(old);
	SpinLockAcquire(&slot->mutex);
	slot->failures++;
	slot->failed_at = GetCurrentTimestamp();
	strlcpy(slot->error, edata->message ? edata->message : "", LEDGER_ERROR_LEN);
	SpinLockRelease(&slot->mutex);
}

/*
 * After errors in a row, wait before trying again: the postmaster's five
 * seconds after the first, then ten, twenty, forty, and a minute from the
 * fifth on, counted from the last error.  An error that comes back at every
 * try (a full disk, a broken setting) so costs a log line a minute, not a
 * spinning worker; ledger_stats shows it meanwhile.  Returns whether errors
 * came before this worker.
 */
static bool
back_off(void)
{
	LedgerWorkerSlot *slot = &ledger_shared->workers[my_worker];
	int			failures;
	TimestampTz failed_at;
	long		wait_ms;

	SpinLockAcquire(&slot->mutex);
	failures = slot->failures;
	failed_at = slot->failed_at;
	SpinLockRelease(&slot->mutex);
	if (failures == 0)
		return false;
	if (failures < 2)
		return true;

	wait_ms = Min(5000L << Min(failures - 1, 4), 60000L);
	ledger_set_state(my_worker, LEDGER_STATE_BACKOFF);
	for (;;)
	{
		long		remaining;

		remaining = wait_ms - TimestampDifferenceMilliseconds(failed_at,
															  GetCurrentTimestamp());
		if (remaining <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 remaining, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	ledger_set_state(my_worker, LEDGER_STATE_IDLE);
	return true;
}

/* A pass went through: the errors before it are over. */
static void
clear_failures(void)
{
	LedgerWorkerSlot *slot = &ledger_shared->workers[my_worker];

	SpinLockAcquire(&slot->mutex);
	slot->failures = 0;
	SpinLockRelease(&slot->mutex);
}

static void
report_batch(int index, const LedgerBatchCounts *counts, instr_time start)
{
	instr_time	elapsed;
	double		ms;

	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);
	ms = INSTR_TIME_GET_MILLISEC(elapsed);

	ledger_count_batch(my_worker, counts, ms);
	if (ledger_log_batches)
		ereport(LOG,
				(errmsg("ledger worker %d: batch of %d entries (bucket %d of this worker): %d applied, %d rejected, %d credits, %.3f ms",
						my_worker, counts->read, index, counts->applied,
						counts->rejected, counts->credits, ms)));
}

/*
 * No extension to serve, or one of an earlier version: say so, in the log
 * once for each time it happens.
 */
static void
wait_for_schema(LedgerSchema schema)
{
	static LedgerSchema reported = LEDGER_SCHEMA_CURRENT;

	if (schema == LEDGER_SCHEMA_NONE)
	{
		ledger_set_state(my_worker, LEDGER_STATE_WAITING);
		pgstat_report_activity(STATE_IDLE, "waiting for CREATE EXTENSION ledger");
	}
	else
	{
		ledger_set_state(my_worker, LEDGER_STATE_OUTDATED);
		pgstat_report_activity(STATE_IDLE, "waiting for ALTER EXTENSION ledger UPDATE");
		if (reported != schema)
			ereport(LOG,
					(errmsg("ledger worker %d waits for the extension to be updated", my_worker),
					 errdetail("Database \"%s\" holds the schema of an earlier version than the library's (%s); its queued events wait.",
							   ledger_database, LEDGER_VERSION),
					 errhint("Run ALTER EXTENSION ledger UPDATE in that database.")));
	}
	reported = schema;
}

/*
 * Read the node map again, at most every MAP_CHECK_MS: ledger_cluster_init()
 * refuses a map that leaves a worker without accounts, but the map can be
 * changed later by hand.  Said in the log once, when it starts and ends;
 * ledger_stats shows it meanwhile.  Called inside SPI.
 */
static void
check_node_map(void)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		was = unmapped;

	if (!TimestampDifferenceExceeds(map_checked, now, MAP_CHECK_MS))
		return;
	map_checked = now;
	unmapped = list_member_int(ledger_unmapped_workers(ledger_node_id), my_worker);
	if (unmapped && !was)
		ereport(WARNING,
				(errmsg("ledger worker %d serves no bucket of the node map", my_worker),
				 errdetail("No cluster bucket of node %d holds an id that falls to this worker's bucket (id modulo ledger.buckets = %d).",
						   ledger_node_id, ledger_buckets),
				 errhint("Give each node consecutive cluster buckets, at least ledger.buckets of them, or lower ledger.buckets.")));
	else if (was && !unmapped)
		ereport(LOG,
				(errmsg("ledger worker %d serves buckets of the node map again", my_worker)));
}

/*
 * Apply one batch of each served bucket.  Returns true when some bucket had
 * a full batch, so more may be waiting.
 */
static bool
apply_pass(void)
{
	static char activity[64];
	bool		more = false;
	int			nbuckets = 1;
	int			i;

	if (ledger_is_paused(my_worker))
	{
		ledger_set_state(my_worker, LEDGER_STATE_PAUSED);
		pgstat_report_activity(STATE_IDLE, "paused");
		return false;
	}

	for (i = 0; i < nbuckets; i++)
	{
		LedgerBatchCounts counts = {0};
		instr_time	start;
		LedgerSchema ready;
		uint64		limits_before;
		uint64		limits_after;

		/* around the snapshot: see ledger_prepare_worker() */
		limits_before = pg_atomic_read_u64(&ledger_shared->limits_generation);
		INSTR_TIME_SET_CURRENT(start);
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		limits_after = pg_atomic_read_u64(&ledger_shared->limits_generation);

		ready = ledger_prepare_worker(my_worker, limits_before, limits_after,
									  &nbuckets);
		if (ready == LEDGER_SCHEMA_CURRENT && i < nbuckets)
		{
			snprintf(activity, sizeof(activity),
					 "applying a batch (bucket %d of this worker)", i);
			pgstat_report_activity(STATE_RUNNING, activity);
			ledger_set_state(my_worker, LEDGER_STATE_APPLYING);
			ledger_apply_batch(i, ledger_batch_size, &counts);
			if (i == 0 && counts.read == 0 && ledger_in_cluster())
				check_node_map();
		}

		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_stat(false);

		if (ready != LEDGER_SCHEMA_CURRENT)
		{
			wait_for_schema(ready);
			return false;
		}
		if (counts.read > counts.deferred || counts.expired > 0)
		{
			/* counted first, so that whoever the announcement wakes sees it */
			report_batch(i, &counts, start);
			ledger_announce_batch();
		}

		/*
		 * Entries left queued are no work: a bucket holding only those
		 * sleeps until woken (a credit arrives) or the poll interval ends.
		 * But a batch that read all it asked for may have more behind it:
		 * the next reads past what this one left.
		 */
		if (counts.full)
			more = true;
	}
	ledger_set_state(my_worker, unmapped ? LEDGER_STATE_UNMAPPED : LEDGER_STATE_IDLE);
	pgstat_report_activity(STATE_IDLE, NULL);
	return more;
}

void
ledger_worker_main(Datum main_arg)
{
	char		name[BGW_MAXLEN];
	bool		delta_open = false;
	bool		failed;

	my_worker = DatumGetInt32(main_arg);

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	claim_slot();
	failed = back_off();
	BackgroundWorkerInitializeConnection(ledger_database, NULL, 0);

	/*
	 * Every read the worker makes is by index.  The queue's statistics never
	 * describe it for long, since it swings between empty and millions of
	 * entries: left to them, the planner would now and then read a bucket's
	 * whole queue and sort it to take the oldest few hundred.
	 */
	SetConfigOption("enable_seqscan", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The worker's statements are small and planned once: compiling them
	 * would cost more than running them, and the costs that steer the plans
	 * above would make the planner think otherwise.
	 */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Every name the worker's statements use is qualified, and pg_catalog
	 * alone is searched for the rest (operators, functions), whatever the
	 * database's settings say.
	 */
	SetConfigOption("search_path", "pg_catalog", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Whatever else ALTER DATABASE ... SET gives the database's sessions, a
	 * batch is a short read-write transaction in READ COMMITTED (its reads
	 * are by snapshot, and a serializable one would only add predicate
	 * locks and failures), it may wait for a lock a client holds as long as
	 * the client holds it, and it is never idle: a timeout or a read-only
	 * default would fail every batch, and the worker would restart forever.
	 */
	SetConfigOption("default_transaction_isolation", "read committed",
					PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("statement_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("lock_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("idle_in_transaction_session_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	snprintf(name, sizeof(name), "ledger bucket worker %d", my_worker);
	pgstat_report_appname(name);

	for (;;)
	{
		uint64		wakeups;
		bool		more;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/*
		 * A worker sleeps only after a pass that read with a snapshot newer
		 * than every wake-up it got: one whose deltas started in it.  A
		 * delta read over several batches keeps the snapshot of its first,
		 * so the pass after its last one looks again, with a fresh one.
		 * Wake-ups are counted before the pass's snapshot is taken: one
		 * counted after it may be for events the pass did not see.
		 */
		wakeups = pg_atomic_read_u64(&ledger_shared->workers[my_worker].wakeups);
		pg_memory_barrier();
		PG_TRY();
		{
			more = apply_pass();
		}
		PG_CATCH();
		{
			record_failure();
			PG_RE_THROW();
		}
		PG_END_TRY();
		if (failed)
		{
			clear_failures();
			failed = false;
		}
		if (more)
		{
			delta_open = true;
			continue;
		}
		if (delta_open)
		{
			delta_open = false;
			continue;
		}
		pg_memory_barrier();
		if (pg_atomic_read_u64(&ledger_shared->workers[my_worker].wakeups) != wakeups ||
			ConfigReloadPending)
			continue;

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 ledger_poll_interval,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
