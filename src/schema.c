/*-------------------------------------------------------------------------
 *
 * schema.c
 *	  Which ledger this database holds: the extension, its schema version,
 *	  and whether its history is of this cluster.
 *
 * The library serves its own schema version only, and enqueues into a
 * ledger restored from another cluster only once a worker took it over
 * (installed.c): the API functions ask here first.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "utils/lsyscache.h"

#include "ledger.h"

/* The OID of the ledger extension in this database, or InvalidOid. */
Oid
ledger_extension_oid(void)
{
	return get_extension_oid("ledger", true);
}

/*
 * Which schema does this database hold?  The library serves its own
 * version's only: a database with an earlier one waits for ALTER EXTENSION
 * ledger UPDATE (its queued events stay queued).  Told by the object each
 * version added last, so that asking costs two syscache probes.
 */
LedgerSchema
ledger_schema(void)
{
	Oid			nsp = get_namespace_oid("ledger", true);

	if (!OidIsValid(nsp))
		return LEDGER_SCHEMA_NONE;
	/* 1.9's */
	if (OidIsValid(get_relname_relid("linked_votes", nsp)))
		return LEDGER_SCHEMA_CURRENT;
	return LEDGER_SCHEMA_OLDER;
}

/*
 * ledger.system_identifier() - this cluster's system identifier, which
 * ledger.installation compares with the one its log's transaction ids are
 * of.
 */
PG_FUNCTION_INFO_V1(ledger_system_identifier);
Datum
ledger_system_identifier(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64((int64) GetSystemIdentifier());
}

/*
 * Are the log's transaction ids of another history than this cluster's?
 * They are when the row of ledger.installation in force (the newest take-
 * over, see ledger--1.5--1.6.sql) names another cluster: a dump restored
 * there.  They are too when the newest batch of a bucket since that take-
 * over saw transaction ids this cluster has not yet given out: a dump of a
 * later state of this same cluster, restored into a copy of it from before
 * (a physical backup, a standby promoted).  Sets *base_id, the event up to
 * which they are of an earlier history.  Called inside SPI.
 */
bool
ledger_installation(int64 *base_id)
{
	bool		isnull;

	if (SPI_execute("SELECT i.system_id <> ledger.system_identifier()"
					"       OR EXISTS (SELECT FROM pg_catalog.generate_series(0, "
					CppAsString2(LEDGER_MAX_BUCKETS) " - 1) k(bucket),"
					"                  LATERAL (SELECT b.id, b.cur_xmax FROM ledger.batches b"
					"                            WHERE b.bucket = k.bucket"
					"                            ORDER BY b.id DESC LIMIT 1) l"
					"                   WHERE l.id > i.base_batch"
					"                     AND l.cur_xmax > pg_catalog.pg_snapshot_xmax("
					"                                        pg_catalog.pg_current_snapshot())),"
					"       i.base_id"
					"  FROM ledger.installation i"
					" ORDER BY i.base_batch DESC, i.base_id DESC, i.since DESC,"
					"          i.system_id = ledger.system_identifier()"
					" LIMIT 1", false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "ledger.installation is empty");
	*base_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 2, &isnull));
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Refuse to enqueue into a ledger restored from another history that the
 * workers have not taken over yet: its events would be logged under
 * transaction ids the workers cannot tell from the restored ones.  Asked
 * once per backend and installation, which its table ledger.installation
 * stands for: a restore creates it again.  (Its OID comes from the syscache;
 * the extension's would cost a scan of pg_extension every call.)  Called
 * inside SPI, as the extension's owner.
 */
void
ledger_require_installation(void)
{
	static Oid	checked = InvalidOid;
	Oid			installation = get_relname_relid("installation",
												 get_namespace_oid("ledger", false));
	int64		base_id;

	if (installation == checked)
		return;
	if (ledger_installation(&base_id))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the ledger was restored from another cluster, and its workers have not taken it over yet"),
				 errdetail("Its events are logged under the other cluster's transaction ids until they have."),
				 errhint("Retry in a moment; the workers do it as they start.")));
	checked = installation;
}

/* Refuse to enqueue into a schema the library does not serve. */
void
ledger_require_schema(void)
{
	if (ledger_schema() != LEDGER_SCHEMA_CURRENT)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the ledger extension must be updated to use this version of its library"),
				 errdetail("The library is version %s; the events already queued wait for the update.",
						   LEDGER_VERSION),
				 errhint("Run ALTER EXTENSION ledger UPDATE.")));
}

/* Is this server a node of a cluster of ledgers? */
bool
ledger_in_cluster(void)
{
	return ledger_node_id != 0;
}
