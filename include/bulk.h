/*-------------------------------------------------------------------------
 *
 * bulk.h
 *	  Writing rows straight to a table's heap and indexes, a table's rows at
 *	  a time (bulk.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_BULK_H
#define LEDGER_BULK_H

#include "ledger.h"

typedef struct BulkInsert BulkInsert;

extern BulkInsert *ledger_bulk_begin(Oid relid);
extern TupleTableSlot *ledger_bulk_next_slot(BulkInsert *bulk);
extern void ledger_bulk_add_row(BulkInsert *bulk, TupleTableSlot *slot);
extern void ledger_bulk_end(BulkInsert *bulk);
extern void ledger_bulk_reset(void);
extern void ledger_insert_row(Oid relid, const AttrNumber *attnums,
							  const Datum *values, const bool *isnull,
							  int ncolumns);

#endif							/* LEDGER_BULK_H */
