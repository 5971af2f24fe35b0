/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  The SQL functions that enqueue money movements.
 *
 * Enqueueing checks everything that depends only on the arguments, on which
 * accounts exist and on who calls, then appends one row to ledger.event_log,
 * the event's permanent record, and returns the new event's id.  It takes
 * no lock beyond the row it inserts: whether the money is there is decided
 * later, in order, by the worker of the paying account's bucket.
 *
 * The functions run as their caller and switch to the extension's owner
 * themselves (caller.c): a debit from an account with an owner role needs
 * the caller to be a member of it, and idempotency keys are the caller's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "common/int.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/xid8.h"

#include "enqueue.h"
#include "bulk.h"
#include "caller.h"
#include "guard.h"
#include "keys.h"
#include "order.h"
#include "wait.h"

/* The sequence event ids are drawn from. */
Oid
ledger_event_id_seq(void)
{
	return get_relname_relid("event_id_seq", get_namespace_oid("ledger", false));
}

/*
 * The request a movement makes, for its idempotency key: its kind, and a
 * digest of each of its parts (see keys.c).  A post names its hold and the
 * amount asked for (0: all of it), a void its hold; a hold's timeout is
 * taken as the interval it spans, so that '1 hour' and '60 minutes' are
 * one request.
 */
void
ledger_movement_request(Movement *m, KeyedRequest *req)
{
	int64	   *accounts = palloc(sizeof(int64) * (m->npayees + 1));
	int			naccounts = 0;
	int64		hold_id = m->hold_id;
	int128		timeout = 0;

	req->key = m->idempotency_key;
	req->kind = m->kind;

	if (m->kind != LEDGER_POST && m->kind != LEDGER_VOID)
	{
		accounts[naccounts++] = m->account_id;
		memcpy(accounts + naccounts, m->payees, sizeof(int64) * m->npayees);
		naccounts += m->npayees;
	}
	ledger_request_part(req, LEDGER_REQUEST_ACCOUNTS, accounts,
						sizeof(int64) * naccounts);

	if (m->kind == LEDGER_DISBURSE)
		ledger_request_part(req, LEDGER_REQUEST_AMOUNTS, m->amounts,
							sizeof(int64) * m->npayees);
	else if (m->kind == LEDGER_VOID)
		ledger_request_part(req, LEDGER_REQUEST_AMOUNTS, NULL, 0);
	else
		ledger_request_part(req, LEDGER_REQUEST_AMOUNTS, &m->amount, sizeof(int64));

	if (m->kind == LEDGER_POST || m->kind == LEDGER_VOID)
		ledger_request_part(req, LEDGER_REQUEST_HOLD, &hold_id, sizeof(int64));
	else if (m->timeout != NULL)
	{
		timeout = ((int128) m->timeout->month * DAYS_PER_MONTH + m->timeout->day) *
			USECS_PER_DAY + m->timeout->time;
		ledger_request_part(req, LEDGER_REQUEST_HOLD, &timeout, sizeof(timeout));
	}
	else
		ledger_request_part(req, LEDGER_REQUEST_HOLD, NULL, 0);

	if (m->metadata != NULL)
		ledger_request_part(req, LEDGER_REQUEST_METADATA, VARDATA(m->metadata),
							VARSIZE(m->metadata) - VARHDRSZ);
	else
		ledger_request_part(req, LEDGER_REQUEST_METADATA, NULL, 0);
}

/*
 * The columns of ledger.event_log an enqueue call writes, and where they are
 * in its rows: found again when the table is not the one last seen.
 */
enum
{
	QUEUE_BUCKET, QUEUE_ID, QUEUE_KIND, QUEUE_ACCOUNT_ID, QUEUE_TO_ACCOUNT,
	QUEUE_AMOUNT, QUEUE_TO_ACCOUNTS, QUEUE_AMOUNTS, QUEUE_ENQUEUED_AT,
	QUEUE_HOLD_ID, QUEUE_EXPIRES_AT, QUEUE_METADATA, QUEUE_WAITS_FROM,
	QUEUE_TXID, QUEUE_LINK_OF, QUEUE_NCOLUMNS
};
static const char *const queue_columns[QUEUE_NCOLUMNS] = {
	"bucket", "id", "kind", "account_id", "to_account", "amount",
	"to_accounts", "amounts", "enqueued_at", "hold_id", "expires_at",
	"metadata", "waits_from", "txid", "link_of"
};

/*
 * Write a movement's row into the log, for its bucket's worker, under this
 * transaction's id.  The columns not written (the outcome, which the worker
 * records elsewhere) are null.
 */
void
ledger_insert_queue_row(Movement *m, int bucket, int64 event_id)
{
	static Oid	log_oid = InvalidOid;
	static AttrNumber attnums[QUEUE_NCOLUMNS];
	Oid			relid = get_relname_relid("event_log",
										  get_namespace_oid("ledger", false));
	Datum		v[QUEUE_NCOLUMNS];
	bool		n[QUEUE_NCOLUMNS];
	bool		listed = m->kind == LEDGER_DISBURSE;

	if (relid != log_oid)
	{
		ledger_column_attnums(relid, queue_columns, QUEUE_NCOLUMNS, attnums);
		log_oid = relid;
	}

	memset(n, false, sizeof(n));
	v[QUEUE_BUCKET] = Int32GetDatum(bucket);
	v[QUEUE_ID] = Int64GetDatum(event_id);
	v[QUEUE_KIND] = CharGetDatum(m->kind);
	v[QUEUE_ACCOUNT_ID] = Int64GetDatum(m->account_id);
	v[QUEUE_TO_ACCOUNT] = Int64GetDatum(m->to_account);
	n[QUEUE_TO_ACCOUNT] = m->to_account == 0;
	v[QUEUE_AMOUNT] = Int64GetDatum(m->amount);
	/* stored with bounds from 1, whatever the caller's were */
	v[QUEUE_TO_ACCOUNTS] = listed ? ledger_int64_array(m->payees, m->npayees) : (Datum) 0;
	n[QUEUE_TO_ACCOUNTS] = !listed;
	v[QUEUE_AMOUNTS] = listed ? ledger_int64_array(m->amounts, m->npayees) : (Datum) 0;
	n[QUEUE_AMOUNTS] = !listed;
	v[QUEUE_ENQUEUED_AT] = TimestampTzGetDatum(GetCurrentStatementStartTimestamp());
	v[QUEUE_HOLD_ID] = Int64GetDatum(m->hold_id);
	n[QUEUE_HOLD_ID] = m->hold_id == 0;
	v[QUEUE_EXPIRES_AT] = TimestampTzGetDatum(m->expires_at);
	n[QUEUE_EXPIRES_AT] = m->expires_at == 0;
	v[QUEUE_METADATA] = PointerGetDatum(m->metadata);
	n[QUEUE_METADATA] = m->metadata == NULL;
	v[QUEUE_WAITS_FROM] = Int64GetDatum(m->waits_from);
	n[QUEUE_WAITS_FROM] = m->waits_from == 0;
	v[QUEUE_TXID] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	v[QUEUE_LINK_OF] = Int64GetDatum(m->link_of);
	n[QUEUE_LINK_OF] = m->link_of == 0;
	ledger_insert_row(relid, attnums, v, n, QUEUE_NCOLUMNS);
}

/* Does a movement of this kind debit its account? */
static bool
is_debit(char kind)
{
	return kind == LEDGER_WITHDRAW || kind == LEDGER_TRANSFER ||
		kind == LEDGER_DISBURSE || kind == LEDGER_HOLD || kind == LEDGER_LINKED;
}

/*
 * Append a movement to its bucket's queue and return its event id, or the id
 * of the earlier event of the same request (its idempotency key).  A new
 * event passes the spam guard first if guarded.  payee_buckets[] gives the
 * bucket of each payee: the ones of other buckets are noted, so that a
 * later event of this transaction debiting them waits for their credit.
 * Called inside SPI.
 */
static int64
enqueue(LedgerCall *call, Movement *m, int bucket, int *payee_buckets,
		bool guarded)
{
	int64		event_id = nextval_internal(ledger_event_id_seq(), false);
	int			element = 0;
	int			p;

	if (m->idempotency_key != NULL)
	{
		KeyedRequest req;

		ledger_movement_request(m, &req);
		if (!ledger_claim_keys(call->caller, &req, &event_id, 1, &element)[0])
			return event_id;
	}
	if (guarded)
		ledger_guard_check(m->account_id, 1);

	if (is_debit(m->kind))
		m->waits_from = ledger_credited_from(m->account_id);
	ledger_insert_queue_row(m, bucket, event_id);

	ledger_guard_add(m->account_id, 1);
	/* a hold's posts and voids are counted under the hold too */
	if (m->kind == LEDGER_POST || m->kind == LEDGER_VOID)
		ledger_guard_add(-m->hold_id, 1);
	/* a hold names its payee, but credits it nothing */
	for (p = 0; p < m->npayees && m->kind != LEDGER_HOLD; p++)
		if (payee_buckets[p] >= 0 && payee_buckets[p] != bucket)
			ledger_note_credit(m->payees[p], event_id);
	ledger_wake_at_commit(bucket);
	return event_id;
}

/*
 * Enqueue a movement of the payer (or account deposited to) m->account_id
 * to its payees: check they exist in one currency, that the caller may
 * debit the payer, then queue it in the payer's bucket.  Its idempotency key
 * and metadata are arguments key_argno and key_argno + 1 of the call.
 */
static int64
enqueue_movement(FunctionCallInfo fcinfo, Movement *m, int key_argno)
{
	LedgerCall	call;
	AccountInfo *info;
	int64	   *ids = palloc(sizeof(int64) * (m->npayees + 1));
	int		   *payee_buckets = palloc(sizeof(int) * Max(m->npayees, 1));
	int			bucket;
	int64		event_id;
	int			p;

	ledger_get_key_and_metadata(fcinfo, key_argno, m);
	ledger_require_schema();
	ledger_call_begin(fcinfo, &call);
	SPI_connect();
	ledger_require_installation();

	ids[0] = m->account_id;
	memcpy(ids + 1, m->payees, sizeof(int64) * m->npayees);
	info = ledger_lookup_accounts(ids, m->npayees + 1);
	(void) ledger_account_bucket(info, m->account_id);
	for (p = 0; p < m->npayees; p++)
		payee_buckets[p] = ledger_account_bucket(info, m->payees[p]);
	for (p = 0; p < m->npayees; p++)
		ledger_check_same_currency(info, m->account_id, m->payees[p]);
	bucket = ledger_payer_bucket(info, m->account_id);
	if (is_debit(m->kind))
		ledger_check_debit(&call, m->account_id,
						   ledger_account_owner(info, m->account_id));

	event_id = enqueue(&call, m, bucket, payee_buckets, true);

	SPI_finish();
	ledger_call_end(&call);
	return event_id;
}

/*
 * The arguments a transfer and a hold share: from_account, to_account and
 * amount, checked.
 */
static void
get_payment(FunctionCallInfo fcinfo, char kind, Movement *m)
{
	ledger_require_arg(fcinfo, 0, "from_account");
	ledger_require_arg(fcinfo, 1, "to_account");
	ledger_require_arg(fcinfo, 2, "amount");
	m->kind = kind;
	m->account_id = PG_GETARG_INT64(0);
	m->to_account = PG_GETARG_INT64(1);
	m->amount = PG_GETARG_INT64(2);
	ledger_check_transfer(m->account_id, m->to_account, m->amount);
	m->npayees = 1;
	m->payees = &m->to_account;
	m->amounts = &m->amount;
}

/* Common to deposit and withdraw. */
static Datum
enqueue_external(FunctionCallInfo fcinfo, char kind)
{
	Movement	m = {0};

	ledger_require_arg(fcinfo, 0, "account_id");
	ledger_require_arg(fcinfo, 1, "amount");
	m.kind = kind;
	m.account_id = PG_GETARG_INT64(0);
	m.amount = PG_GETARG_INT64(1);
	ledger_check_account_id(m.account_id);
	ledger_check_amount(m.amount);

	PG_RETURN_INT64(enqueue_movement(fcinfo, &m, 2));
}

/* ledger_deposit(account_id, amount) - money in from outside the ledger. */
PG_FUNCTION_INFO_V1(ledger_deposit);
Datum
ledger_deposit(PG_FUNCTION_ARGS)
{
	return enqueue_external(fcinfo, LEDGER_DEPOSIT);
}

/* ledger_withdraw(account_id, amount) - money out of the ledger. */
PG_FUNCTION_INFO_V1(ledger_withdraw);
Datum
ledger_withdraw(PG_FUNCTION_ARGS)
{
	return enqueue_external(fcinfo, LEDGER_WITHDRAW);
}

/* ledger_transfer(from_account, to_account, amount) */
PG_FUNCTION_INFO_V1(ledger_transfer);
Datum
ledger_transfer(PG_FUNCTION_ARGS)
{
	Movement	m = {0};

	get_payment(fcinfo, LEDGER_TRANSFER, &m);
	PG_RETURN_INT64(enqueue_movement(fcinfo, &m, 3));
}

/*
 * ledger_disburse(from_account, to_accounts[], amounts[]) - one payer, many
 * payees, applied all or nothing.
 */
PG_FUNCTION_INFO_V1(ledger_disburse);
Datum
ledger_disburse(PG_FUNCTION_ARGS)
{
	Movement	m = {0};
	int64	   *sorted;
	int			namounts;
	int			i;

	ledger_require_arg(fcinfo, 0, "from_account");
	ledger_require_arg(fcinfo, 1, "to_accounts");
	ledger_require_arg(fcinfo, 2, "amounts");
	m.kind = LEDGER_DISBURSE;
	m.account_id = PG_GETARG_INT64(0);
	ledger_check_account_id(m.account_id);

	m.payees = ledger_get_bigint_array(PG_GETARG_ARRAYTYPE_P(1), "to_accounts",
									   &m.npayees);
	m.amounts = ledger_get_bigint_array(PG_GETARG_ARRAYTYPE_P(2), "amounts",
										&namounts);
	if (m.npayees == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a disbursement needs at least one payee")));
	if (m.npayees != namounts)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("to_accounts and amounts must have the same length"),
				 errdetail("to_accounts has %d, amounts has %d.",
						   m.npayees, namounts)));
	if (m.npayees > ledger_max_payees)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many payees: %d", m.npayees),
				 errdetail_plural("A disbursement may pay at most %d account.",
								  "A disbursement may pay at most %d accounts.",
								  ledger_max_payees, ledger_max_payees),
				 errhint("Raise ledger.max_payees, or split the disbursement.")));

	for (i = 0; i < m.npayees; i++)
	{
		ledger_check_account_id(m.payees[i]);
		if (m.payees[i] == m.account_id)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("account " INT64_FORMAT " cannot disburse to itself",
							m.account_id)));
		ledger_check_amount(m.amounts[i]);
		if (pg_add_s64_overflow(m.amount, m.amounts[i], &m.amount))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("disbursement total is out of range for type bigint")));
	}

	sorted = palloc(sizeof(int64) * m.npayees);
	memcpy(sorted, m.payees, sizeof(int64) * m.npayees);
	qsort(sorted, m.npayees, sizeof(int64), ledger_cmp_int64);
	for (i = 1; i < m.npayees; i++)
		if (sorted[i] == sorted[i - 1])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("account " INT64_FORMAT " is listed twice as a payee",
							sorted[i])));

	PG_RETURN_INT64(enqueue_movement(fcinfo, &m, 3));
}

/*
 * ledger_hold(from_account, to_account, amount, timeout) - reserve money of
 * the payer for the payee, until posted, voided, or timed out.
 */
PG_FUNCTION_INFO_V1(ledger_hold);
Datum
ledger_hold(PG_FUNCTION_ARGS)
{
	Movement	m = {0};

	get_payment(fcinfo, LEDGER_HOLD, &m);
	if (!PG_ARGISNULL(3))
	{
		TimestampTz now = GetCurrentStatementStartTimestamp();

		m.timeout = PG_GETARG_INTERVAL_P(3);
		m.expires_at = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
															   TimestampTzGetDatum(now),
															   IntervalPGetDatum(m.timeout)));
		if (m.expires_at <= now || TIMESTAMP_NOT_FINITE(m.expires_at))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("timeout must be a positive interval"),
					 errhint("Pass NULL for a hold without a timeout.")));
	}

	PG_RETURN_INT64(enqueue_movement(fcinfo, &m, 4));
}

/* A hold a post or void names, as enqueueing sees it. */
typedef struct HoldFound
{
	int			bucket;			/* the payer's */
	Oid			owner;			/* the payer's owner role, or InvalidOid */
	int			payee_bucket;	/* -1: not an account of this node */
	bool		ended;			/* rejected, or ended already */
} HoldFound;

/*
 * Find a hold, applied or still queued: fill in its payer and payee, and
 * what else enqueueing a post or void of it needs.  Called inside SPI.
 */
static HoldFound
find_hold(int64 hold_id, Movement *m)
{
	static SPIPlanPtr plan = NULL;
	HoldFound	found;
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	Datum		value;

	if (ledger_execute_by_id(&plan,
							 "SELECT e.account_id, e.to_account, p.bucket, p.owner, r.bucket,"
							 "       EXISTS (SELECT FROM ledger.hold_ends x WHERE x.hold_id = e.id)"
							 "       OR ledger.row_state(e) = 'r'"
							 "  FROM ledger.event_log e"
							 "  JOIN ledger.accounts p ON p.id = e.account_id"
							 "  LEFT JOIN ledger.accounts r ON r.id = e.to_account"
							 " WHERE e.id = $1 AND e.kind = 'h'",
							 hold_id) != SPI_OK_SELECT)
		elog(ERROR, "could not look up hold " INT64_FORMAT, hold_id);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("hold " INT64_FORMAT " does not exist", hold_id),
				 errhint("Pass the event id ledger_hold() returned.")));
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	m->hold_id = hold_id;
	m->account_id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
	m->to_account = DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));
	found.bucket = DatumGetInt32(SPI_getbinval(row, desc, 3, &isnull));
	value = SPI_getbinval(row, desc, 4, &isnull);
	found.owner = isnull ? InvalidOid : DatumGetObjectId(value);
	value = SPI_getbinval(row, desc, 5, &isnull);
	found.payee_bucket = isnull ? -1 : DatumGetInt32(value);
	found.ended = DatumGetBool(SPI_getbinval(row, desc, 6, &isnull));
	return found;
}

/*
 * Post or void the hold the first argument names; a post's second argument
 * is the amount it posts, and the idempotency key and metadata follow from
 * argument key_argno.  Only members of the payer's owner role may.  The spam
 * guard lets through, even past its limit, the one post or void of an open
 * hold that can release it: a hold known to have ended, or one with a post
 * or void pending already, gets no such pass.
 */
static Datum
enqueue_hold_end(FunctionCallInfo fcinfo, char kind, int key_argno)
{
	LedgerCall	call;
	Movement	m = {0};
	HoldFound	hold;
	int64		event_id;
	bool		guarded;

	ledger_require_arg(fcinfo, 0, "hold_id");
	m.kind = kind;
	if (kind == LEDGER_POST && !PG_ARGISNULL(1))
	{
		m.amount = PG_GETARG_INT64(1);
		ledger_check_amount(m.amount);
	}
	ledger_get_key_and_metadata(fcinfo, key_argno, &m);

	ledger_require_schema();
	ledger_call_begin(fcinfo, &call);
	SPI_connect();
	ledger_require_installation();
	hold = find_hold(PG_GETARG_INT64(0), &m);
	ledger_check_debit(&call, m.account_id, hold.owner);
	guarded = hold.ended || ledger_guard_count(-m.hold_id) > 0;
	if (kind == LEDGER_POST)
	{
		/* its payee is credited like a transfer's */
		m.npayees = 1;
		m.payees = &m.to_account;
		m.amounts = &m.amount;
	}
	event_id = enqueue(&call, &m, hold.bucket, &hold.payee_bucket, guarded);
	SPI_finish();
	ledger_call_end(&call);
	PG_RETURN_INT64(event_id);
}

/*
 * ledger_post(hold_id, amount) - move the money of a hold, all of it or the
 * amount given (the rest is released).  Whether the hold is still open, and
 * holds that much, is decided when the post is applied.
 */
PG_FUNCTION_INFO_V1(ledger_post);
Datum
ledger_post(PG_FUNCTION_ARGS)
{
	return enqueue_hold_end(fcinfo, LEDGER_POST, 2);
}

/* ledger_void(hold_id) - release a hold. */
PG_FUNCTION_INFO_V1(ledger_void);
Datum
ledger_void(PG_FUNCTION_ARGS)
{
	return enqueue_hold_end(fcinfo, LEDGER_VOID, 1);
}

/*
 * Close or reopen an account: an event of its bucket, decided in order
 * with the account's other events (see apply_closure() in decide.c).
 * Operators only, by the grants of ledger--1.8--1.9.sql.
 */
static Datum
enqueue_closure(FunctionCallInfo fcinfo, char kind)
{
	Movement	m = {0};

	ledger_require_arg(fcinfo, 0, "account_id");
	m.kind = kind;
	m.account_id = PG_GETARG_INT64(0);
	ledger_check_account_id(m.account_id);

	PG_RETURN_INT64(enqueue_movement(fcinfo, &m, 1));
}

/* ledger_close_account(account_id) - no debit or credit from now on. */
PG_FUNCTION_INFO_V1(ledger_close_account);
Datum
ledger_close_account(PG_FUNCTION_ARGS)
{
	return enqueue_closure(fcinfo, LEDGER_CLOSE);
}

/* ledger_reopen_account(account_id) - undo ledger_close_account(). */
PG_FUNCTION_INFO_V1(ledger_reopen_account);
Datum
ledger_reopen_account(PG_FUNCTION_ARGS)
{
	return enqueue_closure(fcinfo, LEDGER_REOPEN);
}
