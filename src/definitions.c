/*-------------------------------------------------------------------------
 *
 * definitions.c
 *	  The definitions the C code and the SQL share: event kinds' names, the
 *	  external accounts' ids, the supply bound, currency codes, and which
 *	  worker serves a bucket.
 *
 * Each is defined once, here or as a macro of ledger.h; the SQL calls the
 * functions below rather than repeating a formula.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"

#include "ledger.h"

/*
 * The worker that serves a bucket.  Buckets above ledger.buckets exist only
 * if the setting was lowered; they are shared out among the workers, so that
 * each bucket still has exactly one.
 */
int
ledger_worker_of_bucket(int bucket)
{
	return bucket % ledger_buckets;
}

/* The name of an event kind, as ledger.kind_name() gives it in SQL. */
const char *
ledger_kind_name(char kind)
{
	switch (kind)
	{
		case LEDGER_DEPOSIT:
			return "deposit";
		case LEDGER_WITHDRAW:
			return "withdraw";
		case LEDGER_TRANSFER:
			return "transfer";
		case LEDGER_DISBURSE:
			return "disburse";
		case LEDGER_HOLD:
			return "hold";
		case LEDGER_POST:
			return "post";
		case LEDGER_VOID:
			return "void";
		case LEDGER_CREDIT:
			return "credit";
		case LEDGER_LINKED:
			return "linked";
		case LEDGER_CLOSE:
			return "close";
		case LEDGER_REOPEN:
			return "reopen";
	}
	return "unknown";
}

/* ledger_supply_bound() - LEDGER_BUCKET_SUPPLY, for SQL */
PG_FUNCTION_INFO_V1(ledger_supply_bound);
Datum
ledger_supply_bound(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(LEDGER_BUCKET_SUPPLY);
}

/*
 * A currency code: an upper-case letter, then up to 15 upper-case letters,
 * digits or underscores ("USD", "EUR", "USDC").
 */
bool
ledger_valid_currency_code(const char *code)
{
	int			i;

	if (code == NULL || !(code[0] >= 'A' && code[0] <= 'Z'))
		return false;
	for (i = 1; code[i] != '\0'; i++)
	{
		if (i >= LEDGER_MAX_CURRENCY_LENGTH ||
			!((code[i] >= 'A' && code[i] <= 'Z') ||
			  (code[i] >= '0' && code[i] <= '9') || code[i] == '_'))
			return false;
	}
	return true;
}

/* ledger.external_account(bucket, currency) - LEDGER_EXTERNAL_ACCOUNT, for SQL */
PG_FUNCTION_INFO_V1(ledger_external_account);
Datum
ledger_external_account(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(LEDGER_EXTERNAL_ACCOUNT(PG_GETARG_INT32(0), PG_GETARG_INT32(1)));
}
