/*-------------------------------------------------------------------------
 *
 * guard.h
 *	  The spam guard: counts of pending events per payer, in shared memory
 *	  (guard.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_GUARD_H
#define LEDGER_GUARD_H

#include "ledger.h"

extern void ledger_guard_init(void);
extern void ledger_guard_check(int64 payer, int adding);
extern uint32 ledger_guard_count(int64 key);
extern void ledger_guard_add(int64 payer, int count);
extern void ledger_guard_release(int64 payer);
extern void ledger_guard_forget(void);

#endif							/* LEDGER_GUARD_H */
