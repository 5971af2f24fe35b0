/*-------------------------------------------------------------------------
 *
 * order.h
 *	  Keeping a transaction's events in order across buckets (order.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_ORDER_H
#define LEDGER_ORDER_H

#include "ledger.h"

extern void ledger_note_credit(int64 account_id, int64 event_id);
extern int64 ledger_credited_from(int64 account_id);

#endif							/* LEDGER_ORDER_H */
