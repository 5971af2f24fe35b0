/*-------------------------------------------------------------------------
 *
 * bulk.c
 *	  Writing a batch's rows straight into the heap, as COPY does.
 *
 * A batch writes thousands of rows into tables only the workers write:
 * legs, events, credits and breakpoints.  Going through SQL would plan and
 * project every row; instead rows are buffered in slots and written with
 * table_multi_insert(), one WAL record per page, then indexed with the
 * executor's own ExecInsertIndexTuples(), which also enforces the primary
 * keys.  Those tables have no insert triggers, constraints or defaults that
 * this would skip: their rows are complete when the worker builds them.
 *
 * An enqueue call writes one row of the log the same way, without the
 * buffering (ledger_insert_row): an INSERT through SPI would check its
 * cached plan and start an executor, which costs the call more than the
 * row.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "nodes/pg_list.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "ledger.h"
#include "bulk.h"

/* Rows buffered before they are written: COPY's figure. */
#define BULK_MAX_ROWS	1000

/*
 * The slots rows are built in outlive the batch: making a slot pins its
 * tuple descriptor in the resource owner, which costs more than building
 * the row.  They use a private copy of the table's descriptor, which no
 * resource owner tracks, and are dropped with the rest of the cache when the
 * extension is dropped.  There is one pool per table a worker writes, a
 * handful, so a list is searched.
 */
typedef struct SlotPool
{
	Oid			relid;
	TupleDesc	desc;
	TupleTableSlot *slots[BULK_MAX_ROWS];
} SlotPool;

static List *pools = NIL;

struct BulkInsert
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	BulkInsertState bistate;
	CommandId	cid;
	SlotPool   *pool;
	int			nbuffered;
};

static SlotPool *
slot_pool(Relation rel)
{
	MemoryContext oldcxt;
	SlotPool   *pool;
	ListCell   *lc;

	foreach(lc, pools)
	{
		pool = lfirst(lc);
		if (pool->relid == RelationGetRelid(rel))
			return pool;
	}

	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	pool = palloc0(sizeof(SlotPool));
	pool->relid = RelationGetRelid(rel);
	pool->desc = CreateTupleDescCopy(RelationGetDescr(rel));
	pools = lappend(pools, pool);
	MemoryContextSwitchTo(oldcxt);
	return pool;
}

/* Forget the slots: the tables they were made for may be gone. */
void
ledger_bulk_reset(void)
{
	ListCell   *lc;
	int			j;

	foreach(lc, pools)
	{
		SlotPool   *pool = lfirst(lc);

		for (j = 0; j < BULK_MAX_ROWS && pool->slots[j]; j++)
			ExecDropSingleTupleTableSlot(pool->slots[j]);
		FreeTupleDesc(pool->desc);
		pfree(pool);
	}
	list_free(pools);
	pools = NIL;
}

BulkInsert *
ledger_bulk_begin(Oid relid)
{
	BulkInsert *bulk = palloc0(sizeof(BulkInsert));

	bulk->rel = table_open(relid, RowExclusiveLock);
	bulk->estate = CreateExecutorState();
	bulk->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(bulk->rri, bulk->rel, 1, NULL, 0);
	ExecOpenIndices(bulk->rri, false);
	bulk->bistate = GetBulkInsertState();
	bulk->cid = GetCurrentCommandId(true);
	bulk->pool = slot_pool(bulk->rel);
	return bulk;
}

static void
bulk_flush(BulkInsert *bulk)
{
	int			i;

	if (bulk->nbuffered == 0)
		return;

	table_multi_insert(bulk->rel, bulk->pool->slots, bulk->nbuffered,
					   bulk->cid, 0, bulk->bistate);
	for (i = 0; i < bulk->nbuffered; i++)
	{
		List	   *recheck;

		ResetPerTupleExprContext(bulk->estate);
		recheck = ExecInsertIndexTuples(bulk->rri, bulk->pool->slots[i],
										bulk->estate, false, false, NULL, NIL);
		list_free(recheck);
		ExecClearTuple(bulk->pool->slots[i]);
	}
	bulk->nbuffered = 0;
}

/*
 * Return the slot of the next row, cleared: the caller fills tts_values and
 * tts_isnull for every column, then calls ledger_bulk_add_row().
 */
TupleTableSlot *
ledger_bulk_next_slot(BulkInsert *bulk)
{
	TupleTableSlot *slot;

	if (bulk->nbuffered == BULK_MAX_ROWS)
		bulk_flush(bulk);
	slot = bulk->pool->slots[bulk->nbuffered];
	if (slot == NULL)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

		slot = bulk->pool->slots[bulk->nbuffered] =
			MakeSingleTupleTableSlot(bulk->pool->desc, &TTSOpsVirtual);
		MemoryContextSwitchTo(oldcxt);
	}
	ExecClearTuple(slot);
	return slot;
}

void
ledger_bulk_add_row(BulkInsert *bulk, TupleTableSlot *slot)
{
	Assert(slot == bulk->pool->slots[bulk->nbuffered]);
	ExecStoreVirtualTuple(slot);
	bulk->nbuffered++;
}

void
ledger_bulk_end(BulkInsert *bulk)
{
	bulk_flush(bulk);
	FreeBulkInsertState(bulk->bistate);
	ExecCloseIndices(bulk->rri);
	FreeExecutorState(bulk->estate);
	table_close(bulk->rel, NoLock);
	pfree(bulk);
}

/*
 * Write one row of a table that has no insert triggers, constraints or
 * defaults: column attnums[i] is values[i] (null if isnull[i]), for ncolumns
 * columns; the others are null.  Its indexes are written too, the primary
 * key checked.
 */
void
ledger_insert_row(Oid relid, const AttrNumber *attnums, const Datum *values,
				  const bool *isnull, int ncolumns)
{
	Relation	rel = table_open(relid, RowExclusiveLock);
	EState	   *estate = CreateExecutorState();
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	TupleTableSlot *slot = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel),
												  &TTSOpsVirtual);
	List	   *recheck;
	int			i;

	/* what the executor would check of an INSERT before running it */
	PreventCommandIfReadOnly("INSERT");
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	memset(slot->tts_isnull, true, sizeof(bool) * slot->tts_tupleDescriptor->natts);
	for (i = 0; i < ncolumns; i++)
	{
		slot->tts_values[attnums[i] - 1] = values[i];
		slot->tts_isnull[attnums[i] - 1] = isnull[i];
	}
	ExecStoreVirtualTuple(slot);
	table_tuple_insert(rel, slot, GetCurrentCommandId(true), 0, NULL);
	recheck = ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL);
	list_free(recheck);
	ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
}
