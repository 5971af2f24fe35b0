/*-------------------------------------------------------------------------
 *
 * apply.h
 *	  What a bucket worker keeps between batches: its accounts and its open
 *	  holds (accounts.c, holds.c).  Private to the worker's source files.
 *
 * Both caches can be trusted because every leg and every hold of an
 * account is written by the worker of the account's bucket, that is by this
 * process.  If a batch fails the worker exits, and with it the caches.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_APPLY_H
#define LEDGER_APPLY_H

#include "utils/timestamp.h"

#include "ledger.h"

/* No limit of this kind (limits are never negative). */
#define LEDGER_NO_LIMIT		(-1)

/* The debits of an account over the last 24 hours (accounts.c). */
typedef struct DebitWindow DebitWindow;

/* What the accounts of a bucket owe in a currency (accounts.c). */
typedef struct Supply Supply;

/* What this worker knows of an account. */
typedef struct AccountState
{
	int64		id;				/* hash key */
	int32		bucket;
	int32		currency;
	bool		allow_negative;
	bool		owned;			/* its legs are ours to post; the rest is valid */
	int64		balance;
	int64		held;			/* open holds, reserved out of the balance */
	int64		last_txn_id;	/* its newest leg, or 0 */
	TimestampTz last_leg_at;	/* and its time */
	bool		closed;			/* closed (ledger_close_account()) */
	int64		bp_balance;		/* balance at its newest breakpoint */
	int64		bp_first_txn_id;	/* first leg id the next breakpoint covers */
	int32		legs_since_bp;
	/* limits, or LEDGER_NO_LIMIT */
	int64		overdraft_limit;
	int64		max_amount;
	int64		daily_debit_limit;
	DebitWindow *window;		/* when there is a daily debit limit */
	Supply	   *supply;			/* its bucket's and currency's, if owned */
	bool		held_changed;	/* held changed in this batch */
	/* an account of another node of a cluster: not owned, bucket -1 */
	int32		node;			/* or 0: this node's */
	char		currency_code[LEDGER_MAX_CURRENCY_LENGTH + 1];
} AccountState;

/* An applied hold this worker knows of. */
typedef struct HoldState
{
	int64		id;				/* hash key: the hold's event id */
	int64		account_id;
	int64		to_account;
	int64		amount;
	TimestampTz expires_at;		/* or 0: never */
	char		state;			/* 'o' open, or how it ended in this batch */
} HoldState;

#define LEDGER_HOLD_OPEN	'o'
#define LEDGER_HOLD_REJECTED	'r'	/* its event was rejected in this batch */

/* accounts.c */
extern void ledger_accounts_reset(void);
extern AccountState *ledger_find_account(int64 account_id);
extern void ledger_load_accounts(int64 *ids, int nids, int worker,
								 bool in_cluster, TimestampTz now);
extern void ledger_supply_load(int worker);
extern void ledger_supply_reset(void);
extern void ledger_account_set(AccountState *acct, int64 balance, int64 held);
extern AccountState **ledger_accounts_held_changed(int *n);
extern bool ledger_can_debit(AccountState *acct, int64 amount, TimestampTz now,
							 const char **reason);
extern bool ledger_can_credit(AccountState *acct, int64 amount,
							  const char **reason);
extern void ledger_note_debit(AccountState *acct, int64 amount, TimestampTz at);

/* holds.c */
extern void ledger_holds_reset(void);
extern void ledger_holds_load(int worker);
extern HoldState *ledger_hold_find(int64 hold_id);
extern void ledger_hold_ended(HoldState *hold, char state);
extern HoldState *ledger_hold_add(int64 hold_id, int64 account_id,
								  int64 to_account, int64 amount,
								  TimestampTz expires_at, char state);
extern bool ledger_holds_any_due(TimestampTz now);
extern HoldState **ledger_holds_due(TimestampTz now, int *ndue);
extern void ledger_holds_end_batch(void);
extern const char *ledger_hold_gone_reason(int64 hold_id);
extern const char *ledger_hold_end_reason(char state);

#endif							/* LEDGER_APPLY_H */
