/*-------------------------------------------------------------------------
 *
 * installed.c
 *	  What a bucket worker finds installed, checked before it applies
 *	  anything: the schema version, the tables a batch writes and their
 *	  columns, and whether this is a ledger restored from another cluster.
 *
 * The checks run once per installation (and again after the extension is
 * dropped and created again, or updated): a batch then writes by the OIDs
 * kept in ledger_installed, straight to the heap (bulk.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "executor/spi.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "ledger.h"
#include "bulk.h"
#include "guard.h"
#include "worker.h"
#include "batch.h"

/* The columns batch.h numbers, by name, to check against the catalog. */
static const char *const event_log_columns[] = {
	"id", "kind", "account_id", "to_account", "amount", "to_accounts",
	"amounts", "status", "reason", "enqueued_at", "applied_at", "hold_id",
	"expires_at", "metadata", "bucket", "txid", "waits_from", "credit_of",
	"occurred_at", "link_of"
};

static const char *const batches_columns[] = {
	"bucket", "id", "prev", "cur", "cur_xmax", "cursor_txid", "cursor_id",
	"decided_at", "applied", "rejected", "first_leg", "last_leg", "hash"
};

static const char *const outcomes_columns[] = {
	"event_id", "status", "reason", "batch_id", "decided_at"
};

static const char *const deferred_columns[] = {
	"event_id", "bucket", "batch_id", "deferred_at"
};

static const char *const transactions_columns[] = {
	"id", "account_id", "event_id", "amount", "balance_after", "created_at"
};

static const char *const breakpoints_columns[] = {
	"account_id", "previous_balance", "current_balance", "amount_difference",
	"first_txn_id", "last_txn_id", "created_at"
};

static const char *const hold_ends_columns[] = {
	"hold_id", "account_id", "status", "event_id", "amount", "ended_at"
};

static const char *const account_holds_columns[] = {
	"account_id", "id", "held", "changed_at"
};

static const char *const linked_votes_columns[] = {
	"event_id", "batch_id", "voted_at"
};

static const char *const transit_columns[] = {
	"source_node", "id", "target_node", "event_id", "payer", "currency",
	"to_accounts", "amounts", "amount", "created_at"
};

LedgerInstalled ledger_installed = {.worker = -1};

static Oid	ledger_extension = InvalidOid;
static uint64 seen_limits_generation = 0;

/*
 * Forget everything cached about the extension's objects: called when the
 * extension was dropped or created again.
 */
void
ledger_apply_reset(void)
{
	ledger_accounts_reset();
	ledger_supply_reset();
	ledger_holds_reset();
	ledger_bulk_reset();
	ledger_delta_reset();
	ledger_decide_reset();
	ledger_chain_reset();
	ledger_linked_reset();
	ledger_import_reset();
	ledger_extension = InvalidOid;
}

/* The OID of a relation of schema ledger, whose columns must be these. */
static Oid
ledger_relation(const char *name, const char *const *columns, int ncolumns)
{
	Oid			relid = get_relname_relid(name, get_namespace_oid("ledger", false));
	Relation	rel;
	TupleDesc	desc;
	int			i;

	if (!OidIsValid(relid))
		elog(ERROR, "relation ledger.%s does not exist", name);
	if (columns == NULL)
		return relid;

	rel = table_open(relid, AccessShareLock);
	desc = RelationGetDescr(rel);
	for (i = 0; i < desc->natts || i < ncolumns; i++)
	{
		if (i >= desc->natts || i >= ncolumns ||
			TupleDescAttr(desc, i)->attisdropped ||
			strcmp(NameStr(TupleDescAttr(desc, i)->attname), columns[i]) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table ledger.%s does not have the columns this version of the ledger library writes",
							name),
					 errhint("Update the extension with ALTER EXTENSION ledger UPDATE.")));
	}
	table_close(rel, AccessShareLock);
	return relid;
}

/*
 * The log's index by (bucket, txid, id), that a delta is read by: checked
 * once per installation, as the tables are.
 */
static Oid
log_delta_index(void)
{
	Oid			relid = ledger_relation("event_log_batch_idx", NULL, 0);
	Relation	index = index_open(relid, AccessShareLock);
	Form_pg_index form = index->rd_index;

	if (form->indrelid != ledger_installed.event_log || form->indnkeyatts != 3 ||
		form->indkey.values[0] != LOG_BUCKET + 1 ||
		form->indkey.values[1] != LOG_TXID + 1 ||
		form->indkey.values[2] != LOG_ID + 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("index ledger.event_log_batch_idx is not on (bucket, txid, id) of ledger.event_log"),
				 errhint("Update the extension with ALTER EXTENSION ledger UPDATE.")));
	index_close(index, AccessShareLock);
	return relid;
}

/*
 * Take over a ledger restored from another cluster, or from a later state
 * of this one (ledger_installation()): its log's transaction ids are of
 * another history, and could be taken for this one's.  The events they
 * still left pending are listed as deferred, to be read by id; every
 * bucket's next delta starts from nothing; the events up to the newest so
 * far are decided by what the batches of the other history said
 * (ledger.installation's base_id and base_batch).  One worker does it, the
 * others find it done.  Enqueueing waits for it
 * (ledger_require_installation()).
 */
static void
take_over_restored_ledger(void)
{
	int64		base;

	if (!ledger_installation(&base))
	{
		ledger_installed.base_id = base;
		return;
	}
	if (SPI_execute("LOCK TABLE ledger.installation IN SHARE ROW EXCLUSIVE MODE",
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not lock ledger.installation");
	if (ledger_installation(&base))
	{
		if (SPI_execute("INSERT INTO ledger.deferred (event_id, bucket, batch_id, deferred_at)"
						" SELECT s.id, s.bucket, 0, pg_catalog.now() FROM ledger.log_states s"
						"  WHERE s.state = 'p' AND s.txid IS NOT NULL"
						"    AND NOT EXISTS (SELECT FROM ledger.deferred d WHERE d.event_id = s.id)",
						false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not list the pending events of the restored ledger");
		ereport(LOG,
				(errmsg("ledger: taking over a ledger restored from another cluster"),
				 errdetail_plural("%d event still pending is read by its id from now on.",
								  "%d events still pending are read by their ids from now on.",
								  (int) SPI_processed, (int) SPI_processed)));
		if (SPI_execute("INSERT INTO ledger.batches (bucket, id, prev, cur, cur_xmax,"
						" decided_at, applied, rejected)"
						" SELECT b.bucket, pg_catalog.nextval('ledger.batch_id_seq'),"
						"        '1:1:', '1:1:', '1', pg_catalog.now(), 0, 0"
						"   FROM (SELECT DISTINCT b.bucket FROM ledger.batches b) b",
						false, 0) != SPI_OK_INSERT ||
			SPI_execute("INSERT INTO ledger.installation (system_id, base_id, base_batch, since)"
						" SELECT ledger.system_identifier(),"
						"        COALESCE((SELECT max(e.id) FROM ledger.event_log e), 0),"
						"        COALESCE((SELECT max(b.id) FROM ledger.batches b), 0),"
						"        pg_catalog.now()",
						false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not take over the restored ledger");
		if (ledger_installation(&base))
			elog(ERROR, "the restored ledger was not taken over");
	}
	ledger_installed.base_id = base;

	/*
	 * The pass's snapshot is from before the lock: the rows just written,
	 * here or by the worker waited for, are in a newer one.
	 */
	CommandCounterIncrement();
	PopActiveSnapshot();
	PushActiveSnapshot(GetTransactionSnapshot());
}

/*
 * Make the worker ready for a batch: is the extension installed in this
 * database, in the schema the library serves?  The first time it is (and
 * each time it is a new installation), check the tables, take over a
 * restored ledger, find the buckets this worker serves and open their
 * external accounts (delta.c), and load the open holds and the supply
 * owed.  Sets how many buckets this worker serves.  Resets everything
 * cached when the extension is not the installation seen last.
 *
 * Forgets the accounts, and so their limits, when limits may have changed:
 * when the count of announcements read after the batch's snapshot was taken
 * (limits_after) differs from the count read before the last batch's.  A
 * transaction that sets limits announces before its commit is visible and
 * after (wait.c): if this snapshot sees it, limits_after counts the first
 * announcement; if not, the second comes after limits_before, and a later
 * batch, whose snapshot sees it, reloads.
 *
 * Called inside SPI, in a transaction.
 */
LedgerSchema
ledger_prepare_worker(int worker, uint64 limits_before,
					  uint64 limits_after, int *nbuckets)
{
	Oid			extension_oid = ledger_extension_oid();
	LedgerSchema schema = ledger_schema();

	ledger_installed.worker = worker;

	/*
	 * A dropped extension took its queue along: nothing is pending any
	 * more, whatever the spam guard counted.
	 */
	if (!OidIsValid(extension_oid) ||
		(OidIsValid(ledger_extension) && extension_oid != ledger_extension))
		ledger_guard_forget();
	if (extension_oid != ledger_extension || schema != LEDGER_SCHEMA_CURRENT ||
		ledger_in_cluster() != ledger_installed.cluster_mode)
		ledger_apply_reset();
	if (!OidIsValid(extension_oid))
		return LEDGER_SCHEMA_NONE;
	if (schema != LEDGER_SCHEMA_CURRENT)
		return schema;

	if (!OidIsValid(ledger_extension))
	{
		LedgerInstalled *in = &ledger_installed;

		in->cluster_mode = ledger_in_cluster();
		in->transaction_seq = ledger_relation("transaction_id_seq", NULL, 0);
		in->event_seq = ledger_relation("event_id_seq", NULL, 0);
		in->batch_seq = ledger_relation("batch_id_seq", NULL, 0);
		in->event_log = ledger_relation("event_log", event_log_columns, LOG_NATTS);
		in->event_log_delta_index = log_delta_index();
		in->batches = ledger_relation("batches", batches_columns, BATCHES_NATTS);
		in->outcomes = ledger_relation("outcomes", outcomes_columns, OUTCOMES_NATTS);
		in->deferred = ledger_relation("deferred", deferred_columns, DEFERRED_NATTS);
		in->transactions = ledger_relation("transactions", transactions_columns,
										   TRANSACTIONS_NATTS);
		in->breakpoints = ledger_relation("breakpoints", breakpoints_columns,
										  BREAKPOINTS_NATTS);
		in->hold_ends = ledger_relation("hold_ends", hold_ends_columns,
										HOLD_ENDS_NATTS);
		in->account_holds = ledger_relation("account_holds", account_holds_columns,
											ACCOUNT_HOLDS_NATTS);
		in->linked_votes = ledger_relation("linked_votes", linked_votes_columns,
										   LINKED_VOTES_NATTS);
		in->transit = in->cluster_mode ?
			ledger_relation("transit", transit_columns, TRANSIT_NATTS) :
			InvalidOid;
		take_over_restored_ledger();
		ledger_serve_buckets();
		ledger_holds_load(worker);
		ledger_supply_load(worker);
		seen_limits_generation = limits_before;
		ledger_extension = extension_oid;
	}
	else if (limits_after != seen_limits_generation)
	{
		ledger_accounts_reset();
		seen_limits_generation = limits_before;
	}
	*nbuckets = ledger_served_buckets();
	return LEDGER_SCHEMA_CURRENT;
}

