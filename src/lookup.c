/*-------------------------------------------------------------------------
 *
 * lookup.c
 *	  The accounts an enqueue call names: do they exist, in which bucket and
 *	  currency, and who owns them.
 *
 * A probe of the accounts' primary key per account: their bucket decides
 * the queue an event joins, their currency whether money may move between
 * them, their owner who may debit them.  In a cluster, accounts of
 * other nodes are found in the directory, with bucket -2.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/nbtree.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"

#include "enqueue.h"

/*
 * ledger.accounts, its primary key, and where in its rows the columns read
 * here are: found again when the table is not the one last seen (the
 * extension was created again).
 */
enum
{
	ACCOUNT_BUCKET, ACCOUNT_CURRENCY, ACCOUNT_OWNER, ACCOUNT_NCOLUMNS
};
static const char *const account_columns[ACCOUNT_NCOLUMNS] = {
	"bucket", "currency", "owner"
};
static Oid	accounts_oid = InvalidOid;
static Oid	accounts_pkey_oid = InvalidOid;
static AttrNumber account_attnums[ACCOUNT_NCOLUMNS];

static void
find_accounts_table(Oid relid)
{
	Relation	rel;

	if (relid == accounts_oid)
		return;
	ledger_column_attnums(relid, account_columns, ACCOUNT_NCOLUMNS,
						  account_attnums);
	rel = table_open(relid, AccessShareLock);
	accounts_pkey_oid = RelationGetPrimaryKeyIndex(rel);
	table_close(rel, AccessShareLock);
	if (!OidIsValid(accounts_pkey_oid))
		elog(ERROR, "table ledger.accounts has no primary key");
	accounts_oid = relid;
}

/*
 * Look up the accounts of info->ids, sorted and distinct, by probing the
 * primary key of ledger.accounts for each: no statement to plan or start,
 * which would cost an enqueue call more than its insert.  Accounts are
 * never deleted, so the newest snapshot serves; the command counter is
 * advanced first so that an account opened earlier in the same statement is
 * seen.  In a cluster, the accounts not found are looked for in the
 * directory.  Inside SPI.
 */
static void
lookup_buckets(AccountInfo *info)
{
	static SPIPlanPtr plan_cluster = NULL;
	Oid			argtypes[2] = {INT8ARRAYOID, INT4OID};
	Datum		args[2];
	Relation	rel;
	Relation	index;
	TupleTableSlot *slot;
	Snapshot	snapshot;
	IndexScanDesc scan;
	int64	   *missing;
	int			nmissing = 0;
	uint64		row;
	int			i;

	info->buckets = palloc(sizeof(int) * Max(info->n, 1));
	info->currencies = palloc0(sizeof(int) * Max(info->n, 1));
	info->owners = palloc0(sizeof(Oid) * Max(info->n, 1));
	missing = palloc(sizeof(int64) * Max(info->n, 1));

	find_accounts_table(get_relname_relid("accounts",
										  get_namespace_oid("ledger", false)));
	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	rel = table_open(accounts_oid, AccessShareLock);
	index = index_open(accounts_pkey_oid, AccessShareLock);
	slot = table_slot_create(rel, NULL);
	scan = index_beginscan(rel, index, snapshot, 1, 0);
	for (i = 0; i < info->n; i++)
	{
		ScanKeyData key;
		bool		isnull;

		ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ,
					Int64GetDatum(info->ids[i]));
		index_rescan(scan, &key, 1, NULL, 0);
		if (index_getnext_slot(scan, ForwardScanDirection, slot))
		{
			Datum		owner;

			info->buckets[i] = DatumGetInt32(slot_getattr(slot, account_attnums[ACCOUNT_BUCKET],
														  &isnull));
			info->currencies[i] = DatumGetInt32(slot_getattr(slot, account_attnums[ACCOUNT_CURRENCY],
															 &isnull));
			owner = slot_getattr(slot, account_attnums[ACCOUNT_OWNER], &isnull);
			info->owners[i] = isnull ? InvalidOid : DatumGetObjectId(owner);
		}
		else
		{
			info->buckets[i] = -1;
			missing[nmissing++] = info->ids[i];
		}
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, AccessShareLock);
	table_close(rel, AccessShareLock);
	UnregisterSnapshot(snapshot);

	if (nmissing == 0 || !ledger_in_cluster())
		return;
	args[0] = ledger_int64_array(missing, nmissing);
	args[1] = Int32GetDatum(ledger_node_id);
	ledger_prepare_plan(&plan_cluster,
						"SELECT d.account_id, COALESCE(c.no, -1)"
						"  FROM ledger.directory d"
						"  LEFT JOIN ledger.currencies c ON c.code = d.currency"
						" WHERE d.account_id = ANY ($1) AND d.node_id <> $2",
						2, argtypes);
	if (SPI_execute_plan(plan_cluster, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up accounts");
	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
		int			k = (int64 *) bsearch(&id, info->ids, info->n, sizeof(int64),
										  ledger_cmp_int64) - info->ids;

		info->buckets[k] = -2;
		info->currencies[k] = DatumGetInt32(SPI_getbinval(tuple, desc, 2, &isnull));
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
