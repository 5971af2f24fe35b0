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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "executor/executor.h"
#include "nodes/execnodes.h"
#include "utils/rel.h"

#include "ledger.h"

/* Rows buffered before they are written: COPY's figure. */
#define BULK_MAX_ROWS	1000

struct BulkInsert
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	BulkInsertState bistate;
	CommandId	cid;
	int			nbuffered;
	TupleTableSlot *slots[BULK_MAX_ROWS];
};

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
	return bulk;
}

static void
bulk_flush(BulkInsert *bulk)
{
	int			i;

	if (bulk->nbuffered == 0)
		return;

	table_multi_insert(bulk->rel, bulk->slots, bulk->nbuffered, bulk->cid, 0,
					   bulk->bistate);
	for (i = 0; i < bulk->nbuffered; i++)
	{
		List	   *recheck;

		ResetPerTupleExprContext(bulk->estate);
		recheck = ExecInsertIndexTuples(bulk->rri, bulk->slots[i], bulk->estate,
										false, false, NULL, NIL);
		list_free(recheck);
		ExecClearTuple(bulk->slots[i]);
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
	slot = bulk->slots[bulk->nbuffered];
	if (slot == NULL)
		slot = bulk->slots[bulk->nbuffered] =
			MakeSingleTupleTableSlot(RelationGetDescr(bulk->rel), &TTSOpsVirtual);
	ExecClearTuple(slot);
	return slot;
}

void
ledger_bulk_add_row(BulkInsert *bulk, TupleTableSlot *slot)
{
	Assert(slot == bulk->slots[bulk->nbuffered]);
	ExecStoreVirtualTuple(slot);
	bulk->nbuffered++;
}

void
ledger_bulk_end(BulkInsert *bulk)
{
	int			i;

	bulk_flush(bulk);
	for (i = 0; i < BULK_MAX_ROWS && bulk->slots[i]; i++)
		ExecDropSingleTupleTableSlot(bulk->slots[i]);
	FreeBulkInsertState(bulk->bistate);
	ExecCloseIndices(bulk->rri);
	FreeExecutorState(bulk->estate);
	table_close(bulk->rel, NoLock);
	pfree(bulk);
}

/*
 * Delete rows by their tids.  Used on the queue, whose rows of a bucket only
 * that bucket's worker deletes: a row changed by anyone else is an error.
 */
void
ledger_bulk_delete(Oid relid, ItemPointerData *tids, int ntids)
{
	Relation	rel = table_open(relid, RowExclusiveLock);
	int			i;

	for (i = 0; i < ntids; i++)
		simple_heap_delete(rel, &tids[i]);
	table_close(rel, NoLock);
}
