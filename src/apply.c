/*-------------------------------------------------------------------------
 *
 * apply.c
 *	  Applying one batch of a bucket's queued events.
 *
 * A batch is applied in the worker's current transaction with a handful of
 * set-based statements: one reads the oldest queued events of the bucket,
 * one loads the accounts this worker has not seen yet, and four write the
 * outcome (events moved out of the queue, legs, credits for other buckets,
 * breakpoints).  The decisions in between are made here, in C, one event at
 * a time in id order, because each depends on the balances the previous
 * ones left.
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

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/sequence.h"
#include "common/int.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "storage/itemptr.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "ledger.h"

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
	int64		id;
	char		kind;
	int64		account_id;
	int64		amount;
	int			npayees;		/* transfers, disbursements and credits */
	int64	   *payees;
	int64	   *amounts;
} QueuedEvent;

/* A growable column of a batch's output, passed to SQL as an array. */
typedef struct Column
{
	Datum	   *values;
	bool	   *nulls;
	int			n;
	int			size;
} Column;

/* What one batch writes. */
typedef struct BatchOutput
{
	/* outcomes of the events applied or rejected */
	Column		done_ctid;
	Column		event_id;
	Column		event_status;
	Column		event_reason;
	/* legs */
	Column		leg_id;
	Column		leg_account;
	Column		leg_event;
	Column		leg_amount;
	Column		leg_balance;
	/* credit legs for other buckets, one row per payee */
	Column		credit_bucket;
	Column		credit_event;
	Column		credit_payer;
	Column		credit_payee;
	Column		credit_amount;
	/* breakpoints */
	Column		bp_account;
	Column		bp_previous;
	Column		bp_current;
	Column		bp_first;
	Column		bp_last;
} BatchOutput;

static HTAB *account_cache = NULL;
static Oid	ledger_extension_oid = InvalidOid;
static Oid	transaction_seq_oid = InvalidOid;
static int	my_worker = -1;

/* The buckets this worker serves: its own, and any left from a larger setting. */
static int	served_buckets[LEDGER_MAX_BUCKETS * 4];
static int	nserved_buckets = 0;

static SPIPlanPtr fetch_plan = NULL;
static SPIPlanPtr load_plan = NULL;
static SPIPlanPtr done_plan = NULL;
static SPIPlanPtr legs_plan = NULL;
static SPIPlanPtr credits_plan = NULL;
static SPIPlanPtr breakpoints_plan = NULL;

static SPIPlanPtr
prepare_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, argtypes);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s",
				 sql, SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	return *plan;
}

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
	transaction_seq_oid = InvalidOid;
	ledger_extension_oid = InvalidOid;
	free_plan(&fetch_plan);
	free_plan(&load_plan);
	free_plan(&done_plan);
	free_plan(&legs_plan);
	free_plan(&credits_plan);
	free_plan(&breakpoints_plan);
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

		served_buckets[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc,
														1, &isnull));
	}

	for (i = 0; i < nserved_buckets; i++)
	{
		args[0] = Int32GetDatum(served_buckets[i]);
		if (SPI_execute_with_args("INSERT INTO ledger.accounts (id, allow_negative, bucket)"
								  " VALUES (-1 - $1::bigint, true, $1)"
								  " ON CONFLICT (id) DO NOTHING",
								  1, argtypes, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not create the external account of bucket %d",
				 served_buckets[i]);
	}
}

/*
 * Is the extension installed in this database?  If so, return the buckets
 * this worker serves.  Resets the cache when the extension is not the
 * installation seen last.  Called inside SPI, in a transaction.
 */
bool
ledger_apply_ready(int worker, const int **buckets, int *nbuckets)
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
		transaction_seq_oid =
			get_relname_relid("transaction_id_seq",
							  get_namespace_oid("ledger", false));
		if (!OidIsValid(transaction_seq_oid))
			elog(ERROR, "sequence ledger.transaction_id_seq does not exist");
		setup_buckets();
		ledger_extension_oid = extension_oid;
	}
	*buckets = served_buckets;
	*nbuckets = nserved_buckets;
	return true;
}

/* Columns */

static void
column_add(Column *c, Datum value, bool isnull)
{
	if (c->n == c->size)
	{
		c->size = Max(64, c->size * 2);
		if (c->values == NULL)
		{
			c->values = palloc(sizeof(Datum) * c->size);
			c->nulls = palloc(sizeof(bool) * c->size);
		}
		else
		{
			c->values = repalloc(c->values, sizeof(Datum) * c->size);
			c->nulls = repalloc(c->nulls, sizeof(bool) * c->size);
		}
	}
	c->values[c->n] = value;
	c->nulls[c->n] = isnull;
	c->n++;
}

static Datum
column_array(Column *c, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1];
	int			lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	dims[0] = c->n;
	return PointerGetDatum(construct_md_array(c->values, c->nulls, 1, dims, lbs,
											  elemtype, typlen, typbyval,
											  typalign));
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
fetch_batch(int bucket, int batch_size, int *nevents)
{
	Oid			argtypes[2] = {INT4OID, INT4OID};
	Datum		args[2];
	QueuedEvent *events;
	uint64		i;

	prepare_plan(&fetch_plan,
				 "SELECT q.ctid, q.id, q.kind, q.account_id, q.to_account,"
				 "       q.amount, q.to_accounts, q.amounts"
				 "  FROM ledger.queue q"
				 " WHERE q.bucket = $1"
				 " ORDER BY q.id"
				 " LIMIT $2",
				 2, argtypes);
	args[0] = Int32GetDatum(bucket);
	args[1] = Int32GetDatum(batch_size);
	if (SPI_execute_plan(fetch_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the queue of bucket %d", bucket);

	*nevents = (int) SPI_processed;
	events = palloc0(sizeof(QueuedEvent) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		QueuedEvent *ev = &events[i];
		bool		isnull;
		Datum		value;

		ev->ctid = *(ItemPointer) DatumGetPointer(SPI_getbinval(row, desc, 1, &isnull));
		ev->id = DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));
		ev->kind = DatumGetChar(SPI_getbinval(row, desc, 3, &isnull));
		ev->account_id = DatumGetInt64(SPI_getbinval(row, desc, 4, &isnull));
		ev->amount = DatumGetInt64(SPI_getbinval(row, desc, 6, &isnull));

		if (ev->kind == LEDGER_TRANSFER)
		{
			/* a transfer is a disbursement to one payee */
			ev->npayees = 1;
			ev->payees = palloc(sizeof(int64));
			ev->amounts = palloc(sizeof(int64));
			ev->payees[0] = DatumGetInt64(SPI_getbinval(row, desc, 5, &isnull));
			ev->amounts[0] = ev->amount;
		}
		else if (ev->kind == LEDGER_DISBURSE || ev->kind == LEDGER_CREDIT)
		{
			int			namounts;

			value = SPI_getbinval(row, desc, 7, &isnull);
			ev->payees = bigint_array_values(value, &ev->npayees);
			value = SPI_getbinval(row, desc, 8, &isnull);
			ev->amounts = bigint_array_values(value, &namounts);
			if (namounts != ev->npayees)
				elog(ERROR, "event " INT64_FORMAT " has %d payees and %d amounts",
					 ev->id, ev->npayees, namounts);
		}
	}
	return events;
}

/* Accounts */

static void
want_account(Column *ids, int64 account_id)
{
	bool		found;

	(void) hash_search(account_cache, &account_id, HASH_FIND, &found);
	if (!found)
		column_add(ids, Int64GetDatum(account_id), false);
}

/*
 * Load into the cache the accounts of the batch that it does not hold yet:
 * their flags, newest leg and newest breakpoint.
 */
static void
load_accounts(QueuedEvent *events, int nevents, int bucket)
{
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		args[1];
	Column		ids = {0};
	uint64		i;
	int			e;
	int			p;

	want_account(&ids, LEDGER_EXTERNAL_ACCOUNT(bucket));
	for (e = 0; e < nevents; e++)
	{
		want_account(&ids, events[e].account_id);
		for (p = 0; p < events[e].npayees; p++)
			want_account(&ids, events[e].payees[p]);
	}
	if (ids.n == 0)
		return;

	prepare_plan(&load_plan,
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
				 1, argtypes);
	args[0] = column_array(&ids, INT8OID);
	if (SPI_execute_plan(load_plan, args, NULL, false, 0) != SPI_OK_SELECT)
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

static AccountState *
find_account(int64 account_id)
{
	return hash_search(account_cache, &account_id, HASH_FIND, NULL);
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

/* Post one leg, already checked, and a breakpoint when one is due. */
static void
post_leg(BatchOutput *out, AccountState *acct, int64 event_id, int64 amount)
{
	int64		txn_id = nextval_internal(transaction_seq_oid, false);

	Assert(acct->owned);
	acct->balance += amount;
	acct->last_txn_id = txn_id;
	acct->legs_since_bp++;

	column_add(&out->leg_id, Int64GetDatum(txn_id), false);
	column_add(&out->leg_account, Int64GetDatum(acct->id), false);
	column_add(&out->leg_event, Int64GetDatum(event_id), false);
	column_add(&out->leg_amount, Int64GetDatum(amount), false);
	column_add(&out->leg_balance, Int64GetDatum(acct->balance), false);

	if (acct->legs_since_bp >= ledger_breakpoint_interval)
	{
		column_add(&out->bp_account, Int64GetDatum(acct->id), false);
		column_add(&out->bp_previous, Int64GetDatum(acct->bp_balance), false);
		column_add(&out->bp_current, Int64GetDatum(acct->balance), false);
		column_add(&out->bp_first, Int64GetDatum(acct->bp_first_txn_id), false);
		column_add(&out->bp_last, Int64GetDatum(txn_id), false);
		acct->bp_balance = acct->balance;
		acct->bp_first_txn_id = txn_id + 1;
		acct->legs_since_bp = 0;
	}
}

static void
record_outcome(BatchOutput *out, QueuedEvent *ev, const char *reason)
{
	column_add(&out->done_ctid, PointerGetDatum(&ev->ctid), false);
	column_add(&out->event_id, Int64GetDatum(ev->id), false);
	column_add(&out->event_status,
			   CharGetDatum(reason ? LEDGER_REJECTED : LEDGER_APPLIED), false);
	column_add(&out->event_reason,
			   reason ? CStringGetTextDatum(reason) : (Datum) 0, reason == NULL);
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
 * owns, and queue a credit entry for the payees of other buckets.  All of it
 * or none.
 */
static const char *
apply_payment(BatchOutput *out, QueuedEvent *ev)
{
	AccountState *payer = find_account(ev->account_id);
	AccountState **payees = palloc(sizeof(AccountState *) * ev->npayees);
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
		if (payees[p]->owned)
			post_leg(out, payees[p], ev->id, ev->amounts[p]);
		else
		{
			column_add(&out->credit_bucket, Int32GetDatum(payees[p]->bucket), false);
			column_add(&out->credit_event, Int64GetDatum(ev->id), false);
			column_add(&out->credit_payer, Int64GetDatum(ev->account_id), false);
			column_add(&out->credit_payee, Int64GetDatum(ev->payees[p]), false);
			column_add(&out->credit_amount, Int64GetDatum(ev->amounts[p]), false);
			ledger_wake_at_commit(payees[p]->bucket);
		}
	}
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
	column_add(&out->done_ctid, PointerGetDatum(&ev->ctid), false);
	return true;
}

/* Writing */

static void
write_batch(BatchOutput *out)
{
	Datum		args[6];
	Oid			argtypes[6];

	if (out->done_ctid.n > 0)
	{
		argtypes[0] = TIDARRAYOID;
		argtypes[1] = INT8ARRAYOID;
		argtypes[2] = CHARARRAYOID;
		argtypes[3] = TEXTARRAYOID;
		prepare_plan(&done_plan,
					 "WITH done AS ("
					 "  DELETE FROM ledger.queue q WHERE q.ctid = ANY ($1)"
					 "  RETURNING q.*),"
					 " moved AS ("
					 "  INSERT INTO ledger.events (id, kind, account_id, to_account,"
					 "    amount, to_accounts, amounts, status, reason, enqueued_at,"
					 "    applied_at)"
					 "  SELECT d.id, d.kind, d.account_id, d.to_account, d.amount,"
					 "         d.to_accounts, d.amounts, o.status, o.reason,"
					 "         d.enqueued_at, now()"
					 "    FROM done d"
					 "    JOIN unnest($2, $3, $4) AS o(id, status, reason)"
					 "      ON o.id = d.id AND d.kind <> 'c'"
					 "  RETURNING 1)"
					 "SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM moved)",
					 4, argtypes);
		args[0] = column_array(&out->done_ctid, TIDOID);
		args[1] = column_array(&out->event_id, INT8OID);
		args[2] = column_array(&out->event_status, CHAROID);
		args[3] = column_array(&out->event_reason, TEXTOID);
		if (SPI_execute_plan(done_plan, args, NULL, false, 0) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not move applied events out of the queue");
		else
		{
			bool		isnull;
			int64		deleted = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
															  SPI_tuptable->tupdesc, 1, &isnull));
			int64		moved = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
															SPI_tuptable->tupdesc, 2, &isnull));

			/* the queue changed under us: better to stop than to guess */
			if (deleted != out->done_ctid.n || moved != out->event_id.n)
				elog(ERROR, "ledger queue changed during a batch: %d entries applied, " INT64_FORMAT " removed, %d events, " INT64_FORMAT " recorded",
					 out->done_ctid.n, deleted, out->event_id.n, moved);
		}
	}

	if (out->leg_id.n > 0)
	{
		argtypes[0] = argtypes[1] = argtypes[2] = argtypes[3] = argtypes[4] = INT8ARRAYOID;
		prepare_plan(&legs_plan,
					 "INSERT INTO ledger.transactions (id, account_id, event_id,"
					 "  amount, balance_after, created_at)"
					 " SELECT u.id, u.account_id, u.event_id, u.amount,"
					 "        u.balance_after, now()"
					 "   FROM unnest($1, $2, $3, $4, $5)"
					 "        AS u(id, account_id, event_id, amount, balance_after)",
					 5, argtypes);
		args[0] = column_array(&out->leg_id, INT8OID);
		args[1] = column_array(&out->leg_account, INT8OID);
		args[2] = column_array(&out->leg_event, INT8OID);
		args[3] = column_array(&out->leg_amount, INT8OID);
		args[4] = column_array(&out->leg_balance, INT8OID);
		if (SPI_execute_plan(legs_plan, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not insert legs");
	}

	if (out->credit_event.n > 0)
	{
		argtypes[0] = INT4ARRAYOID;
		argtypes[1] = argtypes[2] = argtypes[3] = argtypes[4] = INT8ARRAYOID;
		prepare_plan(&credits_plan,
					 "INSERT INTO ledger.queue (bucket, id, kind, account_id, amount,"
					 "  to_accounts, amounts, enqueued_at)"
					 " SELECT c.bucket, c.id, 'c', min(c.payer), sum(c.amount),"
					 "        array_agg(c.payee ORDER BY c.ord),"
					 "        array_agg(c.amount ORDER BY c.ord), now()"
					 "   FROM unnest($1, $2, $3, $4, $5) WITH ORDINALITY"
					 "        AS c(bucket, id, payer, payee, amount, ord)"
					 "  GROUP BY c.bucket, c.id",
					 5, argtypes);
		args[0] = column_array(&out->credit_bucket, INT4OID);
		args[1] = column_array(&out->credit_event, INT8OID);
		args[2] = column_array(&out->credit_payer, INT8OID);
		args[3] = column_array(&out->credit_payee, INT8OID);
		args[4] = column_array(&out->credit_amount, INT8OID);
		if (SPI_execute_plan(credits_plan, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not queue credits");
	}

	if (out->bp_account.n > 0)
	{
		argtypes[0] = argtypes[1] = argtypes[2] = argtypes[3] = argtypes[4] = INT8ARRAYOID;
		prepare_plan(&breakpoints_plan,
					 "INSERT INTO ledger.breakpoints (account_id, previous_balance,"
					 "  current_balance, amount_difference, first_txn_id,"
					 "  last_txn_id, created_at)"
					 " SELECT b.account_id, b.previous_balance, b.current_balance,"
					 "        b.current_balance - b.previous_balance,"
					 "        b.first_txn_id, b.last_txn_id, now()"
					 "   FROM unnest($1, $2, $3, $4, $5) AS b(account_id,"
					 "        previous_balance, current_balance, first_txn_id,"
					 "        last_txn_id)",
					 5, argtypes);
		args[0] = column_array(&out->bp_account, INT8OID);
		args[1] = column_array(&out->bp_previous, INT8OID);
		args[2] = column_array(&out->bp_current, INT8OID);
		args[3] = column_array(&out->bp_first, INT8OID);
		args[4] = column_array(&out->bp_last, INT8OID);
		if (SPI_execute_plan(breakpoints_plan, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not insert breakpoints");
	}
}

/*
 * Apply up to batch_size of the bucket's oldest queued events, in id order,
 * in the current transaction.  Returns how many queue entries were read.
 * Must be called inside SPI, after ledger_apply_ready() said yes.
 */
int
ledger_apply_batch(int bucket, int batch_size)
{
	QueuedEvent *events;
	BatchOutput out = {0};
	AccountState *external;
	int			nevents;
	int			e;

	events = fetch_batch(bucket, batch_size, &nevents);
	if (nevents == 0)
		return 0;

	load_accounts(events, nevents, bucket);
	external = find_account(LEDGER_EXTERNAL_ACCOUNT(bucket));
	if (external == NULL)
		elog(ERROR, "external account of bucket %d does not exist", bucket);

	for (e = 0; e < nevents; e++)
	{
		QueuedEvent *ev = &events[e];

		switch (ev->kind)
		{
			case LEDGER_DEPOSIT:
			case LEDGER_WITHDRAW:
				record_outcome(&out, ev, apply_external(&out, ev, external));
				break;
			case LEDGER_TRANSFER:
			case LEDGER_DISBURSE:
				record_outcome(&out, ev, apply_payment(&out, ev));
				break;
			case LEDGER_CREDIT:
				(void) apply_credit(&out, ev);
				break;
			default:
				elog(ERROR, "event " INT64_FORMAT " has unknown kind '%c'",
					 ev->id, ev->kind);
		}
	}

	write_batch(&out);
	return nevents;
}
