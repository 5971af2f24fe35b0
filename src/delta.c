/*-------------------------------------------------------------------------
 *
 * delta.c
 *	  Which events a batch of a bucket reads, and in which order.
 *
 * The events are in ledger.event_log, written there once by the calls that
 * enqueued them.  A bucket's events are read by snapshot, as PgQ reads its
 * queues: a delta is the events whose transaction (txid) is visible in the
 * snapshot of the delta's first batch (cur) and was not in the previous
 * delta's (prev); the delta is applied in (txid, id) order, batch_size
 * events a batch, each batch recording how far it got (its cursor, in
 * ledger.batches).  A transaction that commits late falls in a later delta,
 * never skipped; one that commits with others is ordered among them by its
 * txid.  A scan of the log's index by (bucket, txid, id) reads the batch's
 * events.  Events left for later (decide.c) are read again first, by id,
 * until they are decided.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/nbtree.h"
#include "access/table.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "utils/array.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/xid8.h"

#include "ledger.h"
#include "batch.h"

/* The buckets this worker serves: its own, and any left from a larger setting. */
static BucketState served_buckets[LEDGER_MAX_BUCKETS * 4];
static int	nserved_buckets = 0;

static SPIPlanPtr fetch_deferred_plan = NULL;
static SPIPlanPtr fetch_xip_plan = NULL;

/* Forget the plans: the extension was dropped or created again. */
void
ledger_delta_reset(void)
{
	ledger_free_plan(&fetch_deferred_plan);
	ledger_free_plan(&fetch_xip_plan);
}

/* How many buckets this worker serves (ledger_serve_buckets()). */
int
ledger_served_buckets(void)
{
	return nserved_buckets;
}

BucketState *
ledger_served_bucket(int index)
{
	Assert(index >= 0 && index < nserved_buckets);
	return &served_buckets[index];
}

static Datum
copy_datum(Datum value, int16 typlen, bool typbyval)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	Datum		copy = datumCopy(value, typbyval, typlen);

	MemoryContextSwitchTo(oldcxt);
	return copy;
}

static void
free_datum(Datum *value)
{
	if (*value != (Datum) 0)
		pfree(DatumGetPointer(*value));
	*value = (Datum) 0;
}

/* Remember an event left for later, at the end of the bucket's list. */
void
ledger_delta_defer(BucketState *b, int64 event_id)
{
	if (b->ndeferred == b->maxdeferred)
	{
		b->maxdeferred = Max(16, b->maxdeferred * 2);
		b->deferred = b->deferred == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(int64) * b->maxdeferred) :
			repalloc(b->deferred, sizeof(int64) * b->maxdeferred);
	}
	b->deferred[b->ndeferred++] = event_id;
}

/*
 * Where the bucket's batches got to: its newest batch, or nothing yet (then
 * every event of the log is new); and the events left for later that have
 * no outcome yet.
 */
static void
load_delta(BucketState *b)
{
	Oid			argtype = INT4OID;
	Datum		arg = Int32GetDatum(b->bucket);
	bool		isnull;
	uint64		i;

	free_datum(&b->prev);
	free_datum(&b->cur);
	b->cursor_txid = (Datum) 0;
	b->cursor_id = 0;
	b->ndeferred = 0;

	if (SPI_execute_with_args("SELECT b.prev, b.cur, b.cursor_txid, b.cursor_id"
							  "  FROM ledger.batches b WHERE b.bucket = $1"
							  " ORDER BY b.id DESC LIMIT 1",
							  1, &argtype, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the batches of bucket %d", b->bucket);
	if (SPI_processed == 0)
		b->prev = copy_datum(DirectFunctionCall1(pg_snapshot_in, CStringGetDatum("1:1:")),
							 -1, false);
	else
	{
		HeapTuple	row = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum		cursor_txid = SPI_getbinval(row, desc, 3, &isnull);

		if (isnull)
		{
			/* the last delta is done: the next starts from its snapshot */
			b->prev = copy_datum(SPI_getbinval(row, desc, 2, &isnull), -1, false);
		}
		else
		{
			b->prev = copy_datum(SPI_getbinval(row, desc, 1, &isnull), -1, false);
			b->cur = copy_datum(SPI_getbinval(row, desc, 2, &isnull), -1, false);
			b->cursor_txid = cursor_txid;
			b->cursor_id = DatumGetInt64(SPI_getbinval(row, desc, 4, &isnull));
		}
	}

	if (SPI_execute_with_args("SELECT d.event_id FROM ledger.deferred d"
							  " WHERE d.bucket = $1"
							  "   AND NOT EXISTS (SELECT FROM ledger.outcomes o"
							  "                    WHERE o.event_id = d.event_id)"
							  " ORDER BY d.event_id",
							  1, &argtype, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the deferred events of bucket %d", b->bucket);
	for (i = 0; i < SPI_processed; i++)
		ledger_delta_defer(b, DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													SPI_tuptable->tupdesc, 1, &isnull)));
}

/*
 * Find the buckets this worker serves, make sure each has its external
 * accounts, and read where each bucket's batches got to.  Buckets numbered ledger.buckets or more hold accounts opened
 * while the setting was higher; worker (bucket mod ledger.buckets) serves
 * them, so that each account still has one worker.
 */
void
ledger_serve_buckets(void)
{
	int			my_worker = ledger_installed.worker;
	Oid			argtypes[2] = {INT4OID, INT4OID};
	Datum		args[2];
	uint64		i;

	args[0] = Int32GetDatum(ledger_buckets);
	args[1] = Int32GetDatum(my_worker);
	if (SPI_execute_with_args("SELECT $2 UNION"
							  " SELECT DISTINCT a.bucket FROM ledger.accounts a"
							  "  WHERE a.bucket >= $1 AND a.bucket % $1 = $2"
							  " ORDER BY 1",
							  2, argtypes, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list the buckets of worker %d", my_worker);
	if (SPI_processed > lengthof(served_buckets))
		elog(ERROR, "too many buckets for worker %d", my_worker);

	for (i = 0; i < nserved_buckets; i++)
	{
		free_datum(&served_buckets[i].prev);
		free_datum(&served_buckets[i].cur);
		served_buckets[i].ndeferred = 0;
	}
	nserved_buckets = (int) SPI_processed;
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		served_buckets[i].prev = served_buckets[i].cur = (Datum) 0;
		served_buckets[i].cursor_txid = (Datum) 0;
		served_buckets[i].cursor_id = 0;
		served_buckets[i].bucket = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
															   SPI_tuptable->tupdesc,
															   1, &isnull));
	}

	for (i = 0; i < nserved_buckets; i++)
	{
		args[0] = Int32GetDatum(served_buckets[i].bucket);
		if (SPI_execute_with_args("INSERT INTO ledger.accounts (id, allow_negative, bucket, currency)"
								  " SELECT ledger.external_account($1, c.no), true, $1, c.no"
								  "   FROM ledger.currencies c"
								  " ON CONFLICT (id) DO NOTHING",
								  1, argtypes, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not create the external accounts of bucket %d",
				 served_buckets[i].bucket);
		load_delta(&served_buckets[i]);
	}
}

/* Reading the batch */

static int64 *
bigint_array_values(Datum array, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int64	   *values;
	int			i;

	deconstruct_array(DatumGetArrayTypeP(array), INT8OID, 8, FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &elems, &nulls, n);
	values = palloc(sizeof(int64) * Max(*n, 1));
	for (i = 0; i < *n; i++)
		values[i] = DatumGetInt64(elems[i]);
	return values;
}

/* Fill in an event from a row of the log. */
static void
read_event(Datum *row, bool *isnull, QueuedEvent *ev)
{
	ev->row_id = DatumGetInt64(row[LOG_ID]);
	ev->id = isnull[LOG_CREDIT_OF] ? ev->row_id : DatumGetInt64(row[LOG_CREDIT_OF]);
	ev->kind = DatumGetChar(row[LOG_KIND]);
	ev->account_id = DatumGetInt64(row[LOG_ACCOUNT_ID]);
	ev->amount = DatumGetInt64(row[LOG_AMOUNT]);
	ev->hold_id = isnull[LOG_HOLD_ID] ? 0 : DatumGetInt64(row[LOG_HOLD_ID]);
	ev->expires_at = isnull[LOG_EXPIRES_AT] ? 0 :
		DatumGetTimestampTz(row[LOG_EXPIRES_AT]);
	ev->waits_from = isnull[LOG_WAITS_FROM] ? 0 : DatumGetInt64(row[LOG_WAITS_FROM]);
	ev->txid = row[LOG_TXID];
	ev->occurred_at = isnull[LOG_OCCURRED_AT] ? 0 :
		DatumGetTimestampTz(row[LOG_OCCURRED_AT]);
	ev->link_of = isnull[LOG_LINK_OF] ? 0 : DatumGetInt64(row[LOG_LINK_OF]);

	if (ev->kind == LEDGER_TRANSFER || ev->kind == LEDGER_HOLD ||
		ev->kind == LEDGER_POST || ev->kind == LEDGER_LINKED)
	{
		/*
		 * A transfer is a disbursement to one payee; so is a post, of an
		 * amount known once its hold is found.  A hold names its payee too.
		 */
		ev->npayees = 1;
		ev->payees = palloc(sizeof(int64));
		ev->amounts = palloc(sizeof(int64));
		ev->payees[0] = DatumGetInt64(row[LOG_TO_ACCOUNT]);
		ev->amounts[0] = ev->amount;
	}
	else if (ev->kind == LEDGER_DISBURSE || ev->kind == LEDGER_CREDIT)
	{
		int			namounts;

		ev->payees = bigint_array_values(row[LOG_TO_ACCOUNTS], &ev->npayees);
		ev->amounts = bigint_array_values(row[LOG_AMOUNTS], &namounts);
		if (namounts != ev->npayees)
			elog(ERROR, "event " INT64_FORMAT " has %d payees and %d amounts",
				 ev->id, ev->npayees, namounts);
	}
}

/*
 * Read entries of the bucket's log into events[*n ...], in (txid, id)
 * order, until there are limit: with txid_op BTEqualStrategyNumber those of
 * transaction txid after after_id, else those from txid on (after it with
 * BTGreaterStrategyNumber) up to before upto.  Only the entries of
 * transactions visible in the delta's snapshot are read, and of this
 * cluster (after base_id).
 *
 * The log's index is scanned directly, with keys that start and stop the
 * scan where the delta starts and stops whatever the statistics say: a
 * plan would be chosen for the table as ANALYZE last saw it, and a history
 * loaded in a few large transactions makes an equality on txid look like
 * half the table.
 */
static void
read_log(BucketState *b, Relation log, Relation index, int txid_op,
		 Datum txid, int64 after_id, Datum upto,
		 QueuedEvent *events, int *n, int limit)
{
	ScanKeyData keys[3];
	IndexScanDesc scan;
	TupleTableSlot *slot;

	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(b->bucket));
	if (txid_op == BTEqualStrategyNumber)
	{
		ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_XID8EQ, txid);
		ScanKeyInit(&keys[2], 3, BTGreaterStrategyNumber, F_INT8GT,
					Int64GetDatum(Max(after_id, ledger_installed.base_id)));
	}
	else
	{
		ScanKeyInit(&keys[1], 2, txid_op,
					txid_op == BTGreaterStrategyNumber ? F_XID8GT : F_XID8GE,
					txid);
		ScanKeyInit(&keys[2], 2, BTLessStrategyNumber, F_XID8LT, upto);
	}
	slot = table_slot_create(log, NULL);
	scan = index_beginscan(log, index, GetActiveSnapshot(), 3, 0);
	index_rescan(scan, keys, 3, NULL, 0);
	while (*n < limit && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		slot_getallattrs(slot);
		if (DatumGetInt64(slot->tts_values[LOG_ID]) <= ledger_installed.base_id ||
			!DatumGetBool(DirectFunctionCall2(pg_visible_in_snapshot,
											  slot->tts_values[LOG_TXID],
											  b->cur)))
			continue;
		read_event(slot->tts_values, slot->tts_isnull, &events[(*n)++]);
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
}

/*
 * Read the batch: the events the bucket left for later, then up to
 * batch_size more of its delta, after its cursor.  Sets *more when the
 * delta may have more.  The events are in the order they are to be decided.
 */
QueuedEvent *
ledger_fetch_batch(BucketState *b, int batch_size, int *nevents, bool *more)
{
	Oid			deferred_argtypes[2] = {INT8ARRAYOID, INT8OID};
	Oid			xip_argtypes[3] = {PG_SNAPSHOTOID, XID8OID, PG_SNAPSHOTOID};
	Datum		args[3];
	QueuedEvent *events;
	int			first_new;
	Datum		prev_xmax;
	Datum		cur_xmax;
	Relation	log;
	Relation	index;
	uint64		i;

	/*
	 * The deferred events in the order they were read in: those of a ledger
	 * restored from another history first, as their transaction ids are not
	 * comparable with this cluster's.
	 */
	events = palloc0(sizeof(QueuedEvent) * (b->ndeferred + batch_size));
	*nevents = 0;
	if (b->ndeferred > 0)
	{
		Datum	   *ids = palloc(sizeof(Datum) * b->ndeferred);

		for (i = 0; i < b->ndeferred; i++)
			ids[i] = Int64GetDatum(b->deferred[i]);
		args[0] = ledger_bigint_array(ids, b->ndeferred);
		args[1] = Int64GetDatum(ledger_installed.base_id);
		ledger_prepare_plan(&fetch_deferred_plan,
							"SELECT e.* FROM ledger.event_log e WHERE e.id = ANY ($1)"
							" ORDER BY e.id > $2, e.txid, e.id",
							2, deferred_argtypes);
		if (SPI_execute_plan(fetch_deferred_plan, args, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read the deferred events of bucket %d", b->bucket);
		for (i = 0; i < SPI_processed; i++)
		{
			Datum		row[LOG_NATTS];
			bool		isnull[LOG_NATTS];

			heap_deform_tuple(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
							  row, isnull);
			read_event(row, isnull, &events[*nevents]);
			events[(*nevents)++].was_deferred = true;
		}
	}
	first_new = *nevents;

	/*
	 * The delta's events after the cursor: their transaction visible in cur
	 * and not in prev.  Not in prev means in progress in prev, or from
	 * prev's xmax on.  As PgQ does, each transaction prev saw in progress
	 * (all before prev's xmax) is probed for on its own, then the range
	 * read from prev's xmax.  Reading from prev's xmin instead would read
	 * again, every batch, all that committed since the oldest transaction
	 * then open: a transaction left open anywhere in the cluster would slow
	 * the worker down more and more.  The cursor's own transaction is read
	 * on from the cursor, so that a delta of a few large transactions is
	 * read once, not once per batch.
	 */
	ledger_prepare_plan(&fetch_xip_plan,
						"SELECT x FROM pg_snapshot_xip($1) x"
						" WHERE x >= $2 AND pg_visible_in_snapshot(x, $3)"
						" ORDER BY x",
						3, xip_argtypes);
	args[0] = b->prev;
	args[1] = b->cursor_txid;
	args[2] = b->cur;
	if (SPI_execute_plan(fetch_xip_plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the snapshot of bucket %d", b->bucket);

	log = table_open(ledger_installed.event_log, AccessShareLock);
	index = index_open(ledger_installed.event_log_delta_index, AccessShareLock);
	for (i = 0; i < SPI_processed && *nevents - first_new < batch_size; i++)
	{
		bool		isnull;
		Datum		xid = SPI_getbinval(SPI_tuptable->vals[i],
										SPI_tuptable->tupdesc, 1, &isnull);

		read_log(b, log, index, BTEqualStrategyNumber, xid,
				 FullTransactionIdEquals(DatumGetFullTransactionId(xid),
										DatumGetFullTransactionId(b->cursor_txid)) ?
				 b->cursor_id : 0, (Datum) 0,
				 events, nevents, first_new + batch_size);
	}
	prev_xmax = DirectFunctionCall1(pg_snapshot_xmax, b->prev);
	cur_xmax = DirectFunctionCall1(pg_snapshot_xmax, b->cur);
	if (DatumGetBool(DirectFunctionCall2(xid8ge, b->cursor_txid, prev_xmax)))
	{
		read_log(b, log, index, BTEqualStrategyNumber, b->cursor_txid,
				 b->cursor_id, (Datum) 0, events, nevents,
				 first_new + batch_size);
		read_log(b, log, index, BTGreaterStrategyNumber, b->cursor_txid, 0,
				 cur_xmax, events, nevents, first_new + batch_size);
	}
	else
		read_log(b, log, index, BTGreaterEqualStrategyNumber, prev_xmax, 0,
				 cur_xmax, events, nevents, first_new + batch_size);
	index_close(index, AccessShareLock);
	table_close(log, AccessShareLock);

	/* the cursor moves to the last event read: all before it are decided */
	if (*nevents > first_new)
	{
		b->cursor_txid = events[*nevents - 1].txid;
		b->cursor_id = events[*nevents - 1].row_id;
	}
	*more = *nevents - first_new == batch_size;
	return events;
}

/* The active snapshot, as a pg_snapshot. */
static Datum
current_snapshot(void)
{
	LOCAL_FCINFO(fcinfo, 0);

	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	return pg_current_snapshot(fcinfo);
}

/* Start a delta, if the bucket is not in one: with this batch's snapshot. */
void
ledger_delta_begin(BucketState *b)
{
	if (b->cur == (Datum) 0)
		b->cur = copy_datum(current_snapshot(), -1, false);
}

/* The delta is done: the next starts from its snapshot. */
void
ledger_delta_end(BucketState *b)
{
	free_datum(&b->prev);
	b->prev = b->cur;
	b->cur = (Datum) 0;
	b->cursor_txid = (Datum) 0;
	b->cursor_id = 0;
}
