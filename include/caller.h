/*-------------------------------------------------------------------------
 *
 * caller.h
 *	  Running an enqueue function as the extension's owner, and checking
 *	  what its caller may debit (caller.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_CALLER_H
#define LEDGER_CALLER_H

#include "ledger.h"

/* An enqueue function running as the extension's owner (caller.c). */
typedef struct LedgerCall
{
	Oid			caller;			/* current_user when it was called */
	Oid			save_userid;
	int			save_sec_context;
} LedgerCall;

extern void ledger_call_begin(FunctionCallInfo fcinfo, LedgerCall *call);
extern void ledger_call_end(LedgerCall *call);
extern void ledger_check_debit(LedgerCall *call, int64 account_id, Oid owner);

#endif							/* LEDGER_CALLER_H */
