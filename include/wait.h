/*-------------------------------------------------------------------------
 *
 * wait.h
 *	  Waking workers when a transaction commits, and waking the backends
 *	  waiting for them (wait.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_WAIT_H
#define LEDGER_WAIT_H

#include "ledger.h"

extern void ledger_wake_at_commit(int bucket);
extern void ledger_wake_worker(int worker);
extern void ledger_announce_batch(void);
extern void ledger_limits_changed_at_commit(void);

#endif							/* LEDGER_WAIT_H */
