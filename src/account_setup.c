/*-------------------------------------------------------------------------
 *
 * account_setup.c
 *	  What operators set up: accounts, their currencies and owners, and their
 *	  limits.
 *
 * These are for ledger_operator, not for ledger_client: an account that may
 * go negative can pay out money that was never deposited, and limits bind
 * what its holder may spend.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"

#include "enqueue.h"
#include "wait.h"

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

	args[0] = Int32GetDatum(ledger_buckets);
	args[1] = Int32GetDatum(no);
	ledger_prepare_plan(&external_plan,
						"INSERT INTO ledger.accounts (id, allow_negative, bucket, currency)"
						" SELECT ledger.external_account(b, $2), true, b, $2"
						"   FROM generate_series(0, $1::integer - 1) b"
						" ON CONFLICT (id) DO NOTHING",
						2, external_argtypes);
	if (SPI_execute_plan(external_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not open the external accounts of currency \"%s\"", code);
	return no;
}

/*
 * In a cluster, a node opens only the accounts of the buckets the node map
 * gives it.  Called inside SPI.
 */
static void
check_account_node(int64 account_id)
{
	static SPIPlanPtr plan = NULL;
	bool		isnull;
	int			node;

	if (ledger_execute_by_id(&plan,
							 "SELECT b.node_id FROM ledger.cluster_buckets b"
							 " WHERE b.bucket = $1 % (SELECT count(*) FROM ledger.cluster_buckets)",
							 account_id) != SPI_OK_SELECT)
		elog(ERROR, "could not read the node map");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the node map has no bucket for account " INT64_FORMAT, account_id),
				 errhint("Fill ledger.cluster_buckets as on the other nodes.")));
	node = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									   1, &isnull));
	if (node != ledger_node_id)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("account " INT64_FORMAT " belongs to node %d, not to this node (%d)",
						account_id, node, ledger_node_id),
				 errhint("Open it through the cluster's proxy.")));
}

/* Refuse to open an existing account again in another way. */
static void
check_reopened(int64 account_id, bool allow_negative, int currency, Oid owner)
{
	static SPIPlanPtr plan = NULL;
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	Datum		existing_owner;

	if (ledger_execute_by_id(&plan,
							 "SELECT a.allow_negative, a.currency, c.code, a.owner"
							 "  FROM ledger.accounts a"
							 "  JOIN ledger.currencies c ON c.no = a.currency"
							 " WHERE a.id = $1",
							 account_id) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read account " INT64_FORMAT, account_id);
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	if (DatumGetBool(SPI_getbinval(row, desc, 1, &isnull)) != allow_negative)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("account " INT64_FORMAT " is already open with allow_negative = %s",
						account_id, allow_negative ? "false" : "true"),
				 errdetail("An account's allow_negative flag cannot change.")));
	if (DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull)) != currency)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("account " INT64_FORMAT " is already open in currency %s",
						account_id, SPI_getvalue(row, desc, 3)),
				 errdetail("An account's currency cannot change.")));
	existing_owner = SPI_getbinval(row, desc, 4, &isnull);
	if ((isnull ? InvalidOid : DatumGetObjectId(existing_owner)) != owner)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("account " INT64_FORMAT " is already open with owner %s",
						account_id, isnull ? "none" : SPI_getvalue(row, desc, 4)),
				 errdetail("An account's owner cannot change.")));
}

/*
 * ledger_open_account(account_id, allow_negative, currency, owner) - open an
 * account in bucket (account_id mod ledger.buckets), in a currency (NULL:
 * ledger.default_currency), optionally owned by a role whose members alone
 * may debit it.  Opening it again the same way does nothing; its flag,
 * currency and owner cannot change.
 */
PG_FUNCTION_INFO_V1(ledger_open_account);
Datum
ledger_open_account(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr insert_plan = NULL;
	Oid			argtypes[5] = {INT8OID, BOOLOID, INT4OID, INT4OID, OIDOID};
	Datum		values[5];
	char		nulls[5] = "    ";
	int64		account_id;
	bool		allow_negative;
	const char *currency;
	Oid			owner;
	int			currency_no;

	ledger_require_arg(fcinfo, 0, "account_id");
	ledger_require_arg(fcinfo, 1, "allow_negative");
	account_id = PG_GETARG_INT64(0);
	allow_negative = PG_GETARG_BOOL(1);
	ledger_check_account_id(account_id);
	currency = PG_ARGISNULL(2) ? ledger_default_currency :
		text_to_cstring(PG_GETARG_TEXT_PP(2));
	owner = PG_ARGISNULL(3) ? InvalidOid : PG_GETARG_OID(3);
	ledger_require_schema();

	SPI_connect();
	if (ledger_in_cluster())
		check_account_node(account_id);
	currency_no = currency_number(currency);

	values[0] = Int64GetDatum(account_id);
	values[1] = BoolGetDatum(allow_negative);
	values[2] = Int32GetDatum((int32) (account_id % ledger_buckets));
	values[3] = Int32GetDatum(currency_no);
	values[4] = ObjectIdGetDatum(owner);
	nulls[4] = OidIsValid(owner) ? ' ' : 'n';
	ledger_prepare_plan(&insert_plan,
						"INSERT INTO ledger.accounts (id, allow_negative, bucket, currency, owner)"
						" VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
						5, argtypes);
	if (SPI_execute_plan(insert_plan, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not open account");
	if (SPI_processed == 0)
		check_reopened(account_id, allow_negative, currency_no, owner);
	SPI_finish();
	PG_RETURN_VOID();
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

	ledger_require_arg(fcinfo, 0, "account_id");
	account_id = PG_GETARG_INT64(0);
	ledger_check_account_id(account_id);
	check_limit(fcinfo, 1, "overdraft_limit");
	check_limit(fcinfo, 2, "max_amount");
	check_limit(fcinfo, 3, "daily_debit_limit");
	ledger_require_schema();

	SPI_connect();
	(void) ledger_account_bucket(ledger_lookup_accounts(&account_id, 1), account_id);
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
