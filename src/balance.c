/*-------------------------------------------------------------------------
 *
 * balance.c
 *	  Reading balances.
 *
 * Every leg carries its account's running balance, and an account's legs
 * are numbered in the order its worker posted them, so the balance is the
 * newest leg's balance_after: one probe of the (account_id, id) index,
 * however long the history.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"

#include "ledger.h"

/*
 * ledger_balance(account_id) - the balance of all the account's applied
 * legs, or NULL for an account that does not exist.
 */
PG_FUNCTION_INFO_V1(ledger_balance);
Datum
ledger_balance(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtype = INT8OID;
	Datum		arg = PG_GETARG_DATUM(0);
	Datum		balance = (Datum) 0;
	bool		isnull;

	SPI_connect();
	ledger_prepare_plan(&plan,
						"SELECT COALESCE((SELECT t.balance_after"
						"                   FROM ledger.transactions t"
						"                  WHERE t.account_id = a.id"
						"                  ORDER BY t.id DESC LIMIT 1), 0)"
						"  FROM ledger.accounts a WHERE a.id = $1",
						1, &argtype);
	if (SPI_execute_plan(plan, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the balance of account " INT64_FORMAT,
			 DatumGetInt64(arg));
	isnull = SPI_processed == 0;
	if (!isnull)
		balance = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								1, &isnull);
	SPI_finish();

	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(balance);
}
