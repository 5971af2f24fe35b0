/*-------------------------------------------------------------------------
 *
 * args.c
 *	  Checking the arguments of the enqueue functions.
 *
 * Everything that depends on the arguments alone is checked before the
 * ledger's tables are read: a bad call fails with a clear error and the
 * SQLSTATE the README's table gives, and enqueues nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"

#include "enqueue.h"

void
ledger_require_arg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
}

void
ledger_check_account_id(int64 account_id)
{
	if (account_id <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid account id " INT64_FORMAT, account_id),
				 errdetail("Account ids must be positive; ids up to zero are reserved for the external accounts.")));
}

void
ledger_check_amount(int64 amount)
{
	if (amount <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must be positive"),
				 errdetail("The amount given was " INT64_FORMAT ".", amount)));
}

void
ledger_check_key_length(text *key)
{
	int			length = VARSIZE_ANY_EXHDR(key);

	if (length > LEDGER_MAX_KEY_LENGTH)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("idempotency key is too long"),
				 errdetail("Keys may be at most %d bytes; this one has %d.",
						   LEDGER_MAX_KEY_LENGTH, length)));
}

void
ledger_check_transfer(int64 from_account, int64 to_account, int64 amount)
{
	ledger_check_account_id(from_account);
	ledger_check_account_id(to_account);
	if (from_account == to_account)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot transfer from account " INT64_FORMAT " to itself",
						from_account)));
	ledger_check_amount(amount);
}

void
ledger_check_metadata(Jsonb *metadata)
{
	if (!JB_ROOT_IS_OBJECT(metadata) || JB_ROOT_IS_SCALAR(metadata))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("metadata must be a JSON object")));
	if (VARSIZE(metadata) > LEDGER_MAX_METADATA_SIZE)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("metadata is too large"),
				 errdetail("An event's metadata may take at most %d bytes; this takes %d.",
						   LEDGER_MAX_METADATA_SIZE, (int) VARSIZE(metadata))));
}

/*
 * Is the optional argument argno given?  A function declared by the SQL of
 * an earlier version has fewer arguments.
 */
static bool
optional_arg_given(FunctionCallInfo fcinfo, int argno)
{
	return PG_NARGS() > argno && !PG_ARGISNULL(argno);
}

/*
 * The optional arguments an enqueue function ends with, checked, into the
 * movement: its idempotency key, argument argno, and its metadata, the
 * next; each NULL when not given.
 */
void
ledger_get_key_and_metadata(FunctionCallInfo fcinfo, int argno, Movement *m)
{
	m->idempotency_key = NULL;
	m->metadata = NULL;
	if (optional_arg_given(fcinfo, argno))
	{
		m->idempotency_key = PG_GETARG_TEXT_PP(argno);
		ledger_check_key_length(m->idempotency_key);
	}
	if (optional_arg_given(fcinfo, argno + 1))
	{
		m->metadata = PG_GETARG_JSONB_P(argno + 1);
		ledger_check_metadata(m->metadata);
	}
}

/* Read a one-dimensional bigint[] without NULLs into a palloc'd C array. */
int64 *
ledger_get_bigint_array(ArrayType *array, const char *name, int *n)
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

int
ledger_cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/* A bigint[] of the values given, with bounds from 1. */
Datum
ledger_int64_array(int64 *values, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
		elems[i] = Int64GetDatum(values[i]);
	return ledger_bigint_array(elems, n);
}
