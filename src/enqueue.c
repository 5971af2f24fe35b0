/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  The SQL functions that open accounts and enqueue money movements.
 *
 * Enqueueing checks everything that depends only on the arguments and on
 * which accounts exist, then appends one row to ledger.queue and returns the
 * new event's id.  It takes no lock beyond the row it inserts: whether the
 * money is there is decided later, in order, by the worker of the paying
 * account's bucket.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "ledger.h"

/* Longest idempotency key, in bytes: keys are kept in a btree. */
#define LEDGER_MAX_KEY_LENGTH	256

/* A movement to enqueue, before it has an id. */
typedef struct Movement
{
	char		kind;
	int64		account_id;		/* payer, or the account deposited to */
	int64		to_account;		/* transfer only */
	int64		amount;			/* for a disbursement, the total */
	Datum		to_accounts;	/* disbursement only: bigint[] */
	Datum		amounts;		/* disbursement only: bigint[] */
	text	   *idempotency_key;	/* or NULL */
} Movement;

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
require_arg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
}

static void
check_account_id(int64 account_id)
{
	if (account_id <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid account id " INT64_FORMAT, account_id),
				 errdetail("Account ids must be positive; ids up to zero are reserved for the external accounts.")));
}

static void
check_amount(int64 amount)
{
	if (amount <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must be positive"),
				 errdetail("The amount given was " INT64_FORMAT ".", amount)));
}

static text *
get_idempotency_key(FunctionCallInfo fcinfo, int argno)
{
	text	   *key;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	key = PG_GETARG_TEXT_PP(argno);
	if (VARSIZE_ANY_EXHDR(key) > LEDGER_MAX_KEY_LENGTH)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("idempotency key is too long"),
				 errdetail("Keys may be at most %d bytes; this one has %d.",
						   LEDGER_MAX_KEY_LENGTH, (int) VARSIZE_ANY_EXHDR(key))));
	return key;
}

static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * Check that the given accounts, all distinct, exist, raising an error naming
 * one that does not; return the bucket of the first, the paying account.
 * Called inside SPI.
 */
static int
lookup_accounts(int64 *ids, int n)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtype = INT8ARRAYOID;
	Datum	   *elems;
	Datum		arg;
	int64	   *found;
	int			bucket = -1;
	uint64		row;
	int			i;

	prepare_plan(&plan,
				 "SELECT a.id, a.bucket FROM ledger.accounts a"
				 " WHERE a.id = ANY ($1)",
				 1, &argtype);

	elems = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
		elems[i] = Int64GetDatum(ids[i]);
	arg = PointerGetDatum(construct_array(elems, n, INT8OID, 8,
										  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_plan(plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up accounts");

	found = palloc(sizeof(int64) * (SPI_processed + 1));
	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		found[row] = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
		if (found[row] == ids[0])
			bucket = DatumGetInt32(SPI_getbinval(tuple, desc, 2, &isnull));
	}

	if (SPI_processed < (uint64) n)
	{
		qsort(found, SPI_processed, sizeof(int64), cmp_int64);
		for (i = 0; i < n; i++)
			if (!bsearch(&ids[i], found, SPI_processed, sizeof(int64), cmp_int64))
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("account " INT64_FORMAT " does not exist", ids[i]),
						 errhint("Open it first with ledger_open_account().")));
	}
	return bucket;
}

/*
 * Claim an idempotency key for a new event id.  Returns true with the new id
 * if the key is new, or false with the id of the event that first used it.
 * A concurrent transaction inserting the same key makes us wait for its
 * outcome, so two racing callers get one event between them.
 */
static bool
claim_idempotency_key(text *key, int64 *event_id)
{
	static SPIPlanPtr insert_plan = NULL;
	static SPIPlanPtr select_plan = NULL;
	Oid			argtype = TEXTOID;
	Datum		arg = PointerGetDatum(key);
	bool		isnull;

	prepare_plan(&insert_plan,
				 "INSERT INTO ledger.idempotency (key, event_id)"
				 " VALUES ($1, nextval('ledger.event_id_seq'))"
				 " ON CONFLICT (key) DO NOTHING RETURNING event_id",
				 1, &argtype);
	if (SPI_execute_plan(insert_plan, &arg, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not record idempotency key");
	if (SPI_processed == 1)
	{
		*event_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												SPI_tuptable->tupdesc, 1, &isnull));
		return true;
	}

	prepare_plan(&select_plan,
				 "SELECT i.event_id FROM ledger.idempotency i WHERE i.key = $1",
				 1, &argtype);
	if (SPI_execute_plan(select_plan, &arg, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not read the event of an idempotency key in use"),
				 errhint("Retry the call.")));
	*event_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1, &isnull));
	return false;
}

/*
 * Append a movement to its bucket's queue and return its event id, or the id
 * of the earlier event that used the same idempotency key.
 */
static int64
enqueue(Movement *m, int bucket)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[8] = {INT4OID, INT8OID, CHAROID, INT8OID, INT8OID,
	INT8OID, INT8ARRAYOID, INT8ARRAYOID};
	Datum		values[8];
	char		nulls[8];
	int64		event_id = 0;
	bool		isnull;

	if (m->idempotency_key != NULL &&
		!claim_idempotency_key(m->idempotency_key, &event_id))
		return event_id;

	prepare_plan(&plan,
				 "INSERT INTO ledger.queue (bucket, id, kind, account_id,"
				 " to_account, amount, to_accounts, amounts, enqueued_at)"
				 " VALUES ($1, COALESCE($2, nextval('ledger.event_id_seq')),"
				 " $3, $4, $5, $6, $7, $8, statement_timestamp())"
				 " RETURNING id",
				 8, argtypes);

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int32GetDatum(bucket);
	values[1] = Int64GetDatum(event_id);
	nulls[1] = m->idempotency_key ? ' ' : 'n';
	values[2] = CharGetDatum(m->kind);
	values[3] = Int64GetDatum(m->account_id);
	values[4] = Int64GetDatum(m->to_account);
	nulls[4] = m->kind == LEDGER_TRANSFER ? ' ' : 'n';
	values[5] = Int64GetDatum(m->amount);
	values[6] = m->to_accounts;
	nulls[6] = m->to_accounts ? ' ' : 'n';
	values[7] = m->amounts;
	nulls[7] = m->amounts ? ' ' : 'n';

	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not enqueue event");
	event_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));

	ledger_wake_at_commit(bucket);
	return event_id;
}

/*
 * ledger_open_account(account_id, allow_negative) - open an account in
 * bucket (account_id mod ledger.buckets).  Opening it again with the same
 * flag does nothing.
 */
PG_FUNCTION_INFO_V1(ledger_open_account);
Datum
ledger_open_account(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr insert_plan = NULL;
	static SPIPlanPtr select_plan = NULL;
	Oid			argtypes[3] = {INT8OID, BOOLOID, INT4OID};
	Datum		values[3];
	int64		account_id;
	bool		allow_negative;
	bool		isnull;

	require_arg(fcinfo, 0, "account_id");
	require_arg(fcinfo, 1, "allow_negative");
	account_id = PG_GETARG_INT64(0);
	allow_negative = PG_GETARG_BOOL(1);
	check_account_id(account_id);

	SPI_connect();
	prepare_plan(&insert_plan,
				 "INSERT INTO ledger.accounts (id, allow_negative, bucket)"
				 " VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
				 3, argtypes);
	values[0] = Int64GetDatum(account_id);
	values[1] = BoolGetDatum(allow_negative);
	values[2] = Int32GetDatum((int32) (account_id % ledger_buckets));
	if (SPI_execute_plan(insert_plan, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not open account");

	if (SPI_processed == 0)
	{
		bool		existing;

		prepare_plan(&select_plan,
					 "SELECT a.allow_negative FROM ledger.accounts a WHERE a.id = $1",
					 1, argtypes);
		if (SPI_execute_plan(select_plan, values, NULL, false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not read account " INT64_FORMAT, account_id);
		existing = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
		if (existing != allow_negative)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("account " INT64_FORMAT " is already open with allow_negative = %s",
							account_id, existing ? "true" : "false"),
					 errdetail("An account's allow_negative flag cannot change.")));
	}
	SPI_finish();
	PG_RETURN_VOID();
}

/* Common to deposit and withdraw. */
static Datum
enqueue_external(FunctionCallInfo fcinfo, char kind)
{
	Movement	m = {0};
	int64		event_id;

	require_arg(fcinfo, 0, "account_id");
	require_arg(fcinfo, 1, "amount");
	m.kind = kind;
	m.account_id = PG_GETARG_INT64(0);
	m.amount = PG_GETARG_INT64(1);
	check_account_id(m.account_id);
	check_amount(m.amount);
	m.idempotency_key = get_idempotency_key(fcinfo, 2);

	SPI_connect();
	event_id = enqueue(&m, lookup_accounts(&m.account_id, 1));
	SPI_finish();
	PG_RETURN_INT64(event_id);
}

PG_FUNCTION_INFO_V1(ledger_deposit);
Datum
ledger_deposit(PG_FUNCTION_ARGS)
{
	return enqueue_external(fcinfo, LEDGER_DEPOSIT);
}

PG_FUNCTION_INFO_V1(ledger_withdraw);
Datum
ledger_withdraw(PG_FUNCTION_ARGS)
{
	return enqueue_external(fcinfo, LEDGER_WITHDRAW);
}

PG_FUNCTION_INFO_V1(ledger_transfer);
Datum
ledger_transfer(PG_FUNCTION_ARGS)
{
	Movement	m = {0};
	int64		ids[2];
	int64		event_id;

	require_arg(fcinfo, 0, "from_account");
	require_arg(fcinfo, 1, "to_account");
	require_arg(fcinfo, 2, "amount");
	m.kind = LEDGER_TRANSFER;
	m.account_id = PG_GETARG_INT64(0);
	m.to_account = PG_GETARG_INT64(1);
	m.amount = PG_GETARG_INT64(2);
	check_account_id(m.account_id);
	check_account_id(m.to_account);
	if (m.account_id == m.to_account)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot transfer from account " INT64_FORMAT " to itself",
						m.account_id)));
	check_amount(m.amount);
	m.idempotency_key = get_idempotency_key(fcinfo, 3);

	ids[0] = m.account_id;
	ids[1] = m.to_account;
	SPI_connect();
	event_id = enqueue(&m, lookup_accounts(ids, 2));
	SPI_finish();
	PG_RETURN_INT64(event_id);
}

/* Read a one-dimensional bigint[] without NULLs into a palloc'd C array. */
static int64 *
get_bigint_array(ArrayType *array, const char *name, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int64	   *result;
	int			i;

	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", name)));
	deconstruct_array(array, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, n);
	result = palloc(sizeof(int64) * Max(*n, 1));
	for (i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not contain nulls", name),
					 errdetail("Element %d is null.", i + 1)));
		result[i] = DatumGetInt64(elems[i]);
	}
	return result;
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
	int64	   *payees;
	int64	   *amounts;
	int64	   *ids;
	int64	   *sorted;
	int			npayees;
	int			namounts;
	int			i;
	int64		event_id;

	require_arg(fcinfo, 0, "from_account");
	require_arg(fcinfo, 1, "to_accounts");
	require_arg(fcinfo, 2, "amounts");
	m.kind = LEDGER_DISBURSE;
	m.account_id = PG_GETARG_INT64(0);
	check_account_id(m.account_id);

	payees = get_bigint_array(PG_GETARG_ARRAYTYPE_P(1), "to_accounts", &npayees);
	amounts = get_bigint_array(PG_GETARG_ARRAYTYPE_P(2), "amounts", &namounts);
	if (npayees == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a disbursement needs at least one payee")));
	if (npayees != namounts)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("to_accounts and amounts must have the same length"),
				 errdetail("to_accounts has %d elements, amounts has %d.",
						   npayees, namounts)));
	if (npayees > ledger_max_payees)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many payees: %d", npayees),
				 errdetail("A disbursement may pay at most %d accounts.",
						   ledger_max_payees),
				 errhint("Raise ledger.max_payees, or split the disbursement.")));

	for (i = 0; i < npayees; i++)
	{
		check_account_id(payees[i]);
		if (payees[i] == m.account_id)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("account " INT64_FORMAT " cannot disburse to itself",
							m.account_id)));
		check_amount(amounts[i]);
		if (pg_add_s64_overflow(m.amount, amounts[i], &m.amount))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("disbursement total is out of range for type bigint")));
	}

	sorted = palloc(sizeof(int64) * npayees);
	memcpy(sorted, payees, sizeof(int64) * npayees);
	qsort(sorted, npayees, sizeof(int64), cmp_int64);
	for (i = 1; i < npayees; i++)
		if (sorted[i] == sorted[i - 1])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("account " INT64_FORMAT " is listed twice as a payee",
							sorted[i])));

	m.to_accounts = PG_GETARG_DATUM(1);
	m.amounts = PG_GETARG_DATUM(2);
	m.idempotency_key = get_idempotency_key(fcinfo, 3);

	/* the payer first: its bucket is the event's */
	ids = palloc(sizeof(int64) * (npayees + 1));
	ids[0] = m.account_id;
	memcpy(ids + 1, payees, sizeof(int64) * npayees);

	SPI_connect();
	event_id = enqueue(&m, lookup_accounts(ids, npayees + 1));
	SPI_finish();
	PG_RETURN_INT64(event_id);
}
