/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  What the workers are doing, and the controls to pause and resume them.
 *
 * Each worker has a slot in shared memory (LedgerWorkerSlot).  The worker
 * alone writes its counters; readers copy them out.  Both hold the slot's
 * spinlock only to copy numbers in or out, never across anything that could
 * fail or block.
 *
 * Events per second over the last minute come from a ring of sixty
 * per-second counts: the worker adds to the slot of the current second,
 * clearing it first when it last counted an older second.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "ledger.h"
#include "stats.h"
#include "wait.h"

static const char *const state_names[] = {
	[LEDGER_STATE_STOPPED] = "stopped",
	[LEDGER_STATE_WAITING] = "waiting for extension",
	[LEDGER_STATE_OUTDATED] = "waiting for extension update",
	[LEDGER_STATE_IDLE] = "idle",
	[LEDGER_STATE_APPLYING] = "applying",
	[LEDGER_STATE_PAUSED] = "paused",
	[LEDGER_STATE_UNMAPPED] = "serving no bucket of the node map",
	[LEDGER_STATE_BACKOFF] = "retrying after an error",
};

static LedgerSharedState *
require_shared(void)
{
	if (ledger_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("ledger must be loaded via \"shared_preload_libraries\"")));
	return ledger_shared;
}

void
ledger_set_state(int worker, LedgerWorkerState state)
{
	LedgerWorkerSlot *slot = &ledger_shared->workers[worker];

	SpinLockAcquire(&slot->mutex);
	slot->state = state;
	SpinLockRelease(&slot->mutex);
}

bool
ledger_is_paused(int worker)
{
	LedgerWorkerSlot *slot = &ledger_shared->workers[worker];
	bool		paused;

	SpinLockAcquire(&slot->mutex);
	paused = slot->paused;
	SpinLockRelease(&slot->mutex);
	return paused;
}

/* Count a committed batch. */
void
ledger_count_batch(int worker, const LedgerBatchCounts *counts, double ms)
{
	LedgerWorkerSlot *slot = &ledger_shared->workers[worker];
	LedgerWorkerStats *stats = &slot->stats;
	int64		second = (int64) (GetCurrentTimestamp() / USECS_PER_SEC);
	int			ring = (int) (second % LEDGER_RATE_SECONDS);

	SpinLockAcquire(&slot->mutex);
	stats->events_applied += counts->applied;
	stats->events_rejected += counts->rejected;
	stats->credits_applied += counts->credits;
	stats->batches++;
	stats->entries += counts->read;
	stats->total_batch_ms += ms;
	stats->last_batch_ms = ms;
	stats->last_batch_size = counts->read;
	stats->last_batch_at = GetCurrentTimestamp();
	if (stats->rate_second[ring] != second)
	{
		stats->rate_second[ring] = second;
		stats->rate_events[ring] = 0;
	}
	stats->rate_events[ring] += counts->applied + counts->rejected;
	SpinLockRelease(&slot->mutex);
}

/*
 * ledger_worker_stats() - one row per worker, for the ledger_stats view.
 */
PG_FUNCTION_INFO_V1(ledger_worker_stats);
Datum
ledger_worker_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LedgerSharedState *shared = require_shared();
	int64		now_second = (int64) (GetCurrentTimestamp() / USECS_PER_SEC);
	int			worker;

	InitMaterializedSRF(fcinfo, 0);

	for (worker = 0; worker < ledger_buckets; worker++)
	{
		LedgerWorkerSlot *slot = &shared->workers[worker];
		LedgerWorkerStats stats;
		LedgerWorkerState state;
		pid_t		pid;
		bool		paused;
		int			failures;
		TimestampTz failed_at;
		char		error[LEDGER_ERROR_LEN];
		Datum		values[17];
		bool		nulls[17] = {0};
		uint64		recent = 0;
		int			i;

		SpinLockAcquire(&slot->mutex);
		stats = slot->stats;
		state = slot->state;
		pid = slot->pid;
		paused = slot->paused;
		failures = slot->failures;
		failed_at = slot->failed_at;
		memcpy(error, slot->error, LEDGER_ERROR_LEN);
		SpinLockRelease(&slot->mutex);

		/* the last full minute: the current second is still counting */
		for (i = 0; i < LEDGER_RATE_SECONDS; i++)
			if (stats.rate_second[i] < now_second &&
				stats.rate_second[i] >= now_second - LEDGER_RATE_SECONDS)
				recent += stats.rate_events[i];

		values[0] = Int32GetDatum(worker);
		values[1] = Int32GetDatum(pid);
		nulls[1] = pid == 0;
		values[2] = CStringGetTextDatum(pid == 0 ? "stopped" : state_names[state]);
		values[3] = BoolGetDatum(paused);
		values[4] = Int64GetDatum((int64) stats.events_applied);
		values[5] = Int64GetDatum((int64) stats.events_rejected);
		values[6] = Int64GetDatum((int64) stats.credits_applied);
		values[7] = Int64GetDatum((int64) stats.batches);
		values[8] = Float8GetDatum(stats.last_batch_ms);
		values[9] = Float8GetDatum(stats.batches ? stats.total_batch_ms / stats.batches : 0);
		values[10] = Int32GetDatum(stats.last_batch_size);
		values[11] = Float8GetDatum(stats.batches ? (double) stats.entries / stats.batches : 0);
		values[12] = TimestampTzGetDatum(stats.last_batch_at);
		nulls[12] = stats.last_batch_at == 0;
		values[13] = Float8GetDatum((double) recent / LEDGER_RATE_SECONDS);
		/* 1.7's columns: a 1.6 schema's function has the others only */
		values[14] = Int32GetDatum(failures);
		values[15] = CStringGetTextDatum(error);
		nulls[15] = error[0] == '\0';
		values[16] = TimestampTzGetDatum(failed_at);
		nulls[16] = failed_at == 0;
		nulls[8] = nulls[9] = nulls[10] = nulls[11] = stats.batches == 0;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ledger_stats_reset() - zero every worker's counters. */
PG_FUNCTION_INFO_V1(ledger_stats_reset);
Datum
ledger_stats_reset(PG_FUNCTION_ARGS)
{
	LedgerSharedState *shared = require_shared();
	int			worker;

	for (worker = 0; worker < LEDGER_MAX_BUCKETS; worker++)
	{
		LedgerWorkerSlot *slot = &shared->workers[worker];

		SpinLockAcquire(&slot->mutex);
		memset(&slot->stats, 0, sizeof(slot->stats));
		SpinLockRelease(&slot->mutex);
	}
	PG_RETURN_VOID();
}

/* Pause or resume the worker of a bucket. */
static void
set_paused(int32 bucket, bool paused)
{
	LedgerSharedState *shared = require_shared();
	int			worker;

	if (bucket < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid bucket %d", bucket)));
	worker = ledger_worker_of_bucket(bucket);

	SpinLockAcquire(&shared->workers[worker].mutex);
	shared->workers[worker].paused = paused;
	SpinLockRelease(&shared->workers[worker].mutex);
	ledger_wake_worker(worker);
}

/*
 * ledger_pause(bucket) - stop applying the bucket's events (enqueueing goes
 * on) until ledger_resume() or a server restart.  Pauses the bucket's worker,
 * and so any other bucket it serves.
 */
PG_FUNCTION_INFO_V1(ledger_pause);
Datum
ledger_pause(PG_FUNCTION_ARGS)
{
	set_paused(PG_GETARG_INT32(0), true);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(ledger_resume);
Datum
ledger_resume(PG_FUNCTION_ARGS)
{
	set_paused(PG_GETARG_INT32(0), false);
	PG_RETURN_VOID();
}
