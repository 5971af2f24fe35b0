/*-------------------------------------------------------------------------
 *
 * apply.c
 *	  Applying one batch of a bucket's queued events.
 *
 * A batch is applied in the worker's current transaction.  The events are
 * in ledger.event_log, written there once by the calls that enqueued them.
 * A bucket's events are read by snapshot, as PgQ reads its queues: a delta
 * is the events whose transaction (txid) is visible in the snapshot of the
 * delta's first batch (cur) and was not in the previous delta's (prev);
 * the delta is applied in (txid, id) order, batch_size events a batch, each
 * batch recording how far it got (its cursor).  A transaction that commits
 * late falls in a later delta, never skipped; one that commits with others
 * is ordered among them by its txid.  A scan of the log's index by (bucket,
 * txid, id) reads the batch's events, a statement loads the accounts this
 * worker has not seen yet; then the events are decided here, in C, one at
 * a time in that order, because each depends on the balances the previous
 * ones left.  What is new is written straight to the heap (bulk.c): legs,
 * credits for other buckets (events of the log too), breakpoints, the new
 * totals of open holds, a row for each event rejected or left for later,
 * and one for the batch.  Nothing is updated or deleted.
 *
 * Balances come from a cache of account state kept across batches
 * (accounts.c), holds from a cache of the open ones (holds.c).  They can be
 * trusted because every leg and hold of an account is written by the worker
 * of the account's bucket, that is by this process: debits and same-bucket
 * credits while applying the paying event, cross-bucket credits while
 * applying the credit entries other buckets queued here.  If a batch fails
 * the worker exits, and with it the caches.
 *
 * Two kinds of entries stay queued past their turn, neither of them work
 * the worker spins on: a debit that must wait for the credits earlier
 * events of its transaction send its payer from other buckets (order.c),
 * with every later event of the accounts it names; and, in a ledger that
 * was over the supply bound before 1.5, a credit that would overflow its
 * payee.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/nbtree.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "common/int.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "storage/itemptr.h"
#include "utils/array.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "ledger.h"
#include "apply.h"

/*
 * The columns of the tables a batch writes, in order: rows are built for
 * them column by column.  Checked against the catalog once per
 * installation, so that a library and a schema that disagree stop the
 * worker instead of writing garbage.
 */
enum
{
	LOG_ID, LOG_KIND, LOG_ACCOUNT_ID, LOG_TO_ACCOUNT, LOG_AMOUNT,
	LOG_TO_ACCOUNTS, LOG_AMOUNTS, LOG_STATUS, LOG_REASON, LOG_ENQUEUED_AT,
	LOG_APPLIED_AT, LOG_HOLD_ID, LOG_EXPIRES_AT, LOG_METADATA, LOG_BUCKET,
	LOG_TXID, LOG_WAITS_FROM, LOG_CREDIT_OF, LOG_NATTS
};
static const char *const event_log_columns[] = {
	"id", "kind", "account_id", "to_account", "amount", "to_accounts",
	"amounts", "status", "reason", "enqueued_at", "applied_at", "hold_id",
	"expires_at", "metadata", "bucket", "txid", "waits_from", "credit_of"
};

enum
{
	BATCHES_BUCKET, BATCHES_ID, BATCHES_PREV, BATCHES_CUR, BATCHES_CUR_XMAX,
	BATCHES_CURSOR_TXID, BATCHES_CURSOR_ID, BATCHES_DECIDED_AT,
	BATCHES_APPLIED, BATCHES_REJECTED, BATCHES_NATTS
};
static const char *const batches_columns[] = {
	"bucket", "id", "prev", "cur", "cur_xmax", "cursor_txid", "cursor_id",
	"decided_at", "applied", "rejected"
};

enum
{
	OUTCOMES_EVENT_ID, OUTCOMES_STATUS, OUTCOMES_REASON, OUTCOMES_BATCH_ID,
	OUTCOMES_DECIDED_AT, OUTCOMES_NATTS
};
static const char *const outcomes_columns[] = {
	"event_id", "status", "reason", "batch_id", "decided_at"
};

enum
{
	DEFERRED_EVENT_ID, DEFERRED_BUCKET, DEFERRED_BATCH_ID, DEFERRED_DEFERRED_AT,
	DEFERRED_NATTS
};
static const char *const deferred_columns[] = {
	"event_id", "bucket", "batch_id", "deferred_at"
};

enum
{
	TRANSACTIONS_ID, TRANSACTIONS_ACCOUNT_ID, TRANSACTIONS_EVENT_ID,
	TRANSACTIONS_AMOUNT, TRANSACTIONS_BALANCE_AFTER, TRANSACTIONS_CREATED_AT,
	TRANSACTIONS_NATTS
};
static const char *const transactions_columns[] = {
	"id", "account_id", "event_id", "amount", "balance_after", "created_at"
};

enum
{
	BREAKPOINTS_ACCOUNT_ID, BREAKPOINTS_PREVIOUS_BALANCE,
	BREAKPOINTS_CURRENT_BALANCE, BREAKPOINTS_AMOUNT_DIFFERENCE,
	BREAKPOINTS_FIRST_TXN_ID, BREAKPOINTS_LAST_TXN_ID, BREAKPOINTS_CREATED_AT,
	BREAKPOINTS_NATTS
};
static const char *const breakpoints_columns[] = {
	"account_id", "previous_balance", "current_balance", "amount_difference",
	"first_txn_id", "last_txn_id", "created_at"
};

enum
{
	HOLD_ENDS_HOLD_ID, HOLD_ENDS_ACCOUNT_ID, HOLD_ENDS_STATUS,
	HOLD_ENDS_EVENT_ID, HOLD_ENDS_AMOUNT, HOLD_ENDS_ENDED_AT, HOLD_ENDS_NATTS
};
static const char *const hold_ends_columns[] = {
	"hold_id", "account_id", "status", "event_id", "amount", "ended_at"
};

enum
{
	ACCOUNT_HOLDS_ACCOUNT_ID, ACCOUNT_HOLDS_ID, ACCOUNT_HOLDS_HELD,
	ACCOUNT_HOLDS_CHANGED_AT, ACCOUNT_HOLDS_NATTS
};
static const char *const account_holds_columns[] = {
	"account_id", "id", "held", "changed_at"
};

enum
{
	TRANSIT_SOURCE_NODE, TRANSIT_ID, TRANSIT_TARGET_NODE, TRANSIT_EVENT_ID,
	TRANSIT_PAYER, TRANSIT_CURRENCY, TRANSIT_TO_ACCOUNTS, TRANSIT_AMOUNTS,
	TRANSIT_AMOUNT, TRANSIT_CREATED_AT, TRANSIT_NATTS
};
static const char *const transit_columns[] = {
	"source_node", "id", "target_node", "event_id", "payer", "currency",
	"to_accounts", "amounts", "amount", "created_at"
};

/* An event of the log a batch decides. */
typedef struct QueuedEvent
{
	int64		row_id;			/* its row's id: a credit has one of its own */
	int64		id;				/* the event's: a credit's is the one it completes */
	char		kind;
	int64		account_id;
	int64		amount;
	int64		hold_id;		/* post and void */
	TimestampTz expires_at;		/* hold, or 0 */
	int64		waits_from;		/* see order.c; or 0 */
	Datum		txid;			/* xid8 */
	bool		was_deferred;	/* left for later by an earlier batch */
	int			npayees;		/* transfers, disbursements, credits, posts */
	int64	   *payees;
	int64	   *amounts;
} QueuedEvent;

/* Where a batch's rows go. */
typedef struct BatchOutput
{
	BulkInsert *events;
	BulkInsert *legs;
	BulkInsert *credits;
	BulkInsert *breakpoints;
	BulkInsert *hold_ends;
	BulkInsert *transit;		/* NULL but in a cluster */
	BulkInsert *outcomes;
	BulkInsert *deferred;
	int64		batch_id;
	Datum		txid;			/* the batch's own (xid8), for its credits */
	TimestampTz now;
} BatchOutput;

static Oid	ledger_extension = InvalidOid;
static bool cluster_mode = false;	/* a node of a cluster */
static uint64 seen_limits_generation = 0;
static Oid	transaction_seq_oid = InvalidOid;
static Oid	event_seq_oid = InvalidOid;
static Oid	event_log_oid = InvalidOid;
static Oid	event_log_delta_index_oid = InvalidOid;
static Oid	batches_oid = InvalidOid;
static Oid	outcomes_oid = InvalidOid;
static Oid	deferred_oid = InvalidOid;
static Oid	batch_seq_oid = InvalidOid;
static Oid	transactions_oid = InvalidOid;
static Oid	breakpoints_oid = InvalidOid;
static Oid	hold_ends_oid = InvalidOid;
static Oid	account_holds_oid = InvalidOid;
static Oid	transit_oid = InvalidOid;
static int	my_worker = -1;
static int64 base_id = 0;		/* events up to it are read by id only */

/*
 * The buckets this worker serves: its own, and any left from a larger
 * setting; for each, the delta it is applying.
 */
typedef struct BucketState
{
	int			bucket;
	Datum		prev;			/* pg_snapshot: where the last delta ended */
	Datum		cur;			/* the delta's own, or 0 before it starts */
	Datum		cursor_txid;	/* (xid8, id) of the last event of the delta */
	int64		cursor_id;		/* decided; cursor_txid 0 before the first */
	int64	   *deferred;		/* the events left for later, in order */
	int			ndeferred;
	int			maxdeferred;
} BucketState;

static BucketState served_buckets[LEDGER_MAX_BUCKETS * 4];
static int	nserved_buckets = 0;

/* Credits held back that were reported already: reported once each. */
static HTAB *reported_credits = NULL;

static SPIPlanPtr fetch_deferred_plan = NULL;
static SPIPlanPtr fetch_xip_plan = NULL;
static SPIPlanPtr awaited_plan = NULL;

/*
 * Forget everything cached about the extension's objects: called when the
 * extension was dropped or created again.
 */
void
ledger_apply_reset(void)
{
	ledger_accounts_reset();
	ledger_supply_reset();
	ledger_holds_reset();
	ledger_bulk_reset();
	transaction_seq_oid = InvalidOid;
	ledger_extension = InvalidOid;
	ledger_free_plan(&fetch_deferred_plan);
	ledger_free_plan(&fetch_xip_plan);
	ledger_free_plan(&awaited_plan);
	if (reported_credits)
		hash_destroy(reported_credits);
	reported_credits = NULL;
}

/* The OID of a relation of schema ledger, whose columns must be these. */
static Oid
ledger_relation(const char *name, const char *const *columns, int ncolumns)
{
	Oid			relid = get_relname_relid(name, get_namespace_oid("ledger", false));
	Relation	rel;
	TupleDesc	desc;
	int			i;

	if (!OidIsValid(relid))
		elog(ERROR, "relation ledger.%s does not exist", name);
	if (columns == NULL)
		return relid;

	rel = table_open(relid, AccessShareLock);
	desc = RelationGetDescr(rel);
	for (i = 0; i < desc->natts || i < ncolumns; i++)
	{
		if (i >= desc->natts || i >= ncolumns ||
			TupleDescAttr(desc, i)->attisdropped ||
			strcmp(NameStr(TupleDescAttr(desc, i)->attname), columns[i]) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table ledger.%s does not have the columns this version of the ledger library writes",
							name),
					 errhint("Update the extension with ALTER EXTENSION ledger UPDATE.")));
	}
	table_close(rel, AccessShareLock);
	return relid;
}

/*
 * The log's index by (bucket, txid, id), that a delta is read by: checked
 * once per installation, as the tables are.
 */
static Oid
log_delta_index(void)
{
	Oid			relid = ledger_relation("event_log_batch_idx", NULL, 0);
	Relation	index = index_open(relid, AccessShareLock);
	Form_pg_index form = index->rd_index;

	if (form->indrelid != event_log_oid || form->indnkeyatts != 3 ||
		form->indkey.values[0] != LOG_BUCKET + 1 ||
		form->indkey.values[1] != LOG_TXID + 1 ||
		form->indkey.values[2] != LOG_ID + 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("index ledger.event_log_batch_idx is not on (bucket, txid, id) of ledger.event_log"),
				 errhint("Update the extension with ALTER EXTENSION ledger UPDATE.")));
	index_close(index, AccessShareLock);
	return relid;
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
static void
add_deferred(BucketState *b, int64 event_id)
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
		add_deferred(b, DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													SPI_tuptable->tupdesc, 1, &isnull)));
}

/*
 * Take over a ledger restored from another cluster, or from a later state
 * of this one (ledger_installation()): its log's transaction ids are of
 * another history, and could be taken for this one's.  The events they
 * still left pending are listed as deferred, to be read by id; every
 * bucket's next delta starts from nothing; the events up to the newest so
 * far are decided by what the batches of the other history said
 * (ledger.installation's base_id and base_batch).  One worker does it, the
 * others find it done.  Enqueueing waits for it
 * (ledger_require_installation()).
 */
static void
take_over_restored_ledger(void)
{
	int64		base;

	if (!ledger_installation(&base))
	{
		base_id = base;
		return;
	}
	if (SPI_execute("LOCK TABLE ledger.installation IN SHARE ROW EXCLUSIVE MODE",
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not lock ledger.installation");
	if (ledger_installation(&base))
	{
		if (SPI_execute("INSERT INTO ledger.deferred (event_id, bucket, batch_id, deferred_at)"
						" SELECT s.id, s.bucket, 0, pg_catalog.now() FROM ledger.log_states s"
						"  WHERE s.state = 'p' AND s.txid IS NOT NULL"
						"    AND NOT EXISTS (SELECT FROM ledger.deferred d WHERE d.event_id = s.id)",
						false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not list the pending events of the restored ledger");
		ereport(LOG,
				(errmsg("ledger: taking over a ledger restored from another cluster"),
				 errdetail_plural("%d event still pending is read by its id from now on.",
								  "%d events still pending are read by their ids from now on.",
								  (int) SPI_processed, (int) SPI_processed)));
		if (SPI_execute("INSERT INTO ledger.batches (bucket, id, prev, cur, cur_xmax,"
						" decided_at, applied, rejected)"
						" SELECT b.bucket, pg_catalog.nextval('ledger.batch_id_seq'),"
						"        '1:1:', '1:1:', '1', pg_catalog.now(), 0, 0"
						"   FROM (SELECT DISTINCT b.bucket FROM ledger.batches b) b",
						false, 0) != SPI_OK_INSERT ||
			SPI_execute("INSERT INTO ledger.installation (system_id, base_id, base_batch, since)"
						" SELECT ledger.system_identifier(),"
						"        COALESCE((SELECT max(e.id) FROM ledger.event_log e), 0),"
						"        COALESCE((SELECT max(b.id) FROM ledger.batches b), 0),"
						"        pg_catalog.now()",
						false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not take over the restored ledger");
		if (ledger_installation(&base))
			elog(ERROR, "the restored ledger was not taken over");
	}
	base_id = base;

	/*
	 * The pass's snapshot is from before the lock: the rows just written,
	 * here or by the worker waited for, are in a newer one.
	 */
	CommandCounterIncrement();
	PopActiveSnapshot();
	PushActiveSnapshot(GetTransactionSnapshot());
}

/*
 * Find the buckets this worker serves, and make sure each has its external
 * accounts.  Buckets numbered ledger.buckets or more hold accounts opened
 * while the setting was higher; worker (bucket mod ledger.buckets) serves
 * them, so that each account still has one worker.
 */
static void
setup_buckets(void)
{
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

/*
 * Is the extension installed in this database, in the schema the library
 * serves?  If so, set how many buckets this worker serves.  Resets
 * everything cached when the extension is not the installation seen last.
 *
 * Forgets the accounts, and so their limits, when limits may have changed:
 * when the count of announcements read after the batch's snapshot was taken
 * (limits_after) differs from the count read before the last batch's.  A
 * transaction that sets limits announces before its commit is visible and
 * after (wait.c): if this snapshot sees it, limits_after counts the first
 * announcement; if not, the second comes after limits_before, and a later
 * batch, whose snapshot sees it, reloads.
 *
 * Called inside SPI, in a transaction.
 */
LedgerSchema
ledger_apply_ready(int worker, uint64 limits_before, uint64 limits_after,
				   int *nbuckets)
{
	Oid			extension_oid = ledger_extension_oid();
	LedgerSchema schema = ledger_schema();

	my_worker = worker;

	/*
	 * A dropped extension took its queue along: nothing is pending any
	 * more, whatever the spam guard counted.
	 */
	if (!OidIsValid(extension_oid) ||
		(OidIsValid(ledger_extension) && extension_oid != ledger_extension))
		ledger_guard_forget();
	if (extension_oid != ledger_extension || schema != LEDGER_SCHEMA_CURRENT ||
		ledger_in_cluster() != cluster_mode)
		ledger_apply_reset();
	if (!OidIsValid(extension_oid))
		return LEDGER_SCHEMA_NONE;
	if (schema != LEDGER_SCHEMA_CURRENT)
		return schema;

	if (!OidIsValid(ledger_extension))
	{
		cluster_mode = ledger_in_cluster();
		transaction_seq_oid = ledger_relation("transaction_id_seq", NULL, 0);
		event_seq_oid = ledger_relation("event_id_seq", NULL, 0);
		batch_seq_oid = ledger_relation("batch_id_seq", NULL, 0);
		event_log_oid = ledger_relation("event_log", event_log_columns, LOG_NATTS);
		event_log_delta_index_oid = log_delta_index();
		batches_oid = ledger_relation("batches", batches_columns, BATCHES_NATTS);
		outcomes_oid = ledger_relation("outcomes", outcomes_columns, OUTCOMES_NATTS);
		deferred_oid = ledger_relation("deferred", deferred_columns, DEFERRED_NATTS);
		transactions_oid = ledger_relation("transactions", transactions_columns,
										   TRANSACTIONS_NATTS);
		breakpoints_oid = ledger_relation("breakpoints", breakpoints_columns,
										  BREAKPOINTS_NATTS);
		hold_ends_oid = ledger_relation("hold_ends", hold_ends_columns,
										HOLD_ENDS_NATTS);
		account_holds_oid = ledger_relation("account_holds", account_holds_columns,
											ACCOUNT_HOLDS_NATTS);
		transit_oid = cluster_mode ?
			ledger_relation("transit", transit_columns, TRANSIT_NATTS) :
			InvalidOid;
		take_over_restored_ledger();
		setup_buckets();
		ledger_holds_load(my_worker);
		ledger_supply_load(my_worker);
		seen_limits_generation = limits_before;
		ledger_extension = extension_oid;
	}
	else if (limits_after != seen_limits_generation)
	{
		ledger_accounts_reset();
		seen_limits_generation = limits_before;
	}
	*nbuckets = nserved_buckets;
	return LEDGER_SCHEMA_CURRENT;
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

	if (ev->kind == LEDGER_TRANSFER || ev->kind == LEDGER_HOLD ||
		ev->kind == LEDGER_POST)
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
					Int64GetDatum(Max(after_id, base_id)));
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
		if (DatumGetInt64(slot->tts_values[LOG_ID]) <= base_id ||
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
static QueuedEvent *
fetch_batch(BucketState *b, int batch_size, int *nevents, bool *more)
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
		args[1] = Int64GetDatum(base_id);
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

	log = table_open(event_log_oid, AccessShareLock);
	index = index_open(event_log_delta_index_oid, AccessShareLock);
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

/* Accounts */

/* Open an external account that should exist but does not. */
static void
create_external_account(int bucket, int currency)
{
	Oid			argtypes[2] = {INT4OID, INT4OID};
	Datum		args[2];

	args[0] = Int32GetDatum(bucket);
	args[1] = Int32GetDatum(currency);
	if (SPI_execute_with_args("INSERT INTO ledger.accounts (id, allow_negative, bucket, currency)"
							  " VALUES (ledger.external_account($1, $2), true, $1, $2)"
							  " ON CONFLICT (id) DO NOTHING",
							  2, argtypes, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not create the external account of bucket %d", bucket);
}

/*
 * Load the accounts a batch names that the cache does not hold yet, and the
 * external accounts its deposits and withdrawals need: those of the bucket
 * in the accounts' currencies, known once the accounts are loaded.
 */
static void
load_accounts(QueuedEvent *events, int nevents, TimestampTz now)
{
	int64	   *ids;
	int			nids = 0;
	int			maxids = 1;
	int			e;
	int			p;

	for (e = 0; e < nevents; e++)
		maxids += 1 + events[e].npayees;
	ids = palloc(sizeof(int64) * maxids);
	for (e = 0; e < nevents; e++)
	{
		ids[nids++] = events[e].account_id;
		for (p = 0; p < events[e].npayees; p++)
			ids[nids++] = events[e].payees[p];
	}
	ledger_load_accounts(ids, nids, my_worker, cluster_mode, now);

	nids = 0;
	for (e = 0; e < nevents; e++)
	{
		AccountState *acct;

		if (events[e].kind != LEDGER_DEPOSIT && events[e].kind != LEDGER_WITHDRAW)
			continue;
		acct = ledger_find_account(events[e].account_id);
		if (acct != NULL && acct->owned)
			ids[nids++] = LEDGER_EXTERNAL_ACCOUNT(acct->bucket, acct->currency);
	}
	if (nids == 0)
		return;
	ledger_load_accounts(ids, nids, my_worker, cluster_mode, now);

	/*
	 * Registering a currency opens its external accounts in the buckets of
	 * the day; a bucket that was added since has them opened here.
	 */
	for (e = 0; e < nids; e++)
	{
		if (ledger_find_account(ids[e]) == NULL)
		{
			create_external_account(LEDGER_EXTERNAL_BUCKET(ids[e]),
									LEDGER_EXTERNAL_CURRENCY(ids[e]));
			ledger_load_accounts(&ids[e], 1, my_worker, cluster_mode, now);
		}
	}
}

/* Deciding */

static void
write_breakpoint(BatchOutput *out, AccountState *acct)
{
	TupleTableSlot *slot = ledger_bulk_next_slot(out->breakpoints);
	Datum	   *v = slot->tts_values;

	memset(slot->tts_isnull, false, sizeof(bool) * BREAKPOINTS_NATTS);
	v[BREAKPOINTS_ACCOUNT_ID] = Int64GetDatum(acct->id);
	v[BREAKPOINTS_PREVIOUS_BALANCE] = Int64GetDatum(acct->bp_balance);
	v[BREAKPOINTS_CURRENT_BALANCE] = Int64GetDatum(acct->balance);
	v[BREAKPOINTS_AMOUNT_DIFFERENCE] = Int64GetDatum(acct->balance - acct->bp_balance);
	v[BREAKPOINTS_FIRST_TXN_ID] = Int64GetDatum(acct->bp_first_txn_id);
	v[BREAKPOINTS_LAST_TXN_ID] = Int64GetDatum(acct->last_txn_id);
	v[BREAKPOINTS_CREATED_AT] = TimestampTzGetDatum(out->now);
	ledger_bulk_add_row(out->breakpoints, slot);

	acct->bp_balance = acct->balance;
	acct->bp_first_txn_id = acct->last_txn_id + 1;
	acct->legs_since_bp = 0;
}

/* Post one leg, already checked, and a breakpoint when one is due. */
static void
post_leg(BatchOutput *out, AccountState *acct, int64 event_id, int64 amount)
{
	TupleTableSlot *slot;
	Datum	   *v;
	int64		difference;

	Assert(acct->owned);

	/*
	 * A breakpoint records the difference its legs make as a bigint.  An
	 * account that may go negative can swing further than that between two
	 * breakpoints: close the current one early when this leg would.
	 */
	if (acct->last_txn_id >= acct->bp_first_txn_id &&
		pg_sub_s64_overflow(acct->balance + amount, acct->bp_balance, &difference))
		write_breakpoint(out, acct);

	slot = ledger_bulk_next_slot(out->legs);
	v = slot->tts_values;
	ledger_account_set(acct, acct->balance + amount, acct->held);
	acct->last_txn_id = nextval_internal(transaction_seq_oid, false);
	acct->legs_since_bp++;
	if (amount < 0)
		ledger_note_debit(acct, -amount, out->now);

	memset(slot->tts_isnull, false, sizeof(bool) * TRANSACTIONS_NATTS);
	v[TRANSACTIONS_ID] = Int64GetDatum(acct->last_txn_id);
	v[TRANSACTIONS_ACCOUNT_ID] = Int64GetDatum(acct->id);
	v[TRANSACTIONS_EVENT_ID] = Int64GetDatum(event_id);
	v[TRANSACTIONS_AMOUNT] = Int64GetDatum(amount);
	v[TRANSACTIONS_BALANCE_AFTER] = Int64GetDatum(acct->balance);
	v[TRANSACTIONS_CREATED_AT] = TimestampTzGetDatum(out->now);
	ledger_bulk_add_row(out->legs, slot);

	if (acct->legs_since_bp >= ledger_breakpoint_interval)
		write_breakpoint(out, acct);
}

/*
 * An event is decided.  Only what the batch does not say itself is
 * written: a rejection, with its reason, and the outcome of an event an
 * earlier batch left for later.
 */
static void
record_outcome(BatchOutput *out, QueuedEvent *ev, const char *reason)
{
	if (reason != NULL || ev->was_deferred)
	{
		TupleTableSlot *slot = ledger_bulk_next_slot(out->outcomes);
		Datum	   *v = slot->tts_values;

		memset(slot->tts_isnull, false, sizeof(bool) * OUTCOMES_NATTS);
		v[OUTCOMES_EVENT_ID] = Int64GetDatum(ev->row_id);
		v[OUTCOMES_STATUS] = CharGetDatum(reason ? LEDGER_REJECTED : LEDGER_APPLIED);
		v[OUTCOMES_REASON] = reason ? CStringGetTextDatum(reason) : (Datum) 0;
		slot->tts_isnull[OUTCOMES_REASON] = reason == NULL;
		v[OUTCOMES_BATCH_ID] = Int64GetDatum(out->batch_id);
		v[OUTCOMES_DECIDED_AT] = TimestampTzGetDatum(out->now);
		ledger_bulk_add_row(out->outcomes, slot);
	}

	/*
	 * No longer pending for the spam guard.  Counted off before the commit
	 * rather than after: should the batch fail, the event is left uncounted
	 * (let through), where a worker dying after the commit would leave it
	 * counted for good (refused).  A credit was never counted.
	 */
	if (ev->kind == LEDGER_CREDIT)
		return;
	ledger_guard_release(ev->account_id);
	if (ev->kind == LEDGER_POST || ev->kind == LEDGER_VOID)
		ledger_guard_release(-ev->hold_id);
}

/* An event is left for later: a row says so, the first time. */
static void
record_deferral(BatchOutput *out, BucketState *b, QueuedEvent *ev)
{
	add_deferred(b, ev->row_id);
	if (!ev->was_deferred)
	{
		TupleTableSlot *slot = ledger_bulk_next_slot(out->deferred);
		Datum	   *v = slot->tts_values;

		memset(slot->tts_isnull, false, sizeof(bool) * DEFERRED_NATTS);
		v[DEFERRED_EVENT_ID] = Int64GetDatum(ev->row_id);
		v[DEFERRED_BUCKET] = Int32GetDatum(b->bucket);
		v[DEFERRED_BATCH_ID] = Int64GetDatum(out->batch_id);
		v[DEFERRED_DEFERRED_AT] = TimestampTzGetDatum(out->now);
		ledger_bulk_add_row(out->deferred, slot);
	}
}

/* The payees of an event that one credit entry or transit row carries. */
typedef struct CreditShare
{
	Datum		to_accounts;	/* bigint[] */
	Datum		amounts;		/* bigint[] */
	int64		total;
} CreditShare;

/*
 * Gather the payees not handled yet (done[] false) that are where
 * payees[first] is: the same bucket of this node, or the same other node.
 * Marks them done.
 */
static CreditShare
gather_credit(QueuedEvent *ev, AccountState **payees, int first, bool *done)
{
	AccountState *where = payees[first];
	Datum	   *to = palloc(sizeof(Datum) * (ev->npayees - first));
	Datum	   *amounts = palloc(sizeof(Datum) * (ev->npayees - first));
	CreditShare share = {0};
	int			n = 0;
	int			p;

	for (p = first; p < ev->npayees; p++)
	{
		if (done[p] || payees[p]->node != where->node ||
			(where->node == 0 && payees[p]->bucket != where->bucket))
			continue;
		to[n] = Int64GetDatum(ev->payees[p]);
		amounts[n] = Int64GetDatum(ev->amounts[p]);
		share.total += ev->amounts[p];	/* no overflow: checked at enqueue */
		done[p] = true;
		n++;
	}
	share.to_accounts = ledger_bigint_array(to, n);
	share.amounts = ledger_bigint_array(amounts, n);
	return share;
}

/*
 * Send to another node of the cluster the credit legs of an event for the
 * payees that node holds, as a row of ledger.transit that logical
 * replication carries there.
 */
static void
send_credit(BatchOutput *out, QueuedEvent *ev, AccountState **payees,
			int first, bool *done)
{
	AccountState *where = payees[first];
	CreditShare share = gather_credit(ev, payees, first, done);
	TupleTableSlot *slot = ledger_bulk_next_slot(out->transit);
	Datum	   *v = slot->tts_values;

	memset(slot->tts_isnull, false, sizeof(bool) * TRANSIT_NATTS);
	v[TRANSIT_SOURCE_NODE] = Int32GetDatum(ledger_node_id);
	v[TRANSIT_ID] = Int64GetDatum(nextval_internal(event_seq_oid, false));
	v[TRANSIT_TARGET_NODE] = Int32GetDatum(where->node);
	v[TRANSIT_EVENT_ID] = Int64GetDatum(ev->id);
	v[TRANSIT_PAYER] = Int64GetDatum(ev->account_id);
	v[TRANSIT_CURRENCY] = CStringGetTextDatum(where->currency_code);
	v[TRANSIT_TO_ACCOUNTS] = share.to_accounts;
	v[TRANSIT_AMOUNTS] = share.amounts;
	v[TRANSIT_AMOUNT] = Int64GetDatum(share.total);
	v[TRANSIT_CREATED_AT] = TimestampTzGetDatum(out->now);
	ledger_bulk_add_row(out->transit, slot);
}

/*
 * Log, for another bucket of this node, the credit legs of an event for the
 * payees that bucket holds: a credit event of the log, under the batch's
 * transaction, which that bucket's worker reads once the batch commits.
 */
static void
queue_credit(BatchOutput *out, QueuedEvent *ev, AccountState **payees,
			 int first, bool *done)
{
	int			bucket = payees[first]->bucket;
	CreditShare share = gather_credit(ev, payees, first, done);
	TupleTableSlot *slot = ledger_bulk_next_slot(out->credits);
	Datum	   *v = slot->tts_values;
	bool	   *isnull = slot->tts_isnull;

	memset(isnull, true, sizeof(bool) * LOG_NATTS);
	v[LOG_ID] = Int64GetDatum(nextval_internal(event_seq_oid, false));
	v[LOG_KIND] = CharGetDatum(LEDGER_CREDIT);
	v[LOG_ACCOUNT_ID] = Int64GetDatum(ev->account_id);
	v[LOG_AMOUNT] = Int64GetDatum(share.total);
	v[LOG_TO_ACCOUNTS] = share.to_accounts;
	v[LOG_AMOUNTS] = share.amounts;
	v[LOG_ENQUEUED_AT] = TimestampTzGetDatum(out->now);
	v[LOG_BUCKET] = Int32GetDatum(bucket);
	v[LOG_TXID] = out->txid;
	v[LOG_CREDIT_OF] = Int64GetDatum(ev->id);
	isnull[LOG_ID] = isnull[LOG_KIND] = isnull[LOG_ACCOUNT_ID] = false;
	isnull[LOG_AMOUNT] = isnull[LOG_TO_ACCOUNTS] = isnull[LOG_AMOUNTS] = false;
	isnull[LOG_ENQUEUED_AT] = isnull[LOG_BUCKET] = isnull[LOG_TXID] = false;
	isnull[LOG_CREDIT_OF] = false;
	ledger_bulk_add_row(out->credits, slot);

	ledger_wake_at_commit(bucket);
}

/* Record how a hold ended: posted (with the post), voided, or expired. */
static void
end_hold(BatchOutput *out, HoldState *hold, char status, int64 event_id,
		 int64 posted)
{
	TupleTableSlot *slot = ledger_bulk_next_slot(out->hold_ends);
	Datum	   *v = slot->tts_values;
	AccountState *payer = ledger_find_account(hold->account_id);

	memset(slot->tts_isnull, false, sizeof(bool) * HOLD_ENDS_NATTS);
	v[HOLD_ENDS_HOLD_ID] = Int64GetDatum(hold->id);
	v[HOLD_ENDS_ACCOUNT_ID] = Int64GetDatum(hold->account_id);
	v[HOLD_ENDS_STATUS] = CharGetDatum(status);
	v[HOLD_ENDS_EVENT_ID] = Int64GetDatum(event_id);
	slot->tts_isnull[HOLD_ENDS_EVENT_ID] = event_id == 0;
	v[HOLD_ENDS_AMOUNT] = Int64GetDatum(posted);
	v[HOLD_ENDS_ENDED_AT] = TimestampTzGetDatum(out->now);
	ledger_bulk_add_row(out->hold_ends, slot);

	/*
	 * The payer was loaded with the batch's accounts, or by expire_holds();
	 * only a database restored in pieces could lack it.
	 */
	if (payer != NULL && payer->owned)
		ledger_account_set(payer, payer->balance, payer->held - hold->amount);
	ledger_hold_ended(hold, status);
}

/*
 * Deposit or withdrawal: the account against its bucket's external account
 * in its currency.
 */
static const char *
apply_external(BatchOutput *out, QueuedEvent *ev)
{
	AccountState *acct = ledger_find_account(ev->account_id);
	AccountState *external;
	AccountState *from;
	AccountState *to;
	const char *reason = NULL;

	if (acct == NULL || !acct->owned)
		return "unknown_account";
	external = ledger_find_account(LEDGER_EXTERNAL_ACCOUNT(acct->bucket, acct->currency));
	if (external == NULL)
		elog(ERROR, "the external account of bucket %d for currency %d does not exist",
			 acct->bucket, acct->currency);
	from = ev->kind == LEDGER_DEPOSIT ? external : acct;
	to = ev->kind == LEDGER_DEPOSIT ? acct : external;
	if (!ledger_can_debit(from, ev->amount, out->now, &reason) ||
		!ledger_can_credit(to, ev->amount, &reason))
		return reason;

	post_leg(out, from, ev->id, -ev->amount);
	post_leg(out, to, ev->id, ev->amount);
	return NULL;
}

/*
 * Pay the payees of an event from its payer, already checked: credit the
 * payees this worker owns, and queue credit entries for the payees of other
 * buckets.
 */
static void
pay(BatchOutput *out, QueuedEvent *ev, AccountState *payer,
	AccountState **payees)
{
	bool	   *done = palloc(sizeof(bool) * ev->npayees);
	int			p;

	post_leg(out, payer, ev->id, -ev->amount);
	for (p = 0; p < ev->npayees; p++)
	{
		done[p] = payees[p]->owned;
		if (done[p])
			post_leg(out, payees[p], ev->id, ev->amounts[p]);
	}
	for (p = 0; p < ev->npayees; p++)
	{
		if (done[p])
			continue;
		if (payees[p]->node != 0)
			send_credit(out, ev, payees, p, done);
		else
			queue_credit(out, ev, payees, p, done);
	}
}

/*
 * Find the payees of an event in the cache, and check the ones this worker
 * owns can take their amounts.  NULL when they can; else the reason.
 */
static const char *
find_payees(QueuedEvent *ev, AccountState **payees)
{
	const char *reason = NULL;
	int			p;

	for (p = 0; p < ev->npayees; p++)
	{
		payees[p] = ledger_find_account(ev->payees[p]);
		if (payees[p] == NULL)
			return "unknown_account";
		if (payees[p]->owned && !ledger_can_credit(payees[p], ev->amounts[p], &reason))
			return reason;
	}
	return NULL;
}

/*
 * Transfer or disbursement: debit the payer, credit the payees.  All of it
 * or none.
 */
static const char *
apply_payment(BatchOutput *out, QueuedEvent *ev)
{
	AccountState *payer = ledger_find_account(ev->account_id);
	AccountState **payees = palloc(sizeof(AccountState *) * ev->npayees);
	const char *reason = NULL;

	if (payer == NULL || !payer->owned)
		return "unknown_account";
	if (!ledger_can_debit(payer, ev->amount, out->now, &reason))
		return reason;
	if ((reason = find_payees(ev, payees)) != NULL)
		return reason;

	pay(out, ev, payer, payees);
	return NULL;
}

/*
 * Hold: reserve the amount out of the payer's available balance, under the
 * same checks as a debit.  No money moves.
 */
static const char *
apply_hold(BatchOutput *out, QueuedEvent *ev)
{
	AccountState *payer = ledger_find_account(ev->account_id);
	const char *reason = NULL;
	int64		held = 0;

	if (payer == NULL || !payer->owned || ledger_find_account(ev->payees[0]) == NULL)
		reason = "unknown_account";
	else if (ev->expires_at != 0 && ev->expires_at <= out->now)
		reason = "hold_expired";
	else if (!ledger_can_debit(payer, ev->amount, out->now, &reason))
		;
	else if (pg_add_s64_overflow(payer->held, ev->amount, &held))
		reason = "overflow";

	if (reason != NULL)
	{
		/* remembered, so that a post of it in this batch says why it fails */
		ledger_hold_add(ev->id, ev->account_id, ev->payees[0], ev->amount,
						ev->expires_at, LEDGER_HOLD_REJECTED);
		return reason;
	}
	ledger_account_set(payer, payer->balance, held);
	ledger_hold_add(ev->id, ev->account_id, ev->payees[0], ev->amount,
					ev->expires_at, LEDGER_HOLD_OPEN);
	return NULL;
}

/* Why a hold that is not open (any more) cannot be posted or voided. */
static const char *
hold_gone_reason(int64 hold_id)
{
	HoldState  *hold = ledger_hold_find(hold_id);

	if (hold == NULL)
		return ledger_hold_gone_reason(hold_id);
	return ledger_hold_end_reason(hold->state);
}

/*
 * The open hold a post or void names, or NULL with *reason set.  A hold
 * past its timeout is expired here, before its next expiry pass would.
 */
static HoldState *
open_hold(BatchOutput *out, QueuedEvent *ev, const char **reason)
{
	HoldState  *hold = ledger_hold_find(ev->hold_id);

	if (hold == NULL || hold->state != LEDGER_HOLD_OPEN)
	{
		*reason = hold_gone_reason(ev->hold_id);
		return NULL;
	}
	if (hold->expires_at != 0 && hold->expires_at <= out->now)
	{
		end_hold(out, hold, LEDGER_HOLD_EXPIRED, 0, 0);
		*reason = "hold_expired";
		return NULL;
	}
	return hold;
}

/*
 * Post: pay the hold's payee the amount asked for (0: all of it) out of the
 * hold, and release the rest.  The money was reserved when the hold was
 * applied, so limits are not checked again.
 */
static const char *
apply_post(BatchOutput *out, QueuedEvent *ev)
{
	AccountState *payer;
	AccountState *payee;
	HoldState  *hold;
	const char *reason = NULL;
	int64		result;

	if ((hold = open_hold(out, ev, &reason)) == NULL)
		return reason;
	if (ev->amount == 0)
		ev->amount = hold->amount;
	else if (ev->amount > hold->amount)
		return "exceeds_hold";
	ev->amounts[0] = ev->amount;

	payer = ledger_find_account(hold->account_id);
	if (payer == NULL || !payer->owned)
		return "unknown_account";
	if (pg_sub_s64_overflow(payer->balance, ev->amount, &result))
		return "overflow";
	if ((reason = find_payees(ev, &payee)) != NULL)
		return reason;

	end_hold(out, hold, LEDGER_HOLD_POSTED, ev->id, ev->amount);
	pay(out, ev, payer, &payee);
	return NULL;
}

/* Void: release the hold. */
static const char *
apply_void(BatchOutput *out, QueuedEvent *ev)
{
	HoldState  *hold;
	const char *reason = NULL;

	if ((hold = open_hold(out, ev, &reason)) == NULL)
		return reason;
	end_hold(out, hold, LEDGER_HOLD_VOIDED, ev->id, 0);
	return NULL;
}

/* Expire the open holds of the worker whose timeout has passed. */
static int
expire_holds(BatchOutput *out)
{
	int			ndue;
	HoldState **due = ledger_holds_due(out->now, &ndue);
	int64	   *payers = palloc(sizeof(int64) * Max(ndue, 1));
	int			i;

	for (i = 0; i < ndue; i++)
		payers[i] = due[i]->account_id;
	if (ndue > 0)
		ledger_load_accounts(payers, ndue, my_worker, cluster_mode, out->now);
	for (i = 0; i < ndue; i++)
		end_hold(out, due[i], LEDGER_HOLD_EXPIRED, 0, 0);
	return ndue;
}

/*
 * A credit queued by another bucket: its debit is posted, so it cannot be
 * rejected, and it cannot overflow its payees either, as long as the supply
 * bound held (accounts.c).  A ledger that was over it before 1.5 could hold
 * a balance a credit would overflow: that credit then stays queued (its
 * event pending, its money counted in flight by ledger_verify()) until the
 * payee's balance leaves room for it, reported once.
 */
static bool
apply_credit(BatchOutput *out, QueuedEvent *ev)
{
	const char *reason = NULL;
	int			p;

	for (p = 0; p < ev->npayees; p++)
	{
		AccountState *payee = ledger_find_account(ev->payees[p]);

		if (payee == NULL || !payee->owned ||
			!ledger_can_credit(payee, ev->amounts[p], &reason))
		{
			bool		reported;

			if (reported_credits == NULL)
				reported_credits = ledger_hash_create("ledger credits held back", 16,
													  sizeof(int64), sizeof(int64),
													  TopMemoryContext);
			(void) hash_search(reported_credits, &ev->row_id, HASH_ENTER, &reported);
			if (!reported)
				ereport(WARNING,
						(errmsg("ledger: credit of event " INT64_FORMAT " to account " INT64_FORMAT " is held back",
								ev->id, ev->payees[p]),
						 errdetail("Crediting " INT64_FORMAT " would overflow the account's balance.",
								   ev->amounts[p]),
						 errhint("It is posted once the balance leaves room for it; ledger_health() lists it meanwhile.")));
			return false;
		}
	}
	for (p = 0; p < ev->npayees; p++)
		post_leg(out, ledger_find_account(ev->payees[p]), ev->id, ev->amounts[p]);
	record_outcome(out, ev, NULL);
	if (reported_credits)
		(void) hash_search(reported_credits, &ev->row_id, HASH_REMOVE, NULL);
	return true;
}

/* Waiting for credits */

/* The accounts whose events wait in this batch: their later ones wait too. */
typedef struct Waiting
{
	HTAB	   *accounts;
} Waiting;

static bool
names_waiting_account(Waiting *w, QueuedEvent *ev)
{
	int			p;

	if (w->accounts == NULL)
		return false;
	if (hash_search(w->accounts, &ev->account_id, HASH_FIND, NULL))
		return true;
	for (p = 0; p < ev->npayees; p++)
		if (hash_search(w->accounts, &ev->payees[p], HASH_FIND, NULL))
			return true;
	return false;
}

static void
wait_accounts_of(Waiting *w, QueuedEvent *ev)
{
	int			p;

	if (w->accounts == NULL)
		w->accounts = ledger_hash_create("ledger accounts waiting", 16, sizeof(int64),
										 sizeof(int64), CurrentMemoryContext);
	(void) hash_search(w->accounts, &ev->account_id, HASH_ENTER, NULL);
	for (p = 0; p < ev->npayees; p++)
		(void) hash_search(w->accounts, &ev->payees[p], HASH_ENTER, NULL);
}

/*
 * Must this event wait for credits still on their way?  Only a debit whose
 * transaction logged, before it, a credit of its payer from another bucket
 * (waits_from, see order.c), and only while it would be refused for want
 * of money: a debit that can be paid now could be paid with those credits
 * too, so deciding it now decides it as id order would.  It then waits
 * while an event of its transaction from waits_from on that credits its
 * payer from another bucket is pending there, or its credit is pending
 * here.  Each wait is for an event of the same transaction and a smaller
 * id, or for a credit, which never waits, and an event left for later
 * holds back only later events of its bucket: so waits cannot form a
 * cycle.  An event decided before 1.6 has no transaction id or bucket
 * logged: its pending credits from waits_from on are waited for, as 1.5
 * did.
 */
static bool
awaits_credit(BucketState *b, QueuedEvent *ev, TimestampTz now)
{
	Oid			argtypes[5] = {INT8OID, INT8OID, XID8OID, INT4OID, INT8OID};
	Datum		args[5];
	AccountState *payer;
	const char *reason = NULL;

	if (ev->waits_from == 0)
		return false;
	payer = ledger_find_account(ev->account_id);
	if (payer == NULL || !payer->owned ||
		ledger_can_debit(payer, ev->amount, now, &reason) ||
		!(strcmp(reason, "insufficient_funds") == 0 ||
		  strcmp(reason, "overdraft_limit") == 0 ||
		  strcmp(reason, "supply_limit") == 0))
		return false;

	ledger_prepare_plan(&awaited_plan,
						"SELECT 1 FROM ledger.event_log e"
						" WHERE e.id >= $1 AND e.id < $2"
						"   AND (e.txid = $3 OR e.txid IS NULL)"
						"   AND (e.bucket <> $4 OR e.bucket IS NULL)"
						"   AND e.credit_of IS NULL AND e.kind <> 'h'"
						"   AND ($5 = e.to_account OR $5 = ANY (e.to_accounts))"
						"   AND (ledger.row_state(e) = 'p'"
						"        OR EXISTS (SELECT FROM ledger.event_log c"
						"                    WHERE c.credit_of = e.id AND c.bucket = $4"
						"                      AND ledger.row_state(c) = 'p'))"
						" LIMIT 1",
						5, argtypes);
	args[0] = Int64GetDatum(ev->waits_from);
	args[1] = Int64GetDatum(ev->id);
	args[2] = ev->txid;
	args[3] = Int32GetDatum(b->bucket);
	args[4] = Int64GetDatum(ev->account_id);
	if (SPI_execute_plan(awaited_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for the credits event " INT64_FORMAT " waits for",
			 ev->id);
	return SPI_processed > 0;
}

/* Record the new totals of the accounts whose open holds changed. */
static void
write_held(BatchOutput *out)
{
	int			n;
	AccountState **changed = ledger_accounts_held_changed(&n);
	BulkInsert *bulk;
	int			i;

	if (n == 0)
		return;
	bulk = ledger_bulk_begin(account_holds_oid);
	for (i = 0; i < n; i++)
	{
		TupleTableSlot *slot = ledger_bulk_next_slot(bulk);
		Datum	   *v = slot->tts_values;

		memset(slot->tts_isnull, false, sizeof(bool) * ACCOUNT_HOLDS_NATTS);
		v[ACCOUNT_HOLDS_ACCOUNT_ID] = Int64GetDatum(changed[i]->id);
		v[ACCOUNT_HOLDS_ID] = Int64GetDatum(nextval_internal(transaction_seq_oid, false));
		v[ACCOUNT_HOLDS_HELD] = Int64GetDatum(changed[i]->held);
		v[ACCOUNT_HOLDS_CHANGED_AT] = TimestampTzGetDatum(out->now);
		ledger_bulk_add_row(bulk, slot);
	}
	ledger_bulk_end(bulk);
}

/* The active snapshot, as a pg_snapshot. */
static Datum
current_snapshot(void)
{
	LOCAL_FCINFO(fcinfo, 0);

	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	return pg_current_snapshot(fcinfo);
}

/* Write the batch's own row: its delta, how far it got, what it did. */
static void
write_batch(BatchOutput *out, BucketState *b, bool delta_done,
			LedgerBatchCounts *counts)
{
	BulkInsert *bulk = ledger_bulk_begin(batches_oid);
	TupleTableSlot *slot = ledger_bulk_next_slot(bulk);
	Datum	   *v = slot->tts_values;

	memset(slot->tts_isnull, false, sizeof(bool) * BATCHES_NATTS);
	v[BATCHES_BUCKET] = Int32GetDatum(b->bucket);
	v[BATCHES_ID] = Int64GetDatum(out->batch_id);
	v[BATCHES_PREV] = b->prev;
	v[BATCHES_CUR] = b->cur;
	v[BATCHES_CUR_XMAX] = DirectFunctionCall1(pg_snapshot_xmax, b->cur);
	v[BATCHES_CURSOR_TXID] = b->cursor_txid;
	v[BATCHES_CURSOR_ID] = Int64GetDatum(b->cursor_id);
	slot->tts_isnull[BATCHES_CURSOR_TXID] = delta_done;
	slot->tts_isnull[BATCHES_CURSOR_ID] = delta_done;
	v[BATCHES_DECIDED_AT] = TimestampTzGetDatum(out->now);
	v[BATCHES_APPLIED] = Int32GetDatum(counts->applied + counts->credits);
	v[BATCHES_REJECTED] = Int32GetDatum(counts->rejected);
	ledger_bulk_add_row(bulk, slot);
	ledger_bulk_end(bulk);
}

/* The delta is done: the next starts from its snapshot. */
static void
end_delta(BucketState *b)
{
	free_datum(&b->prev);
	b->prev = b->cur;
	b->cur = (Datum) 0;
	b->cursor_txid = (Datum) 0;
	b->cursor_id = 0;
}

/*
 * Apply a batch of the index'th bucket this worker serves, in the current
 * transaction: the events it left for later, then up to batch_size more of
 * its delta (a new delta starts with this batch's snapshot when the last is
 * done), in (txid, id) order; count what was done; expire the worker's holds
 * whose time has come.  Must be called inside SPI, with the transaction's
 * snapshot active, after ledger_apply_ready() said yes.
 */
void
ledger_apply_batch(int index, int batch_size, LedgerBatchCounts *counts)
{
	BucketState *b = &served_buckets[index];
	QueuedEvent *events;
	BatchOutput out;
	Waiting		waiting = {0};
	bool		more;
	int			nevents;
	int			nwaiting;
	int			e;

	if (b->cur == (Datum) 0)
		b->cur = copy_datum(current_snapshot(), -1, false);
	nwaiting = b->ndeferred;
	events = fetch_batch(b, batch_size, &nevents, &more);
	counts->full = more;
	/* after the read, so that no event is applied before it was enqueued */
	out.now = GetCurrentTimestamp();
	if (nevents == 0 && !(index == 0 && ledger_holds_any_due(out.now)))
	{
		/* an empty delta: nothing to say, the next starts where it ended */
		end_delta(b);
		return;
	}

	load_accounts(events, nevents, out.now);

	out.batch_id = nextval_internal(batch_seq_oid, false);
	out.txid = FullTransactionIdGetDatum(GetTopFullTransactionId());
	out.legs = ledger_bulk_begin(transactions_oid);
	out.credits = ledger_bulk_begin(event_log_oid);
	out.breakpoints = ledger_bulk_begin(breakpoints_oid);
	out.hold_ends = ledger_bulk_begin(hold_ends_oid);
	out.transit = cluster_mode ? ledger_bulk_begin(transit_oid) : NULL;
	out.outcomes = ledger_bulk_begin(outcomes_oid);
	out.deferred = ledger_bulk_begin(deferred_oid);

	/* the worker's first bucket expires the holds of all of them */
	if (index == 0)
		counts->expired = expire_holds(&out);

	/* those still waiting after this batch are listed again */
	b->ndeferred = 0;
	counts->read = nevents;
	for (e = 0; e < nevents; e++)
	{
		QueuedEvent *ev = &events[e];
		const char *reason;

		if (ev->kind == LEDGER_CREDIT)
		{
			/* credits never wait: the events waiting wait for them */
			if (apply_credit(&out, ev))
				counts->credits++;
			else
			{
				record_deferral(&out, b, ev);
				counts->deferred++;
			}
			continue;
		}
		if (names_waiting_account(&waiting, ev) || awaits_credit(b, ev, out.now))
		{
			wait_accounts_of(&waiting, ev);
			record_deferral(&out, b, ev);
			counts->deferred++;
			continue;
		}

		switch (ev->kind)
		{
			case LEDGER_DEPOSIT:
			case LEDGER_WITHDRAW:
				reason = apply_external(&out, ev);
				break;
			case LEDGER_TRANSFER:
			case LEDGER_DISBURSE:
				reason = apply_payment(&out, ev);
				break;
			case LEDGER_HOLD:
				reason = apply_hold(&out, ev);
				break;
			case LEDGER_POST:
				reason = apply_post(&out, ev);
				break;
			case LEDGER_VOID:
				reason = apply_void(&out, ev);
				break;
			default:
				elog(ERROR, "event " INT64_FORMAT " has unknown kind '%c'",
					 ev->id, ev->kind);
		}
		record_outcome(&out, ev, reason);
		if (reason)
			counts->rejected++;
		else
			counts->applied++;
	}

	ledger_bulk_end(out.legs);
	ledger_bulk_end(out.credits);
	ledger_bulk_end(out.breakpoints);
	ledger_bulk_end(out.hold_ends);
	if (out.transit)
		ledger_bulk_end(out.transit);
	ledger_bulk_end(out.outcomes);
	ledger_bulk_end(out.deferred);
	write_held(&out);
	ledger_holds_end_batch();

	/* a batch that read new events, or decided any, says so */
	if (nevents > nwaiting || counts->deferred < nevents)
		write_batch(&out, b, !more, counts);
	if (!more)
		end_delta(b);
}
