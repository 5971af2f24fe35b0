/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The bucket worker: its main loop (worker.c), and what it asks of the
 *	  files that apply a batch (installed.c, apply.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_WORKER_H
#define LEDGER_WORKER_H

#include "ledger.h"

/* worker.c */
extern PGDLLEXPORT void ledger_worker_main(Datum main_arg);

/* installed.c */
extern LedgerSchema ledger_prepare_worker(int worker, uint64 limits_before,
										  uint64 limits_after, int *nbuckets);
extern void ledger_apply_reset(void);

/* apply.c */
extern void ledger_apply_batch(int index, int batch_size, LedgerBatchCounts *counts);

#endif							/* LEDGER_WORKER_H */
