/*-------------------------------------------------------------------------
 *
 * apply.c
 *	  Applying one batch of a bucket's queued events.
 *
 * A batch is applied in the worker's current transaction.  One statement
 * reads the oldest queued events of the bucket, another loads the accounts
 * this worker has not seen yet; then the events are decided here, in C, one
 * at a time in queue order, because each depends on the balances the
 * previous ones left.  The outcome is written straight to the heap (bulk.c): the
 * events' rows, their legs, credits for other buckets and breakpoints, and
 * the applied entries deleted from the queue.
 *
 * Balances come from a cache of account state kept across batches.  It can
 * be trusted because every leg of an account is written by the worker of the
 * account's bucket, that is by this process: debits and same-bucket credits
 * while applying the paying event, cross-bucket credits while applying the
 * credit entries other buckets queued here.  If a batch fails the worker
 * exits, and with it the cache.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/sequence.h"
#include "common/int.h"
#include "executor/spi.h"
#include "storage/itemptr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "ledger.h"

/*
 * The columns of the tables a batch writes, in order: rows are built for
 * them column by column.  Checked against the catalog once per
 * installation, so that a library and a schema that disagree stop the
 * worker instead of writing garbage.
 */
enum
{
	QUEUE_BUCKET, QUEUE_SEQ, QUEUE_ID, QUEUE_KIND, QUEUE_ACCOUNT_ID,
	QUEUE_TO_ACCOUNT, QUEUE_AMOUNT, QUEUE_TO_ACCOUNTS, QUEUE_AMOUNTS,
	QUEUE_ENQUEUED_AT, QUEUE_NATTS
};
static const char *const queue_columns[] = {
	"bucket", "seq", "id", "kind", "account_id", "to_account", "amount",
	"to_accounts", "amounts", "enqueued_at"
};

enum
{
	EVENTS_ID, EVENTS_KIND, EVENTS_ACCOUNT_ID, EVENTS_TO_ACCOUNT, EVENTS_AMOUNT,
	EVENTS_TO_ACCOUNTS, EVENTS_AMOUNTS, EVENTS_STATUS, EVENTS_REASON,
	EVENTS_ENQUEUED_AT, EVENTS_APPLIED_AT, EVENTS_NATTS
};
static const char *const events_columns[] = {
	"id", "kind", "account_id", "to_account", "amount", "to_accounts",
	"amounts", "status", "reason", "enqueued_at", "applied_at"
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

/* What this worker knows of an account. */
typedef struct AccountState
{
	int64		id;				/* hash key */
	int32		bucket;
	bool		allow_negative;
	bool		owned;			/* its legs are ours to post; the rest is valid */
	int64		balance;
	int64		last_txn_id;	/* its newest leg, or 0 */
	int64		bp_balance;		/* balance at its newest breakpoint */
	int64		bp_first_txn_id;	/* first leg id the next breakpoint covers */
	int32		legs_since_bp;
} AccountState;

/* A queued event, as read from ledger.queue. */
typedef struct QueuedEvent
{
	ItemPointerData ctid;
	int64		seq;
	int64		id;
	char		kind;
	int64		account_id;
	int64		amount;
	int			npayees;		/* transfers, disbursements and credits */
	int64	   *payees;
	int64	   *amounts;
	/* the queue row's columns, copied as they are into ledger.events */
	Datum		row[QUEUE_NATTS];
	bool		row_isnull[QUEUE_NATTS];
} QueuedEvent;

/* Where a batch's rows go. */
typedef struct BatchOutput
{
	BulkInsert *events;
	BulkInsert *legs;
	BulkInsert *credits;
	BulkInsert *breakpoints;
	ItemPointerData *done;		/* queue entries to delete */
	int			ndone;
	TimestampTz now;
} BatchOutput;

static HTAB *account_cache = NULL;
static Oid	ledger_extension_oid = InvalidOid;
static Oid	transaction_seq_oid = InvalidOid;
static Oid	event_seq_oid = InvalidOid;
static Oid	queue_oid = InvalidOid;
static Oid	events_oid = InvalidOid;
static Oid	transactions_oid = InvalidOid;
static Oid	breakpoints_oid = InvalidOid;
static int	my_worker = -1;

/* The buckets this worker serves: its own, and any left from a larger setting. */
typedef struct BucketState
{
	int			bucket;
	int			nheld;			/* credits held back by the last batch */
} BucketState;

static BucketState served_buckets[LEDGER_MAX_BUCKETS * 4];
static int	nserved_buckets = 0;

static SPIPlanPtr fetch_plan = NULL;
static SPIPlanPtr load_plan = NULL;

static void
free_plan(SPIPlanPtr *plan)
{
	if (*plan)
		SPI_freeplan(*plan);
	*plan = NULL;
}

/*
 * Forget everything cached about the extension's objects: called when the
 * extension was dropped or created again.
 */
void
ledger_apply_reset(void)
{
	if (account_cache)
		hash_destroy(account_cache);
	account_cache = NULL;
	ledger_bulk_reset();
	transaction_seq_oid = InvalidOid;
	ledger_extension_oid = InvalidOid;
	free_plan(&fetch_plan);
	free_plan(&load_plan);
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
 * Find the buckets this worker serves, and make sure each has its external
 * account.  Buckets numbered ledger.buckets or more hold accounts opened
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

	nserved_buckets = (int) SPI_processed;
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		memset(&served_buckets[i], 0, sizeof(BucketState));
		served_buckets[i].bucket = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
															   SPI_tuptable->tupdesc,
															   1, &isnull));
	}

	for (i = 0; i < nserved_buckets; i++)
	{
		args[0] = Int32GetDatum(served_buckets[i].bucket);
		if (SPI_execute_with_args("INSERT INTO ledger.accounts (id, allow_negative, bucket)"
								  " VALUES (-1 - $1::bigint, true, $1)"
								  " ON CONFLICT (id) DO NOTHING",
								  1, argtypes, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not create the external account of bucket %d",
				 served_buckets[i].bucket);
	}
}

/*
 * Is the extension installed in this database?  If so, return how many
 * buckets this worker serves.  Resets the cache when the extension is not
 * the installation seen last.  Called inside SPI, in a transaction.
 */
bool
ledger_apply_ready(int worker, int *nbuckets)
{
	Oid			extension_oid = get_extension_oid("ledger", true);

	my_worker = worker;
	if (extension_oid != ledger_extension_oid)
		ledger_apply_reset();
	if (!OidIsValid(extension_oid))
		return false;

	if (account_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(AccountState);
		ctl.hcxt = TopMemoryContext;
		account_cache = hash_create("ledger account cache", 4096, &ctl,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		transaction_seq_oid = ledger_relation("transaction_id_seq", NULL, 0);
		event_seq_oid = ledger_relation("event_id_seq", NULL, 0);
		queue_oid = ledger_relation("queue", queue_columns, QUEUE_NATTS);
		events_oid = ledger_relation("events", events_columns, EVENTS_NATTS);
		transactions_oid = ledger_relation("transactions", transactions_columns,
										   TRANSACTIONS_NATTS);
		breakpoints_oid = ledger_relation("breakpoints", breakpoints_columns,
										  BREAKPOINTS_NATTS);
		setup_buckets();
		ledger_extension_oid = extension_oid;
	}
	*nbuckets = nserved_buckets;
	return true;
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

static QueuedEvent *
fetch_batch(BucketState *b, int batch_size, int *nevents)
{
	Oid			argtypes[2] = {INT4OID, INT4OID};
	Datum		args[2];
	QueuedEvent *events;
	uint64		i;

	ledger_prepare_plan(&fetch_plan,
				 "SELECT q.ctid, q.* FROM ledger.queue q"
				 " WHERE q.bucket = $1"
				 " ORDER BY q.bucket, q.seq"
				 " LIMIT $2",
				 2, argtypes);
	args[0] = Int32GetDatum(b->bucket);
	args[1] = Int32GetDatum(batch_size);
	if (SPI_execute_plan(fetch_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the queue of bucket %d", b->bucket);

	*nevents = (int) SPI_processed;
	events = palloc0(sizeof(QueuedEvent) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		QueuedEvent *ev = &events[i];
		Datum	   *row = ev->row;
		bool	   *isnull = ev->row_isnull;
		bool		ctid_isnull;
		int			col;

		/* column 1 is the ctid, then the queue's own columns */
		ev->ctid = *(ItemPointer) DatumGetPointer(SPI_getbinval(tuple, desc, 1, &ctid_isnull));
		for (col = 0; col < QUEUE_NATTS; col++)
			row[col] = SPI_getbinval(tuple, desc, col + 2, &isnull[col]);

		ev->seq = DatumGetInt64(row[QUEUE_SEQ]);
		ev->id = DatumGetInt64(row[QUEUE_ID]);
		ev->kind = DatumGetChar(row[QUEUE_KIND]);
		ev->account_id = DatumGetInt64(row[QUEUE_ACCOUNT_ID]);
		ev->amount = DatumGetInt64(row[QUEUE_AMOUNT]);

		if (ev->kind == LEDGER_TRANSFER)
		{
			/* a transfer is a disbursement to one payee */
			ev->npayees = 1;
			ev->payees = palloc(sizeof(int64));
			ev->amounts = palloc(sizeof(int64));
			ev->payees[0] = DatumGetInt64(row[QUEUE_TO_ACCOUNT]);
			ev->amounts[0] = ev->amount;
		}
		else if (ev->kind == LEDGER_DISBURSE || ev->kind == LEDGER_CREDIT)
		{
			int			namounts;

			ev->payees = bigint_array_values(row[QUEUE_TO_ACCOUNTS], &ev->npayees);
			ev->amounts = bigint_array_values(row[QUEUE_AMOUNTS], &namounts);
			if (namounts != ev->npayees)
				elog(ERROR, "event " INT64_FORMAT " has %d payees and %d amounts",
					 ev->id, ev->npayees, namounts);
		}
	}
	return events;
}

/* Accounts */

static AccountState *
find_account(int64 account_id)
{
	return hash_search(account_cache, &account_id, HASH_FIND, NULL);
}

static void
want_account(Datum *ids, int *nids, int64 account_id)
{
	if (find_account(account_id) == NULL)
		ids[(*nids)++] = Int64GetDatum(account_id);
}

/*
 * Load into the cache the accounts of the batch that it does not hold yet:
 * their flags, newest leg and newest breakpoint.
 */
static void
load_accounts(QueuedEvent *events, int nevents, int bucket)
{
	Oid			argtype = INT8ARRAYOID;
	Datum		arg;
	Datum	   *ids;
	int			nids = 0;
	int			maxids = 1;
	uint64		i;
	int			e;
	int			p;

	for (e = 0; e < nevents; e++)
		maxids += 1 + events[e].npayees;
	ids = palloc(sizeof(Datum) * maxids);

	want_account(ids, &nids, LEDGER_EXTERNAL_ACCOUNT(bucket));
	for (e = 0; e < nevents; e++)
	{
		want_account(ids, &nids, events[e].account_id);
		for (p = 0; p < events[e].npayees; p++)
			want_account(ids, &nids, events[e].payees[p]);
	}
	if (nids == 0)
		return;

	ledger_prepare_plan(&load_plan,
				 "SELECT a.id, a.bucket, a.allow_negative,"
				 "       t.id, t.balance_after, b.last_txn_id, b.current_balance"
				 "  FROM ledger.accounts a"
				 "  LEFT JOIN LATERAL"
				 "       (SELECT t.id, t.balance_after FROM ledger.transactions t"
				 "         WHERE t.account_id = a.id"
				 "         ORDER BY t.id DESC LIMIT 1) t ON true"
				 "  LEFT JOIN LATERAL"
				 "       (SELECT b.last_txn_id, b.current_balance FROM ledger.breakpoints b"
				 "         WHERE b.account_id = a.id"
				 "         ORDER BY b.last_txn_id DESC LIMIT 1) b ON true"
				 " WHERE a.id = ANY ($1)",
				 1, &argtype);
	arg = PointerGetDatum(construct_array(ids, nids, INT8OID, 8,
										  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_plan(load_plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not load accounts");

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		int64		id;
		AccountState *acct;
		bool		isnull;
		Datum		value;

		id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
		acct = hash_search(account_cache, &id, HASH_ENTER, NULL);
		acct->bucket = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
		acct->allow_negative = DatumGetBool(SPI_getbinval(row, desc, 3, &isnull));
		acct->owned = ledger_worker_of_bucket(acct->bucket) == my_worker;
		value = SPI_getbinval(row, desc, 4, &isnull);
		acct->last_txn_id = isnull ? 0 : DatumGetInt64(value);
		value = SPI_getbinval(row, desc, 5, &isnull);
		acct->balance = isnull ? 0 : DatumGetInt64(value);
		value = SPI_getbinval(row, desc, 6, &isnull);
		acct->bp_first_txn_id = isnull ? 1 : DatumGetInt64(value) + 1;
		value = SPI_getbinval(row, desc, 7, &isnull);
		acct->bp_balance = isnull ? 0 : DatumGetInt64(value);

		/*
		 * Count the legs since the breakpoint from here on: after a restart
		 * the next breakpoint of an account may cover up to twice the
		 * interval, which keeps loading an account to two index probes.
		 */
		acct->legs_since_bp = 0;
	}
}

/* Deciding */

/*
 * Would taking amount from the account leave a valid balance?  Sets *reason
 * when not.
 */
static bool
can_debit(AccountState *acct, int64 amount, const char **reason)
{
	int64		result;

	if (pg_sub_s64_overflow(acct->balance, amount, &result))
	{
		*reason = "overflow";
		return false;
	}
	if (result < 0 && !acct->allow_negative)
	{
		*reason = "insufficient_funds";
		return false;
	}
	return true;
}

static bool
can_credit(AccountState *acct, int64 amount, const char **reason)
{
	int64		result;

	if (pg_add_s64_overflow(acct->balance, amount, &result))
	{
		*reason = "overflow";
		return false;
	}
	return true;
}

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
	acct->balance += amount;
	acct->last_txn_id = nextval_internal(transaction_seq_oid, false);
	acct->legs_since_bp++;

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

/* Move an applied or rejected event from the queue to ledger.events. */
static void
record_outcome(BatchOutput *out, QueuedEvent *ev, const char *reason)
{
	TupleTableSlot *slot = ledger_bulk_next_slot(out->events);
	Datum	   *v = slot->tts_values;
	bool	   *isnull = slot->tts_isnull;

	v[EVENTS_ID] = ev->row[QUEUE_ID];
	v[EVENTS_KIND] = ev->row[QUEUE_KIND];
	v[EVENTS_ACCOUNT_ID] = ev->row[QUEUE_ACCOUNT_ID];
	v[EVENTS_TO_ACCOUNT] = ev->row[QUEUE_TO_ACCOUNT];
	v[EVENTS_AMOUNT] = ev->row[QUEUE_AMOUNT];
	v[EVENTS_TO_ACCOUNTS] = ev->row[QUEUE_TO_ACCOUNTS];
	v[EVENTS_AMOUNTS] = ev->row[QUEUE_AMOUNTS];
	v[EVENTS_STATUS] = CharGetDatum(reason ? LEDGER_REJECTED : LEDGER_APPLIED);
	v[EVENTS_REASON] = reason ? CStringGetTextDatum(reason) : (Datum) 0;
	v[EVENTS_ENQUEUED_AT] = ev->row[QUEUE_ENQUEUED_AT];
	v[EVENTS_APPLIED_AT] = TimestampTzGetDatum(out->now);
	memset(isnull, false, sizeof(bool) * EVENTS_NATTS);
	isnull[EVENTS_TO_ACCOUNT] = ev->row_isnull[QUEUE_TO_ACCOUNT];
	isnull[EVENTS_TO_ACCOUNTS] = ev->row_isnull[QUEUE_TO_ACCOUNTS];
	isnull[EVENTS_AMOUNTS] = ev->row_isnull[QUEUE_AMOUNTS];
	isnull[EVENTS_REASON] = reason == NULL;
	ledger_bulk_add_row(out->events, slot);

	out->done[out->ndone++] = ev->ctid;
}

/*
 * Queue, in another bucket, the credit legs of an event for the payees that
 * bucket holds.  done[] marks the payees already handled.
 */
static void
queue_credit(BatchOutput *out, QueuedEvent *ev, AccountState **payees,
			 int first, bool *done)
{
	int			bucket = payees[first]->bucket;
	TupleTableSlot *slot = ledger_bulk_next_slot(out->credits);
	Datum	   *v = slot->tts_values;
	Datum	   *to = palloc(sizeof(Datum) * (ev->npayees - first));
	Datum	   *amounts = palloc(sizeof(Datum) * (ev->npayees - first));
	int64		total = 0;
	int			n = 0;
	int			p;

	for (p = first; p < ev->npayees; p++)
	{
		if (done[p] || payees[p]->bucket != bucket)
			continue;
		to[n] = Int64GetDatum(ev->payees[p]);
		amounts[n] = Int64GetDatum(ev->amounts[p]);
		total += ev->amounts[p];	/* no overflow: checked at enqueue */
		done[p] = true;
		n++;
	}

	memset(slot->tts_isnull, false, sizeof(bool) * QUEUE_NATTS);
	v[QUEUE_BUCKET] = Int32GetDatum(bucket);
	v[QUEUE_SEQ] = Int64GetDatum(nextval_internal(event_seq_oid, false));
	v[QUEUE_ID] = Int64GetDatum(ev->id);
	v[QUEUE_KIND] = CharGetDatum(LEDGER_CREDIT);
	v[QUEUE_ACCOUNT_ID] = Int64GetDatum(ev->account_id);
	slot->tts_isnull[QUEUE_TO_ACCOUNT] = true;
	v[QUEUE_AMOUNT] = Int64GetDatum(total);
	v[QUEUE_TO_ACCOUNTS] = PointerGetDatum(construct_array(to, n, INT8OID, 8,
														   FLOAT8PASSBYVAL,
														   TYPALIGN_DOUBLE));
	v[QUEUE_AMOUNTS] = PointerGetDatum(construct_array(amounts, n, INT8OID, 8,
													   FLOAT8PASSBYVAL,
													   TYPALIGN_DOUBLE));
	v[QUEUE_ENQUEUED_AT] = TimestampTzGetDatum(out->now);
	ledger_bulk_add_row(out->credits, slot);

	ledger_wake_at_commit(bucket);
}

/*
 * Deposit or withdrawal: the account against its bucket's external account.
 */
static const char *
apply_external(BatchOutput *out, QueuedEvent *ev, AccountState *external)
{
	AccountState *acct = find_account(ev->account_id);
	AccountState *from = ev->kind == LEDGER_DEPOSIT ? external : acct;
	AccountState *to = ev->kind == LEDGER_DEPOSIT ? acct : external;
	const char *reason = NULL;

	if (acct == NULL || !acct->owned)
		return "unknown_account";
	if (!can_debit(from, ev->amount, &reason) ||
		!can_credit(to, ev->amount, &reason))
		return reason;

	post_leg(out, from, ev->id, -ev->amount);
	post_leg(out, to, ev->id, ev->amount);
	return NULL;
}

/*
 * Transfer or disbursement: debit the payer, credit the payees this worker
 * owns, and queue credit entries for the payees of other buckets.  All of
 * it or none.
 */
static const char *
apply_payment(BatchOutput *out, QueuedEvent *ev)
{
	AccountState *payer = find_account(ev->account_id);
	AccountState **payees = palloc(sizeof(AccountState *) * ev->npayees);
	bool	   *done = palloc(sizeof(bool) * ev->npayees);
	const char *reason = NULL;
	int			p;

	if (payer == NULL || !payer->owned)
		return "unknown_account";
	if (!can_debit(payer, ev->amount, &reason))
		return reason;
	for (p = 0; p < ev->npayees; p++)
	{
		payees[p] = find_account(ev->payees[p]);
		if (payees[p] == NULL)
			return "unknown_account";
		if (payees[p]->owned && !can_credit(payees[p], ev->amounts[p], &reason))
			return reason;
	}

	post_leg(out, payer, ev->id, -ev->amount);
	for (p = 0; p < ev->npayees; p++)
	{
		done[p] = payees[p]->owned;
		if (done[p])
			post_leg(out, payees[p], ev->id, ev->amounts[p]);
	}
	for (p = 0; p < ev->npayees; p++)
		if (!done[p])
			queue_credit(out, ev, payees, p, done);
	return NULL;
}

/*
 * A credit queued by another bucket: its debit is posted, so it cannot be
 * rejected.  Only an overflowing balance could stop it; it then stays queued
 * (its event pending, its money counted in flight by ledger_verify()) until
 * the payee's balance leaves room for it.
 */
static bool
apply_credit(BatchOutput *out, QueuedEvent *ev)
{
	const char *reason = NULL;
	int			p;

	for (p = 0; p < ev->npayees; p++)
	{
		AccountState *payee = find_account(ev->payees[p]);

		if (payee == NULL || !payee->owned ||
			!can_credit(payee, ev->amounts[p], &reason))
		{
			ereport(WARNING,
					(errmsg("ledger: credit of event " INT64_FORMAT " to account " INT64_FORMAT " is held back",
							ev->id, ev->payees[p]),
					 errdetail("Crediting " INT64_FORMAT " would overflow the account's balance.",
							   ev->amounts[p])));
			return false;
		}
	}
	for (p = 0; p < ev->npayees; p++)
		post_leg(out, find_account(ev->payees[p]), ev->id, ev->amounts[p]);
	out->done[out->ndone++] = ev->ctid;
	return true;
}

/*
 * Apply up to batch_size of the oldest queued entries of the index'th bucket
 * this worker serves, in seq order, in the current transaction, and count
 * what was done.  Must be called inside SPI, with the transaction's snapshot
 * active, after ledger_apply_ready() said yes.
 */
void
ledger_apply_batch(int index, int batch_size, LedgerBatchCounts *counts)
{
	BucketState *b = &served_buckets[index];
	int			bucket = b->bucket;
	QueuedEvent *events;
	BatchOutput out;
	AccountState *external;
	int			nheld = 0;
	int			nevents;
	int			e;

	/* credits held back are read again: they must not crowd out the rest */
	batch_size += b->nheld;
	events = fetch_batch(b, batch_size, &nevents);
	if (nevents == 0)
	{
		b->nheld = 0;
		return;
	}

	load_accounts(events, nevents, bucket);
	external = find_account(LEDGER_EXTERNAL_ACCOUNT(bucket));
	if (external == NULL)
		elog(ERROR, "external account of bucket %d does not exist", bucket);

	out.events = ledger_bulk_begin(events_oid);
	out.legs = ledger_bulk_begin(transactions_oid);
	out.credits = ledger_bulk_begin(queue_oid);
	out.breakpoints = ledger_bulk_begin(breakpoints_oid);
	out.done = palloc(sizeof(ItemPointerData) * nevents);
	out.ndone = 0;
	/* after the read, so that no event is applied before it was enqueued */
	out.now = GetCurrentTimestamp();

	counts->read = nevents;
	for (e = 0; e < nevents; e++)
	{
		QueuedEvent *ev = &events[e];
		const char *reason;

		switch (ev->kind)
		{
			case LEDGER_DEPOSIT:
			case LEDGER_WITHDRAW:
				reason = apply_external(&out, ev, external);
				record_outcome(&out, ev, reason);
				break;
			case LEDGER_TRANSFER:
			case LEDGER_DISBURSE:
				reason = apply_payment(&out, ev);
				record_outcome(&out, ev, reason);
				break;
			case LEDGER_CREDIT:
				if (apply_credit(&out, ev))
					counts->credits++;
				else
					nheld++;
				continue;
			default:
				elog(ERROR, "event " INT64_FORMAT " has unknown kind '%c'",
					 ev->id, ev->kind);
		}
		if (reason)
			counts->rejected++;
		else
			counts->applied++;
	}

	ledger_bulk_delete(queue_oid, out.done, out.ndone);
	ledger_bulk_end(out.events);
	ledger_bulk_end(out.legs);
	ledger_bulk_end(out.credits);
	ledger_bulk_end(out.breakpoints);

	b->nheld = nheld;
}
