/*-------------------------------------------------------------------------
 *
 * spi_tools.c
 *	  What the other files share to talk to SPI and keep things in memory:
 *	  plans kept for the backend's life, bigint arrays, hash tables keyed
 *	  by bytes, and the columns of a table by name.
 *
 * Small on purpose: each of these is used by several files, and none of
 * them knows anything of the ledger.
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
