/*-------------------------------------------------------------------------
 *
 * guard.c
 *	  The spam guard: how many events each paying account has pending.
 *
 * ledger.max_pending_per_account caps the events of one payer that may wait
 * in the queue.  Counting them there would take an index on the queue's
 * payer column, and every enqueue would pay for it: on a queue that has
 * churned through a million events, that index alone cost over a quarter
 * of enqueue throughput.  So the counts live in shared memory instead, as a
 * count-min sketch: LEDGER_GUARD_ROWS rows of LEDGER_GUARD_SLOTS counters,
 * each payer hashed to one counter per row.  An enqueue adds its events to
 * the payer's counters as it queues them; the worker that applies or
 * rejects an event subtracts it, in the batch's transaction.  A payer's
 * estimate is the least of its counters: never below its true count, and
 * above it only when every one of its counters is shared with other payers
 * that have events pending.
 *
 * Every event is counted, whether or not the guard is on, so that turning
 * it on needs no recount.  Where the counts cannot be exact they err on
 * the side of letting events through, and the error heals as the queue
 * empties, because a counter never goes below zero:
 * - shared memory starts empty, so events pending across a server restart
 *   are not counted;
 * - the events of a PREPAREd transaction are not counted;
 * - a worker batch that fails after subtracting leaves its events
 *   uncounted when they are applied again;
 * - counts are forgotten when the extension is dropped or created anew
 *   (ledger_prepare_worker()), also those of events enqueued in the new one
 *   before a worker noticed.
 *
 * Only the events of ledger.database are counted: those of any other
 * database have no worker, and would stay counted for good.
 *
 * An enqueue's own additions are undone if its transaction or
 * subtransaction rolls back: the backend remembers them until the end of
 * the transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "utils/memutils.h"

#include "ledger.h"
#include "guard.h"

/* What the current transaction added to the counters, in order. */
typedef struct GuardAddition
{
	int64		payer;
	int			count;
} GuardAddition;

/*
 * Where the additions of each open (sub)transaction level start: a level
 * appears once it has added something.
 */
typedef struct GuardLevel
{
	int			nest_level;
	int			first;			/* index in additions */
} GuardLevel;

static GuardAddition *additions = NULL;
static int	nadditions = 0;
static int	max_additions = 0;
static GuardLevel *levels = NULL;
static int	nlevels = 0;
static int	max_levels = 0;
static bool callbacks_registered = false;

/* Is this backend connected to ledger.database?  -1: not known yet. */
static int	counting = -1;

static void guard_xact_callback(XactEvent event, void *arg);
static void guard_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								   SubTransactionId parentSubid, void *arg);

/* Does this backend count, or check, pending events? */
static bool
guard_counts(void)
{
	if (ledger_shared == NULL)
		return false;
	if (counting < 0)
	{
		char	   *name = get_database_name(MyDatabaseId);

		counting = name != NULL && strcmp(name, ledger_database) == 0;
	}
	return counting;
}

/* The payer's counter in each row. */
static void
payer_counters(int64 payer, pg_atomic_uint32 **counters)
{
	uint64		hash = hash_bytes_extended((const unsigned char *) &payer,
										   sizeof(payer), 0);
	int			row;

	for (row = 0; row < LEDGER_GUARD_ROWS; row++)
	{
		counters[row] = &ledger_shared->guard[row][hash % LEDGER_GUARD_SLOTS];
		hash /= LEDGER_GUARD_SLOTS;
	}
}

/* Subtract from a counter, stopping at zero. */
static void
counter_sub(pg_atomic_uint32 *counter, uint32 count)
{
	uint32		old = pg_atomic_read_u32(counter);

	while (!pg_atomic_compare_exchange_u32(counter, &old,
										   old > count ? old - count : 0))
		;
}

static void
payer_sub(int64 payer, uint32 count)
{
	pg_atomic_uint32 *counters[LEDGER_GUARD_ROWS];
	int			row;

	payer_counters(payer, counters);
	for (row = 0; row < LEDGER_GUARD_ROWS; row++)
		counter_sub(counters[row], count);
}

/* The payer's estimated pending events: the least of its counters. */
static uint32
payer_estimate(int64 payer)
{
	pg_atomic_uint32 *counters[LEDGER_GUARD_ROWS];
	uint32		estimate = PG_UINT32_MAX;
	int			row;

	payer_counters(payer, counters);
	for (row = 0; row < LEDGER_GUARD_ROWS; row++)
		estimate = Min(estimate, pg_atomic_read_u32(counters[row]));
	return estimate;
}

/*
 * The estimated pending events counted under a key: a payer, or (negated)
 * a hold with a post or void pending.
 */
uint32
ledger_guard_count(int64 key)
{
	if (!guard_counts())
		return 0;
	return payer_estimate(key);
}

/*
 * Refuse to queue adding more events of a payer that would then have more
 * than ledger.max_pending_per_account pending.
 */
void
ledger_guard_check(int64 payer, int adding)
{
	if (ledger_max_pending_per_account == 0 || !guard_counts())
		return;
	if ((int64) payer_estimate(payer) + adding > ledger_max_pending_per_account)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("account " INT64_FORMAT " has too many events pending", payer),
				 errdetail_plural("At most %d event of one paying account may wait to be applied (ledger.max_pending_per_account).",
								  "At most %d events of one paying account may wait to be applied (ledger.max_pending_per_account).",
								  ledger_max_pending_per_account,
								  ledger_max_pending_per_account),
				 errhint("Retry once some are applied.")));
}

/* Undo the current transaction's additions from the first'th on. */
static void
undo_additions(int first)
{
	while (nadditions > first)
	{
		nadditions--;
		payer_sub(additions[nadditions].payer, additions[nadditions].count);
	}
}

/*
 * Count events the current transaction queued for a payer.  Called after
 * they are queued, so that an error in between leaves nothing to undo.
 */
void
ledger_guard_add(int64 payer, int count)
{
	pg_atomic_uint32 *counters[LEDGER_GUARD_ROWS];
	int			nest_level = GetCurrentTransactionNestLevel();
	int			row;

	if (count <= 0 || !guard_counts())
		return;

	if (!callbacks_registered)
	{
		RegisterXactCallback(guard_xact_callback, NULL);
		RegisterSubXactCallback(guard_subxact_callback, NULL);
		callbacks_registered = true;
	}

	/* room first: once the counters are raised, the undo must be known */
	if (nadditions == max_additions)
	{
		max_additions = Max(64, max_additions * 2);
		additions = additions == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(GuardAddition) * max_additions) :
			repalloc(additions, sizeof(GuardAddition) * max_additions);
	}
	if (nlevels == max_levels)
	{
		max_levels = Max(8, max_levels * 2);
		levels = levels == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(GuardLevel) * max_levels) :
			repalloc(levels, sizeof(GuardLevel) * max_levels);
	}

	if (nlevels == 0 || levels[nlevels - 1].nest_level != nest_level)
	{
		levels[nlevels].nest_level = nest_level;
		levels[nlevels].first = nadditions;
		nlevels++;
	}
	additions[nadditions].payer = payer;
	additions[nadditions].count = count;
	nadditions++;

	payer_counters(payer, counters);
	for (row = 0; row < LEDGER_GUARD_ROWS; row++)
		pg_atomic_fetch_add_u32(counters[row], count);
}

/* A worker has applied or rejected one event of the payer. */
void
ledger_guard_release(int64 payer)
{
	if (ledger_shared != NULL)
		payer_sub(payer, 1);
}

/* Set up the counters in new shared memory. */
void
ledger_guard_init(void)
{
	int			row;
	int			slot;

	for (row = 0; row < LEDGER_GUARD_ROWS; row++)
		for (slot = 0; slot < LEDGER_GUARD_SLOTS; slot++)
			pg_atomic_init_u32(&ledger_shared->guard[row][slot], 0);
}

/* Forget every count: the extension, and so its queue, is gone. */
void
ledger_guard_forget(void)
{
	int			row;
	int			slot;

	if (ledger_shared == NULL)
		return;
	for (row = 0; row < LEDGER_GUARD_ROWS; row++)
		for (slot = 0; slot < LEDGER_GUARD_SLOTS; slot++)
			pg_atomic_write_u32(&ledger_shared->guard[row][slot], 0);
}

static void
guard_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* a prepared transaction's events are not counted: see above */
			undo_additions(0);
			break;
		default:
			return;
	}
	nadditions = 0;
	nlevels = 0;
}

static void
guard_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	int			nest_level = GetCurrentTransactionNestLevel();

	if (nlevels == 0 || levels[nlevels - 1].nest_level != nest_level)
		return;

	switch (event)
	{
		case SUBXACT_EVENT_ABORT_SUB:
			undo_additions(levels[nlevels - 1].first);
			nlevels--;
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
			/* the parent's additions now, following any it made before */
			if (nlevels > 1 && levels[nlevels - 2].nest_level == nest_level - 1)
				nlevels--;
			else
				levels[nlevels - 1].nest_level = nest_level - 1;
			break;
		default:
			break;
	}
}
