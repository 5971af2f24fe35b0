/*-------------------------------------------------------------------------
 *
 * spi_tools.c
 *	  What the other files share to talk to SPI and keep things in memory:
 *	  plans kept for the backend's life, look-ups by id, statements over a
 *	  worker's buckets, bigint arrays, hash tables keyed by bytes, and the
 *	  columns of a table by name.
 *
 * Small on purpose: each of these is used by several files, and none of
 * them knows more of the ledger than how its buckets are shared out among
 * the workers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"

#include "ledger.h"

/*
 * Prepare an SPI plan once per backend and keep it.  The API functions run
 * with search_path pinned, and a kept plan is replanned with the search_path
 * it was made with, so callers' paths never reach it.  The plans are
 * generic: every statement is a handful of index probes whatever its
 * parameters, and planning it again at each call would cost more than
 * running it.
 */
SPIPlanPtr
ledger_prepare_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare_cursor(sql, nargs, argtypes,
										   CURSOR_OPT_GENERIC_PLAN);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s",
				 sql, SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	return *plan;
}

/*
 * Run a statement of one bigint parameter, $1, for at most one row: the
 * look-up of a row by its id.  Its plan is made the first time and kept in
 * *plan (ledger_prepare_plan()).  Returns SPI_execute_plan()'s result; the
 * row, if there is one, is in SPI_tuptable.
 */
int
ledger_execute_by_id(SPIPlanPtr *plan, const char *sql, int64 id)
{
	Oid			argtype = INT8OID;
	Datum		arg = Int64GetDatum(id);

	return SPI_execute_plan(ledger_prepare_plan(plan, sql, 1, &argtype),
							&arg, NULL, false, 1);
}

/*
 * Run a read-only statement over the rows of a worker's buckets: $1 is
 * ledger.buckets and $2 the worker, for the statement to pick the buckets as
 * ledger_worker_of_bucket() does ("bucket % $1 = $2").  For what a worker
 * reads once per installation: the plan is not kept.  Returns
 * SPI_execute_with_args()'s result; the rows are in SPI_tuptable.
 */
int
ledger_execute_for_worker(const char *sql, int worker)
{
	Oid			argtypes[2] = {INT4OID, INT4OID};
	Datum		args[2];

	args[0] = Int32GetDatum(ledger_buckets);
	args[1] = Int32GetDatum(worker);
	return SPI_execute_with_args(sql, 2, argtypes, args, NULL, true, 0);
}

/* A bigint[] of the Datums given. */
Datum
ledger_bigint_array(Datum *values, int n)
{
	return PointerGetDatum(construct_array(values, n, INT8OID, 8,
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * A hash table in memory context cxt whose entries start with their key, of
 * keysize bytes compared as bytes (an int64 id, mostly).
 */
HTAB *
ledger_hash_create(const char *name, long nelem, Size keysize, Size entrysize,
				   MemoryContext cxt)
{
	HASHCTL		ctl;

	ctl.keysize = keysize;
	ctl.entrysize = entrysize;
	ctl.hcxt = cxt;
	return hash_create(name, nelem, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* Free a plan ledger_prepare_plan() kept, if there is one. */
void
ledger_free_plan(SPIPlanPtr *plan)
{
	if (*plan)
		SPI_freeplan(*plan);
	*plan = NULL;
}

/*
 * Where the columns names[] are in the rows of table relid, into attnums[]:
 * the library names columns, not positions, in the rows it builds itself.
 */
void
ledger_column_attnums(Oid relid, const char *const *names, int n,
					  AttrNumber *attnums)
{
	int			i;

	for (i = 0; i < n; i++)
		if ((attnums[i] = get_attnum(relid, names[i])) == InvalidAttrNumber)
			elog(ERROR, "table %s has no column %s", get_rel_name(relid), names[i]);
}
