/*-------------------------------------------------------------------------
 *
 * node_map.c
 *	  Which of a node's workers the cluster's node map gives accounts.
 *
 * A new account goes to bucket (id mod ledger.buckets), whose worker is the
 * one of that number; in a cluster, the node owns the account when (id mod
 * the cluster's buckets) is one of its cluster buckets.  Some id satisfies
 * both for worker w and cluster bucket s exactly when s and w are congruent
 * modulo the gcd of the two counts (the Chinese remainder theorem).  A map
 * giving a node cluster buckets 0 and 2 of 4, with two workers, sends every
 * account of the node to worker 0: worker 1 would idle, and half the node's
 * apply capacity with it.  ledger_cluster_init() refuses such a map; the
 * workers watch for one made later, by hand, and say so in ledger_stats
 * and the log.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"

#include "ledger.h"
#include "node_map.h"

/*
 * The workers of a node that the node map leaves without accounts, in
 * order; none while the map is empty (a node not yet in a cluster).  Called
 * inside SPI.
 */
List *
ledger_unmapped_workers(int node)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[2] = {INT4OID, INT4OID};
	Datum		args[2];
	List	   *workers = NIL;
	uint64		i;

	ledger_prepare_plan(&plan,
						"SELECT w FROM (SELECT count(*)::integer AS nb FROM ledger.cluster_buckets) m,"
						"              pg_catalog.generate_series(0, $2 - 1) w"
						" WHERE m.nb > 0"
						"   AND NOT EXISTS (SELECT FROM ledger.cluster_buckets b"
						"                    WHERE b.node_id = $1"
						"                      AND b.bucket % pg_catalog.gcd(m.nb, $2)"
						"                          = w % pg_catalog.gcd(m.nb, $2))"
						" ORDER BY w",
						2, argtypes);
	args[0] = Int32GetDatum(node);
	args[1] = Int32GetDatum(ledger_buckets);
	if (SPI_execute_plan(plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the node map");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		workers = lappend_int(workers,
							  DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
														  SPI_tuptable->tupdesc,
														  1, &isnull)));
	}
	return workers;
}

/*
 * ledger.unmapped_workers(node) - the workers of that node the node map
 * leaves without accounts, for ledger_cluster_init().
 */
PG_FUNCTION_INFO_V1(ledger_unmapped_workers_sql);
Datum
ledger_unmapped_workers_sql(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext spi;
	List	   *workers;
	Datum	   *elems;
	ArrayType  *result;
	int			n = 0;
	ListCell   *lc;

	SPI_connect();
	workers = ledger_unmapped_workers(PG_GETARG_INT32(0));

	/* the list is the SPI call's, gone at SPI_finish() */
	spi = MemoryContextSwitchTo(caller);
	elems = palloc(sizeof(Datum) * Max(list_length(workers), 1));
	foreach(lc, workers)
		elems[n++] = Int32GetDatum(lfirst_int(lc));
	result = construct_array(elems, n, INT4OID, 4, true, TYPALIGN_INT);
	MemoryContextSwitchTo(spi);
	SPI_finish();

	PG_RETURN_ARRAYTYPE_P(result);
}
