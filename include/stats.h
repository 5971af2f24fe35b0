/*-------------------------------------------------------------------------
 *
 * stats.h
 *	  What each worker tells ledger_stats, and its pause flag (stats.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_STATS_H
#define LEDGER_STATS_H

#include "ledger.h"

extern void ledger_set_state(int worker, LedgerWorkerState state);
extern bool ledger_is_paused(int worker);
extern void ledger_count_batch(int worker, const LedgerBatchCounts *counts, double ms);

#endif							/* LEDGER_STATS_H */
