/*-------------------------------------------------------------------------
 *
 * lookup.c
 *	  The accounts an enqueue call names: do they exist, in which bucket and
 *	  currency, and who owns them.
 *
 * One statement per call, whatever the number of accounts: their bucket
 * decides the queue an event joins, their currency whether money may move
 * between them, their owner who may debit them.  In a cluster, accounts of
 * other nodes are found in the directory, with bucket -2.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"

#include "enqueue.h"

/* Look up the accounts of info->ids, sorted and distinct.  Inside SPI. */
static void
lookup_buckets(AccountInfo *info)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr plan_cluster = NULL;
	Oid			argtypes[2] = {INT8ARRAYOID, INT4OID};
	Datum		args[2];
	SPIPlanPtr	chosen;
	uint64		row;
	int			i;

	if (ledger_in_cluster())
		chosen = ledger_prepare_plan(&plan_cluster,
									 "SELECT a.id, a.bucket, a.currency, a.owner"
									 "  FROM ledger.accounts a"
									 " WHERE a.id = ANY ($1)"
									 " UNION ALL"
									 " SELECT d.account_id, -2, COALESCE(c.no, -1), NULL"
									 "   FROM ledger.directory d"
									 "   LEFT JOIN ledger.currencies c ON c.code = d.currency"
									 "  WHERE d.account_id = ANY ($1) AND d.node_id <> $2",
									 2, argtypes);
	else
		chosen = ledger_prepare_plan(&plan,
									 "SELECT a.id, a.bucket, a.currency, a.owner"
									 "  FROM ledger.accounts a"
									 " WHERE a.id = ANY ($1)",
									 1, argtypes);
	args[0] = ledger_int64_array(info->ids, info->n);
	args[1] = Int32GetDatum(ledger_node_id);
	if (SPI_execute_plan(chosen, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up accounts");

	info->buckets = palloc(sizeof(int) * Max(info->n, 1));
	info->currencies = palloc0(sizeof(int) * Max(info->n, 1));
	info->owners = palloc0(sizeof(Oid) * Max(info->n, 1));
	for (i = 0; i < info->n; i++)
		info->buckets[i] = -1;
	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
		int			k = (int64 *) bsearch(&id, info->ids, info->n, sizeof(int64),
										  ledger_cmp_int64) - info->ids;
		Datum		owner;

		info->buckets[k] = DatumGetInt32(SPI_getbinval(tuple, desc, 2, &isnull));
		info->currencies[k] = DatumGetInt32(SPI_getbinval(tuple, desc, 3, &isnull));
		owner = SPI_getbinval(tuple, desc, 4, &isnull);
		info->owners[k] = isnull ? InvalidOid : DatumGetObjectId(owner);
	}
}

/*
 * Look up the accounts of a call, not necessarily distinct.  Called inside
 * SPI.
 */
AccountInfo *
ledger_lookup_accounts(int64 *ids, int n)
{
	AccountInfo *info = palloc(sizeof(AccountInfo));
	int			i;

	info->ids = palloc(sizeof(int64) * Max(n, 1));
	memcpy(info->ids, ids, sizeof(int64) * n);
	qsort(info->ids, n, sizeof(int64), ledger_cmp_int64);
	info->n = 0;
	for (i = 0; i < n; i++)
		if (info->n == 0 || info->ids[info->n - 1] != info->ids[i])
			info->ids[info->n++] = info->ids[i];
	lookup_buckets(info);
	return info;
}

/* Where an account is in the AccountInfo, erroring when it does not exist. */
static int
account_index(AccountInfo *info, int64 account_id)
{
	int64	   *found = bsearch(&account_id, info->ids, info->n, sizeof(int64),
								ledger_cmp_int64);

	if (found == NULL || info->buckets[found - info->ids] == -1)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("account " INT64_FORMAT " does not exist", account_id),
				 errhint("Open it first with ledger_open_account().")));
	return found - info->ids;
}

/* The bucket of an existing account; -2 for one of another node. */
int
ledger_account_bucket(AccountInfo *info, int64 account_id)
{
	return info->buckets[account_index(info, account_id)];
}

/* The bucket of a paying account, which must be one of this node. */
int
ledger_payer_bucket(AccountInfo *info, int64 account_id)
{
	int			bucket = ledger_account_bucket(info, account_id);

	if (bucket < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("account " INT64_FORMAT " is an account of another node", account_id),
				 errdetail("Money moves from an account on the node that holds it."),
				 errhint("Call the node that holds it, or the cluster's proxy.")));
	return bucket;
}

/* The owner role of an existing account, or InvalidOid. */
Oid
ledger_account_owner(AccountInfo *info, int64 account_id)
{
	return info->owners[account_index(info, account_id)];
}

/*
 * Money moves only between accounts of one currency: check that the payee
 * holds the payer's.
 */
void
ledger_check_same_currency(AccountInfo *info, int64 payer, int64 payee)
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
