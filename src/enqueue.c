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

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "common/int.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "ledger.h"

/* Longest idempotency key, in bytes: keys are kept in a btree. */
#define LEDGER_MAX_KEY_LENGTH	256

/* Largest metadata of one event, in bytes of jsonb. */
#define LEDGER_MAX_METADATA_SIZE	65536

/* A movement to enqueue, before it has an id. */
typedef struct Movement
{
	char		kind;
	int64		account_id;		/* payer, or the account deposited to */
	int64		to_account;		/* transfer only */
	int64		amount;			/* for a disbursement, the total */
	Datum		to_accounts;	/* disbursement only: bigint[] */
	Datum		amounts;		/* disbursement only: bigint[] */
	int64		hold_id;		/* post and void only */
	TimestampTz expires_at;		/* hold only; 0 for none */
	text	   *idempotency_key;	/* or NULL */
	Jsonb	   *metadata;		/* or NULL */
} Movement;

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

static void
check_key_length(text *key)
{
	if (VARSIZE_ANY_EXHDR(key) > LEDGER_MAX_KEY_LENGTH)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("idempotency key is too long"),
				 errdetail("Keys may be at most %d bytes; this one has %d.",
						   LEDGER_MAX_KEY_LENGTH, (int) VARSIZE_ANY_EXHDR(key))));
}

static void
check_transfer(int64 from_account, int64 to_account, int64 amount)
{
	check_account_id(from_account);
	check_account_id(to_account);
	if (from_account == to_account)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot transfer from account " INT64_FORMAT " to itself",
						from_account)));
	check_amount(amount);
}

static text *
get_idempotency_key(FunctionCallInfo fcinfo, int argno)
{
	text	   *key;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	key = PG_GETARG_TEXT_PP(argno);
	check_key_length(key);
	return key;
}

static void
check_metadata(Jsonb *metadata)
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

/* The optional metadata argument, checked, or NULL. */
static Jsonb *
get_metadata(FunctionCallInfo fcinfo, int argno)
{
	Jsonb	   *metadata;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	metadata = PG_GETARG_JSONB_P(argno);
	check_metadata(metadata);
	return metadata;
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

static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

static Datum
bigint_array(int64 *values, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
		elems[i] = Int64GetDatum(values[i]);
	return ledger_bigint_array(elems, n);
}

/* What enqueueing needs to know of the accounts a call names. */
typedef struct AccountInfo
{
	int64	   *ids;			/* sorted and distinct */
	int		   *buckets;		/* bucket of ids[i]; -1: no such account,
								 * -2: an account of another node */
	int		   *currencies;		/* currency number of ids[i] */
	int			n;
} AccountInfo;

/*
 * Look up accounts given sorted and distinct: their buckets and currencies.
 * Before 1.2 every account is in currency 0.  Called inside SPI.
 */
static void
lookup_buckets(AccountInfo *info)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr plan_1_1 = NULL;
	static SPIPlanPtr plan_cluster = NULL;
	bool		has_holds = ledger_schema_has_holds();
	bool		in_cluster = has_holds && ledger_in_cluster();
	SPIPlanPtr	chosen;
	Oid			argtypes[2] = {INT8ARRAYOID, INT4OID};
	Datum		args[2];
	uint64		row;
	int			i;

	/* in a cluster, the accounts of other nodes are found in the directory */
	if (in_cluster)
		chosen = ledger_prepare_plan(&plan_cluster,
									 "SELECT a.id, a.bucket, a.currency"
									 "  FROM ledger.accounts a"
									 " WHERE a.id = ANY ($1)"
									 " UNION ALL"
									 " SELECT d.account_id, -2, COALESCE(c.no, -1)"
									 "   FROM ledger.directory d"
									 "   LEFT JOIN ledger.currencies c ON c.code = d.currency"
									 "  WHERE d.account_id = ANY ($1) AND d.node_id <> $2",
									 2, argtypes);
	else if (has_holds)
		chosen = ledger_prepare_plan(&plan,
							"SELECT a.id, a.bucket, a.currency FROM ledger.accounts a"
							" WHERE a.id = ANY ($1)",
							1, argtypes);
	else
		chosen = ledger_prepare_plan(&plan_1_1,
									 "SELECT a.id, a.bucket, 0 FROM ledger.accounts a"
									 " WHERE a.id = ANY ($1)",
									 1, argtypes);
	args[0] = bigint_array(info->ids, info->n);
	args[1] = Int32GetDatum(ledger_node_id);
	if (SPI_execute_plan(chosen, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up accounts");

	info->buckets = palloc(sizeof(int) * Max(info->n, 1));
	info->currencies = palloc0(sizeof(int) * Max(info->n, 1));
	for (i = 0; i < info->n; i++)
		info->buckets[i] = -1;
	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
		int			k = (int64 *) bsearch(&id, info->ids, info->n, sizeof(int64),
										  cmp_int64) - info->ids;

		info->buckets[k] = DatumGetInt32(SPI_getbinval(tuple, desc, 2, &isnull));
		info->currencies[k] = DatumGetInt32(SPI_getbinval(tuple, desc, 3, &isnull));
	}
}

/* Where an account is in the AccountInfo, erroring when it does not exist. */
static int
account_index(AccountInfo *info, int64 account_id)
{
	int64	   *found = bsearch(&account_id, info->ids, info->n, sizeof(int64),
								cmp_int64);

	if (found == NULL || info->buckets[found - info->ids] == -1)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("account " INT64_FORMAT " does not exist", account_id),
				 errhint("Open it first with ledger_open_account().")));
	return found - info->ids;
}

/* The bucket of an existing account; -2 for one of another node. */
static int
bucket_of(AccountInfo *info, int64 account_id)
{
	return info->buckets[account_index(info, account_id)];
}

/* The bucket of a paying account, which must be one of this node. */
static int
payer_bucket(AccountInfo *info, int64 account_id)
{
	int			bucket = bucket_of(info, account_id);

	if (bucket < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("account " INT64_FORMAT " is an account of another node", account_id),
				 errdetail("Money moves from an account on the node that holds it."),
				 errhint("Call the node that holds it, or the cluster's proxy.")));
	return bucket;
}

/*
 * Money moves only between accounts of one currency: check that the payee
 * holds the payer's.
 */
static void
check_same_currency(AccountInfo *info, int64 payer, int64 payee)
{
	int			from = info->currencies[account_index(info, payer)];
	int			to = info->currencies[account_index(info, payee)];

	if (from != to)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("accounts " INT64_FORMAT " and " INT64_FORMAT " hold different currencies",
						payer, payee),
				 errdetail("Money moves only between accounts of one currency.")));
}

/*
 * Look up the accounts of a call, not necessarily distinct.  Called inside
 * SPI.
 */
static AccountInfo *
lookup_account_set(int64 *ids, int n)
{
	AccountInfo *info = palloc(sizeof(AccountInfo));
	int			i;

	info->ids = palloc(sizeof(int64) * Max(n, 1));
	memcpy(info->ids, ids, sizeof(int64) * n);
	qsort(info->ids, n, sizeof(int64), cmp_int64);
	info->n = 0;
	for (i = 0; i < n; i++)
		if (info->n == 0 || info->ids[info->n - 1] != info->ids[i])
			info->ids[info->n++] = info->ids[i];
	lookup_buckets(info);
	return info;
}

/*
 * Check that the given accounts exist, raising an error naming the first
 * that does not, and that they hold one currency; return the bucket of the
 * first, the paying account.  Called inside SPI.
 */
static int
lookup_accounts(int64 *ids, int n)
{
	AccountInfo *info = lookup_account_set(ids, n);
	int			i;

	for (i = 0; i < n; i++)
		(void) bucket_of(info, ids[i]);
	for (i = 1; i < n; i++)
		check_same_currency(info, ids[0], ids[i]);
	return payer_bucket(info, ids[0]);
}

/* The sequence event ids are drawn from. */
static Oid
event_id_seq(void)
{
	return get_relname_relid("event_id_seq", get_namespace_oid("ledger", false));
}

/* An idempotency key, and the event that holds it. */
typedef struct ClaimedKey
{
	char		key[LEDGER_MAX_KEY_LENGTH + 1];
	int64		event_id;
} ClaimedKey;

/*
 * Claim the idempotency keys of n new events.  keys[i] is NULL for an event
 * without one; ids[i] is the id drawn for the event, replaced by the id of
 * the event that first used its key when that was another one.  Returns, for
 * each event, whether it is new and so must be queued.  A concurrent
 * transaction inserting the same key makes us wait for its outcome, so two
 * racing callers get one event between them.
 */
static bool *
claim_idempotency_keys(text **keys, int64 *ids, int n)
{
	static SPIPlanPtr insert_plan = NULL;
	static SPIPlanPtr select_plan = NULL;
	Oid			argtypes[2] = {TEXTARRAYOID, INT8ARRAYOID};
	Datum	   *key_datums = palloc(sizeof(Datum) * n);
	int64	   *key_ids = palloc(sizeof(int64) * n);
	bool	   *is_new = palloc(sizeof(bool) * n);
	Datum		args[2];
	HTAB	   *claimed;
	HASHCTL		ctl;
	int			nkeys = 0;
	uint64		row;
	int			i;

	for (i = 0; i < n; i++)
	{
		is_new[i] = true;
		if (keys[i] == NULL)
			continue;
		key_datums[nkeys] = PointerGetDatum(keys[i]);
		key_ids[nkeys] = ids[i];
		nkeys++;
	}
	if (nkeys == 0)
		return is_new;

	/*
	 * Of events sharing a key, the first claims it; the rest conflict.  Keys
	 * are inserted in key order, so that two calls waiting on each other's
	 * keys cannot deadlock.
	 */
	ledger_prepare_plan(&insert_plan,
				 "INSERT INTO ledger.idempotency (key, event_id)"
				 " SELECT u.key, u.event_id"
				 "   FROM unnest($1, $2) WITH ORDINALITY AS u(key, event_id, n)"
				 "  ORDER BY u.key COLLATE \"C\", u.n"
				 " ON CONFLICT (key) DO NOTHING",
				 2, argtypes);
	args[0] = PointerGetDatum(construct_array(key_datums, nkeys, TEXTOID, -1,
											  false, TYPALIGN_INT));
	args[1] = bigint_array(key_ids, nkeys);
	if (SPI_execute_plan(insert_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record idempotency keys");

	ledger_prepare_plan(&select_plan,
				 "SELECT i.key, i.event_id FROM ledger.idempotency i"
				 " WHERE i.key = ANY ($1)",
				 1, argtypes);
	if (SPI_execute_plan(select_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read idempotency keys");

	ctl.keysize = sizeof(((ClaimedKey *) NULL)->key);
	ctl.entrysize = sizeof(ClaimedKey);
	ctl.hcxt = CurrentMemoryContext;
	claimed = hash_create("ledger idempotency keys", Max(SPI_processed, 16),
						  &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		ClaimedKey *entry;
		bool		isnull;

		entry = hash_search(claimed, SPI_getvalue(tuple, desc, 1), HASH_ENTER, NULL);
		entry->event_id = DatumGetInt64(SPI_getbinval(tuple, desc, 2, &isnull));
	}

	for (i = 0; i < n; i++)
	{
		ClaimedKey *entry;

		if (keys[i] == NULL)
			continue;
		entry = hash_search(claimed, text_to_cstring(keys[i]), HASH_FIND, NULL);
		if (entry == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not read the event of an idempotency key in use"),
					 errhint("Retry the call.")));
		if (entry->event_id != ids[i])
		{
			ids[i] = entry->event_id;
			is_new[i] = false;
		}
	}
	return is_new;
}

/*
 * Append a movement to its bucket's queue and return its event id, or the id
 * of the earlier event that used the same idempotency key.  A new event
 * passes the spam guard first if guarded: posts and voids are not, since
 * they end holds rather than add to what the payer owes.
 */
static int64
enqueue(Movement *m, int bucket, bool guarded)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr plan_1_1 = NULL;
	Oid			argtypes[11] = {INT4OID, INT8OID, CHAROID, INT8OID, INT8OID,
		INT8OID, INT8ARRAYOID, INT8ARRAYOID, INT8OID, TIMESTAMPTZOID, JSONBOID};
	Datum		values[11];
	char		nulls[11];
	bool		has_holds = ledger_schema_has_holds();
	int64		event_id = nextval_internal(event_id_seq(), false);

	if (m->idempotency_key != NULL &&
		!claim_idempotency_keys(&m->idempotency_key, &event_id, 1)[0])
		return event_id;
	if (guarded)
		ledger_guard_check(m->account_id, 1);

	if (has_holds)
		ledger_prepare_plan(&plan,
							"INSERT INTO ledger.queue (bucket, seq, id, kind, account_id,"
							" to_account, amount, to_accounts, amounts, enqueued_at,"
							" hold_id, expires_at, metadata)"
							" VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8,"
							"         statement_timestamp(), $9, $10, $11)",
							11, argtypes);
	else
		ledger_prepare_plan(&plan_1_1,
							"INSERT INTO ledger.queue (bucket, seq, id, kind, account_id,"
							" to_account, amount, to_accounts, amounts, enqueued_at)"
							" VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8,"
							"         statement_timestamp())",
							8, argtypes);

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int32GetDatum(bucket);
	values[1] = Int64GetDatum(event_id);
	values[2] = CharGetDatum(m->kind);
	values[3] = Int64GetDatum(m->account_id);
	values[4] = Int64GetDatum(m->to_account);
	nulls[4] = m->to_account != 0 ? ' ' : 'n';
	values[5] = Int64GetDatum(m->amount);
	values[6] = m->to_accounts;
	nulls[6] = m->to_accounts ? ' ' : 'n';
	values[7] = m->amounts;
	nulls[7] = m->amounts ? ' ' : 'n';
	values[8] = Int64GetDatum(m->hold_id);
	nulls[8] = m->hold_id != 0 ? ' ' : 'n';
	values[9] = TimestampTzGetDatum(m->expires_at);
	nulls[9] = m->expires_at != 0 ? ' ' : 'n';
	values[10] = PointerGetDatum(m->metadata);
	nulls[10] = m->metadata ? ' ' : 'n';

	if (SPI_execute_plan(has_holds ? plan : plan_1_1, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not enqueue event");

	ledger_guard_add(m->account_id, 1);
	ledger_wake_at_commit(bucket);
	return event_id;
}

/*
 * The number of a currency, registering it on first use together with its
 * external accounts, one per bucket.  Registering locks ledger.currencies,
 * so that two new currencies do not take the same number.  Called inside
 * SPI.
 */
static int
currency_number(const char *code)
{
	static SPIPlanPtr select_plan = NULL;
	static SPIPlanPtr insert_plan = NULL;
	static SPIPlanPtr external_plan = NULL;
	Oid			argtypes[1] = {TEXTOID};
	Oid			external_argtypes[2] = {INT4OID, INT4OID};
	Datum		args[2];
	bool		isnull;
	int			no;

	if (!ledger_valid_currency_code(code))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid currency code \"%s\"", code),
				 errdetail("A currency code is an upper-case letter followed by at most %d upper-case letters, digits or underscores.",
						   LEDGER_MAX_CURRENCY_LENGTH - 1)));

	ledger_prepare_plan(&select_plan,
						"SELECT c.no FROM ledger.currencies c WHERE c.code = $1",
						1, argtypes);
	args[0] = CStringGetTextDatum(code);
	if (SPI_execute_plan(select_plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up currency \"%s\"", code);
	if (SPI_processed == 1)
		return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));

	/* one registration at a time; one that beat us returns its number */
	if (SPI_execute("LOCK TABLE ledger.currencies IN SHARE ROW EXCLUSIVE MODE",
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not lock ledger.currencies");
	ledger_prepare_plan(&insert_plan,
						"INSERT INTO ledger.currencies (no, code)"
						" SELECT COALESCE((SELECT max(c.no) + 1 FROM ledger.currencies c), 0), $1"
						" ON CONFLICT (code) DO UPDATE SET code = EXCLUDED.code"
						" RETURNING no",
						1, argtypes);
	if (SPI_execute_plan(insert_plan, args, NULL, false, 1) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not register currency \"%s\"", code);
	no = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));

	ledger_prepare_plan(&external_plan,
						"INSERT INTO ledger.accounts (id, allow_negative, bucket, currency)"
						" SELECT -1 - b - 64 * $2::bigint, true, b, $2"
						"   FROM generate_series(0, $1::integer - 1) b"
						" ON CONFLICT (id) DO NOTHING",
						2, external_argtypes);
	args[0] = Int32GetDatum(ledger_buckets);
	args[1] = Int32GetDatum(no);
	if (SPI_execute_plan(external_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not open the external accounts of currency \"%s\"", code);
	return no;
}

/*
 * In a cluster, a node opens only the accounts of the buckets the node map
 * gives it.  Called inside SPI.
 */
static void
check_account_owner(int64 account_id)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtype = INT8OID;
	Datum		arg = Int64GetDatum(account_id);
	bool		isnull;
	int			owner;

	ledger_prepare_plan(&plan,
						"SELECT b.node_id FROM ledger.cluster_buckets b"
						" WHERE b.bucket = $1 % (SELECT count(*) FROM ledger.cluster_buckets)",
						1, &argtype);
	if (SPI_execute_plan(plan, &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the node map");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the node map has no bucket for account " INT64_FORMAT, account_id),
				 errhint("Fill ledger.cluster_buckets as on the other nodes.")));
	owner = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										1, &isnull));
	if (owner != ledger_node_id)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("account " INT64_FORMAT " belongs to node %d, not to this node (%d)",
						account_id, owner, ledger_node_id),
				 errhint("Open it through the cluster's proxy.")));
}

/*
 * ledger_open_account(account_id, allow_negative, currency) - open an account
 * in bucket (account_id mod ledger.buckets).  Opening it again the same way
 * does nothing; its flag and currency cannot change.
 */
PG_FUNCTION_INFO_V1(ledger_open_account);
Datum
ledger_open_account(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr insert_plan = NULL;
	static SPIPlanPtr insert_plan_1_1 = NULL;
	static SPIPlanPtr select_plan = NULL;
	static SPIPlanPtr select_plan_1_1 = NULL;
	Oid			argtypes[4] = {INT8OID, BOOLOID, INT4OID, INT4OID};
	Datum		values[4];
	bool		has_currencies = ledger_schema_has_holds();
	int64		account_id;
	bool		allow_negative;
	const char *currency = NULL;
	int			currency_no = 0;
	bool		isnull;

	require_arg(fcinfo, 0, "account_id");
	require_arg(fcinfo, 1, "allow_negative");
	account_id = PG_GETARG_INT64(0);
	allow_negative = PG_GETARG_BOOL(1);
	check_account_id(account_id);
	if (PG_NARGS() > 2)
		currency = PG_ARGISNULL(2) ? ledger_default_currency :
			text_to_cstring(PG_GETARG_TEXT_PP(2));

	SPI_connect();
	if (has_currencies && ledger_in_cluster())
		check_account_owner(account_id);
	if (has_currencies)
		currency_no = currency_number(currency ? currency : ledger_default_currency);

	values[0] = Int64GetDatum(account_id);
	values[1] = BoolGetDatum(allow_negative);
	values[2] = Int32GetDatum((int32) (account_id % ledger_buckets));
	values[3] = Int32GetDatum(currency_no);
	if (has_currencies)
		ledger_prepare_plan(&insert_plan,
							"INSERT INTO ledger.accounts (id, allow_negative, bucket, currency)"
							" VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
							4, argtypes);
	else
		ledger_prepare_plan(&insert_plan_1_1,
							"INSERT INTO ledger.accounts (id, allow_negative, bucket)"
							" VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
							3, argtypes);
	if (SPI_execute_plan(has_currencies ? insert_plan : insert_plan_1_1,
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not open account");

	if (SPI_processed == 0)
	{
		bool		existing;
		int			existing_currency;

		if (has_currencies)
			ledger_prepare_plan(&select_plan,
								"SELECT a.allow_negative, a.currency, c.code"
								"  FROM ledger.accounts a"
								"  JOIN ledger.currencies c ON c.no = a.currency"
								" WHERE a.id = $1",
								1, argtypes);
		else
			ledger_prepare_plan(&select_plan_1_1,
								"SELECT a.allow_negative, 0, NULL FROM ledger.accounts a"
								" WHERE a.id = $1",
								1, argtypes);
		if (SPI_execute_plan(has_currencies ? select_plan : select_plan_1_1,
							 values, NULL, false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not read account " INT64_FORMAT, account_id);
		existing = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
		existing_currency = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 2, &isnull));
		if (existing != allow_negative)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("account " INT64_FORMAT " is already open with allow_negative = %s",
							account_id, existing ? "true" : "false"),
					 errdetail("An account's allow_negative flag cannot change.")));
		if (existing_currency != currency_no)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("account " INT64_FORMAT " is already open in currency %s",
							account_id, SPI_getvalue(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 3)),
					 errdetail("An account's currency cannot change.")));
	}
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * Enqueue a movement naming the accounts ids[0 .. n-1], the first paying:
 * check they exist in one currency, then queue it in the payer's bucket.
 */
static int64
enqueue_movement(Movement *m, int64 *ids, int n)
{
	int			bucket;
	int64		event_id;

	SPI_connect();
	bucket = lookup_accounts(ids, n);
	event_id = enqueue(m, bucket, true);
	SPI_finish();
	return event_id;
}

/*
 * The arguments a transfer and a hold share: from_account, to_account and
 * amount, checked.
 */
static void
get_payment(FunctionCallInfo fcinfo, char kind, Movement *m)
{
	require_arg(fcinfo, 0, "from_account");
	require_arg(fcinfo, 1, "to_account");
	require_arg(fcinfo, 2, "amount");
	m->kind = kind;
	m->account_id = PG_GETARG_INT64(0);
	m->to_account = PG_GETARG_INT64(1);
	m->amount = PG_GETARG_INT64(2);
	check_transfer(m->account_id, m->to_account, m->amount);
}

/* Common to deposit and withdraw. */
static Datum
enqueue_external(FunctionCallInfo fcinfo, char kind)
{
	Movement	m = {0};

	require_arg(fcinfo, 0, "account_id");
	require_arg(fcinfo, 1, "amount");
	m.kind = kind;
	m.account_id = PG_GETARG_INT64(0);
	m.amount = PG_GETARG_INT64(1);
	check_account_id(m.account_id);
	check_amount(m.amount);
	m.idempotency_key = get_idempotency_key(fcinfo, 2);
	m.metadata = get_metadata(fcinfo, 3);

	PG_RETURN_INT64(enqueue_movement(&m, &m.account_id, 1));
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

	get_payment(fcinfo, LEDGER_TRANSFER, &m);
	m.idempotency_key = get_idempotency_key(fcinfo, 3);
	m.metadata = get_metadata(fcinfo, 4);

	ids[0] = m.account_id;
	ids[1] = m.to_account;
	PG_RETURN_INT64(enqueue_movement(&m, ids, 2));
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
				 errdetail("to_accounts has %d, amounts has %d.",
						   npayees, namounts)));
	if (npayees > ledger_max_payees)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many payees: %d", npayees),
				 errdetail_plural("A disbursement may pay at most %d account.",
								  "A disbursement may pay at most %d accounts.",
								  ledger_max_payees, ledger_max_payees),
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

	/* stored with bounds from 1, whatever the caller's were */
	m.to_accounts = bigint_array(payees, npayees);
	m.amounts = bigint_array(amounts, npayees);
	m.idempotency_key = get_idempotency_key(fcinfo, 3);
	m.metadata = get_metadata(fcinfo, 4);

	/* the payer first: its bucket is the event's */
	ids = palloc(sizeof(int64) * (npayees + 1));
	ids[0] = m.account_id;
	memcpy(ids + 1, payees, sizeof(int64) * npayees);

	PG_RETURN_INT64(enqueue_movement(&m, ids, npayees + 1));
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
	int64		ids[2];

	get_payment(fcinfo, LEDGER_HOLD, &m);
	if (!PG_ARGISNULL(3))
	{
		TimestampTz now = GetCurrentStatementStartTimestamp();

		m.expires_at = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
															   TimestampTzGetDatum(now),
															   PG_GETARG_DATUM(3)));
		if (m.expires_at <= now || TIMESTAMP_NOT_FINITE(m.expires_at))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("timeout must be a positive interval"),
					 errhint("Pass NULL for a hold without a timeout.")));
	}
	m.idempotency_key = get_idempotency_key(fcinfo, 4);
	m.metadata = get_metadata(fcinfo, 5);

	ids[0] = m.account_id;
	ids[1] = m.to_account;
	PG_RETURN_INT64(enqueue_movement(&m, ids, 2));
}

/*
 * Find a hold, applied or still queued: fill in its payer and payee, and
 * return the payer's bucket.  Called inside SPI.
 */
static int
find_hold(int64 hold_id, Movement *m)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtype = INT8OID;
	Datum		arg = Int64GetDatum(hold_id);
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;

	ledger_prepare_plan(&plan,
						"SELECT q.account_id, q.to_account, q.bucket FROM ledger.queue q"
						" WHERE q.id = $1 AND q.kind = 'h'"
						" UNION ALL"
						" SELECT e.account_id, e.to_account, a.bucket"
						"   FROM ledger.events e JOIN ledger.accounts a ON a.id = e.account_id"
						"  WHERE e.id = $1 AND e.kind = 'h'"
						" LIMIT 1",
						1, &argtype);
	if (SPI_execute_plan(plan, &arg, NULL, false, 1) != SPI_OK_SELECT)
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
	return DatumGetInt32(SPI_getbinval(row, desc, 3, &isnull));
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
	Movement	m = {0};
	int64		event_id;
	int			bucket;

	require_arg(fcinfo, 0, "hold_id");
	m.kind = LEDGER_POST;
	if (!PG_ARGISNULL(1))
	{
		m.amount = PG_GETARG_INT64(1);
		check_amount(m.amount);
	}
	m.idempotency_key = get_idempotency_key(fcinfo, 2);
	m.metadata = get_metadata(fcinfo, 3);

	SPI_connect();
	bucket = find_hold(PG_GETARG_INT64(0), &m);
	event_id = enqueue(&m, bucket, false);
	SPI_finish();
	PG_RETURN_INT64(event_id);
}

/* ledger_void(hold_id) - release a hold. */
PG_FUNCTION_INFO_V1(ledger_void);
Datum
ledger_void(PG_FUNCTION_ARGS)
{
	Movement	m = {0};
	int64		event_id;
	int			bucket;

	require_arg(fcinfo, 0, "hold_id");
	m.kind = LEDGER_VOID;
	m.idempotency_key = get_idempotency_key(fcinfo, 1);
	m.metadata = get_metadata(fcinfo, 2);

	SPI_connect();
	bucket = find_hold(PG_GETARG_INT64(0), &m);
	event_id = enqueue(&m, bucket, false);
	SPI_finish();
	PG_RETURN_INT64(event_id);
}

static void
check_limit(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (!PG_ARGISNULL(argno) && PG_GETARG_INT64(argno) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", name)));
}

/*
 * ledger_set_limits(account_id, overdraft_limit, max_amount,
 * daily_debit_limit) - replace the account's limits; NULL lifts one.  They
 * bind the batches the workers start after this transaction commits.
 */
PG_FUNCTION_INFO_V1(ledger_set_limits);
Datum
ledger_set_limits(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[4] = {INT8OID, INT8OID, INT8OID, INT8OID};
	Datum		values[4];
	char		nulls[4];
	int64		account_id;
	int			i;

	require_arg(fcinfo, 0, "account_id");
	account_id = PG_GETARG_INT64(0);
	check_account_id(account_id);
	check_limit(fcinfo, 1, "overdraft_limit");
	check_limit(fcinfo, 2, "max_amount");
	check_limit(fcinfo, 3, "daily_debit_limit");

	SPI_connect();
	(void) lookup_accounts(&account_id, 1);
	ledger_prepare_plan(&plan,
						"INSERT INTO ledger.limits (account_id, overdraft_limit,"
						" max_amount, daily_debit_limit, set_at)"
						" VALUES ($1, $2, $3, $4, statement_timestamp())",
						4, argtypes);
	for (i = 0; i < 4; i++)
	{
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not set the limits of account " INT64_FORMAT, account_id);
	SPI_finish();

	ledger_limits_changed_at_commit();
	PG_RETURN_VOID();
}

/* Error context naming the element of a batch being checked. */
static void
batch_element_context(void *arg)
{
	int			element = *(int *) arg;

	if (element > 0)
		errcontext("transfer %d of the batch", element);
}

/*
 * ledger_transfer_many(from_accounts[], to_accounts[], amounts[],
 * idempotency_keys[]) - enqueue many transfers in one call, each under the
 * rules of ledger_transfer(); return their event ids in order.  One bad
 * element fails the whole call, naming the element.
 */
PG_FUNCTION_INFO_V1(ledger_transfer_many);
Datum
ledger_transfer_many(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr queue_plan = NULL;
	static SPIPlanPtr queue_metadata_plan = NULL;
	Oid			argtypes[6] = {INT4ARRAYOID, INT8ARRAYOID, INT8ARRAYOID,
		INT8ARRAYOID, INT8ARRAYOID, JSONBARRAYOID};
	ErrorContextCallback errcallback;
	int64	   *from;
	int64	   *to;
	int64	   *amounts;
	text	  **keys;
	Datum	   *metadata = NULL;
	bool	   *metadata_nulls = NULL;
	bool	   *queued_nulls;
	int64	   *ids;
	int64	   *involved;
	int64	   *payers;
	int		   *adding;
	int			npayers;
	AccountInfo *info;
	bool	   *is_new;
	Datum	   *columns[6];
	Datum		args[6];
	int			n;
	int			nto;
	int			namounts;
	int			nqueued;
	int			element = 0;
	Oid			seq;
	int			i;

	require_arg(fcinfo, 0, "from_accounts");
	require_arg(fcinfo, 1, "to_accounts");
	require_arg(fcinfo, 2, "amounts");
	from = get_bigint_array(PG_GETARG_ARRAYTYPE_P(0), "from_accounts", &n);
	to = get_bigint_array(PG_GETARG_ARRAYTYPE_P(1), "to_accounts", &nto);
	amounts = get_bigint_array(PG_GETARG_ARRAYTYPE_P(2), "amounts", &namounts);
	if (nto != n || namounts != n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_accounts, to_accounts and amounts must have the same length"),
				 errdetail("They have %d, %d and %d elements.", n, nto, namounts)));
	keys = palloc0(sizeof(text *) * Max(n, 1));
	if (!PG_ARGISNULL(3))
	{
		ArrayType  *key_array = PG_GETARG_ARRAYTYPE_P(3);
		Datum	   *elems;
		bool	   *nulls;
		int			nkeys;

		if (ARR_NDIM(key_array) > 1)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("idempotency_keys must be a one-dimensional array")));
		deconstruct_array(key_array, TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &nulls, &nkeys);
		if (nkeys != n)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("idempotency_keys must have one element per transfer"),
					 errdetail("There are %d transfers and %d keys.", n, nkeys)));
		for (i = 0; i < n; i++)
			keys[i] = nulls[i] ? NULL : DatumGetTextPP(elems[i]);
	}
	if (PG_NARGS() > 4 && !PG_ARGISNULL(4))
	{
		ArrayType  *metadata_array = PG_GETARG_ARRAYTYPE_P(4);
		int			nmetadata;

		if (ARR_NDIM(metadata_array) > 1)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("metadata must be a one-dimensional array")));
		deconstruct_array(metadata_array, JSONBOID, -1, false, TYPALIGN_INT,
						  &metadata, &metadata_nulls, &nmetadata);
		if (nmetadata != n)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("metadata must have one element per transfer"),
					 errdetail("There are %d transfers and %d metadata elements.",
							   n, nmetadata)));
	}
	if (n == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(INT8OID));

	/* errors about one element name it */
	errcallback.callback = batch_element_context;
	errcallback.arg = &element;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	for (i = 0; i < n; i++)
	{
		element = i + 1;
		check_transfer(from[i], to[i], amounts[i]);
		if (keys[i])
			check_key_length(keys[i]);
		if (metadata && !metadata_nulls[i])
			check_metadata(DatumGetJsonbP(metadata[i]));
	}
	element = 0;

	/* every account involved, its bucket and currency */
	involved = palloc(sizeof(int64) * 2 * n);
	memcpy(involved, from, sizeof(int64) * n);
	memcpy(involved + n, to, sizeof(int64) * n);
	SPI_connect();
	info = lookup_account_set(involved, 2 * n);

	/* ids in call order, so that the transfers apply in that order */
	seq = event_id_seq();
	ids = palloc(sizeof(int64) * n);
	for (i = 0; i < n; i++)
		ids[i] = nextval_internal(seq, false);
	is_new = claim_idempotency_keys(keys, ids, n);

	for (i = 0; i < 6; i++)
		columns[i] = palloc(sizeof(Datum) * n);
	queued_nulls = palloc(sizeof(bool) * n);
	payers = palloc(sizeof(int64) * n);
	adding = palloc0(sizeof(int) * n);
	npayers = 0;
	nqueued = 0;
	for (i = 0; i < n; i++)
	{
		int			bucket;

		element = i + 1;
		bucket = payer_bucket(info, from[i]);
		(void) bucket_of(info, to[i]);
		check_same_currency(info, from[i], to[i]);
		if (!is_new[i])
			continue;
		columns[0][nqueued] = Int32GetDatum(bucket);
		columns[1][nqueued] = Int64GetDatum(ids[i]);
		columns[2][nqueued] = Int64GetDatum(from[i]);
		columns[3][nqueued] = Int64GetDatum(to[i]);
		columns[4][nqueued] = Int64GetDatum(amounts[i]);
		columns[5][nqueued] = metadata ? metadata[i] : (Datum) 0;
		queued_nulls[nqueued] = metadata == NULL || metadata_nulls[i];
		payers[nqueued] = from[i];
		nqueued++;
		ledger_wake_at_commit(bucket);
	}
	element = 0;

	/* how many each payer adds, for the spam guard */
	qsort(payers, nqueued, sizeof(int64), cmp_int64);
	npayers = 0;
	for (i = 0; i < nqueued; i++)
	{
		if (npayers == 0 || payers[npayers - 1] != payers[i])
			payers[npayers++] = payers[i];
		adding[npayers - 1]++;
	}

	if (nqueued > 0)
	{
		int			dims[1] = {nqueued};
		int			lbs[1] = {1};

		for (i = 0; i < npayers; i++)
			ledger_guard_check(payers[i], adding[i]);
		args[0] = PointerGetDatum(construct_array(columns[0], nqueued, INT4OID, 4,
												  true, TYPALIGN_INT));
		for (i = 1; i < 5; i++)
			args[i] = ledger_bigint_array(columns[i], nqueued);
		if (metadata == NULL)
			ledger_prepare_plan(&queue_plan,
								"INSERT INTO ledger.queue (bucket, seq, id, kind, account_id,"
								" to_account, amount, enqueued_at)"
								" SELECT u.bucket, u.id, u.id, 't', u.account_id, u.to_account,"
								"        u.amount, statement_timestamp()"
								"   FROM unnest($1, $2, $3, $4, $5)"
								"        AS u(bucket, id, account_id, to_account, amount)",
								5, argtypes);
		else
		{
			ledger_prepare_plan(&queue_metadata_plan,
								"INSERT INTO ledger.queue (bucket, seq, id, kind, account_id,"
								" to_account, amount, enqueued_at, metadata)"
								" SELECT u.bucket, u.id, u.id, 't', u.account_id, u.to_account,"
								"        u.amount, statement_timestamp(), u.metadata"
								"   FROM unnest($1, $2, $3, $4, $5, $6)"
								"        AS u(bucket, id, account_id, to_account, amount, metadata)",
								6, argtypes);
			args[5] = PointerGetDatum(construct_md_array(columns[5], queued_nulls,
														 1, dims, lbs, JSONBOID, -1,
														 false, TYPALIGN_INT));
		}
		if (SPI_execute_plan(metadata ? queue_metadata_plan : queue_plan,
							 args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not enqueue transfers");
		for (i = 0; i < npayers; i++)
			ledger_guard_add(payers[i], adding[i]);
	}
	SPI_finish();
	error_context_stack = errcallback.previous;

	PG_RETURN_DATUM(bigint_array(ids, n));
}
