/*-------------------------------------------------------------------------
 *
 * batch.h
 *	  A batch as the bucket worker's source files share it: the tables it
 *	  reads and writes, the events it reads, the rows it writes.  Private to
 *	  the worker.
 *
 * A batch goes through four files, one job each:
 *   installed.c	what is installed: the tables, checked once, and a
 *					restored ledger's take-over
 *   delta.c		which events a batch reads, and in which order
 *   decide.c		whether each event is applied, rejected or left for later
 *   batch_rows.c	the rows that say so: legs, credits, outcomes, the batch's
 * and apply.c runs them, one batch at a time.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_BATCH_H
#define LEDGER_BATCH_H

#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "apply.h"
#include "bulk.h"

/*
 * The columns of the tables a batch writes, in order: rows are built for
 * them column by column.  installed.c checks the catalog against them once
 * per installation, so that a library and a schema that disagree stop the
 * worker instead of writing garbage.
 */
enum
{
	LOG_ID, LOG_KIND, LOG_ACCOUNT_ID, LOG_TO_ACCOUNT, LOG_AMOUNT,
	LOG_TO_ACCOUNTS, LOG_AMOUNTS, LOG_STATUS, LOG_REASON, LOG_ENQUEUED_AT,
	LOG_APPLIED_AT, LOG_HOLD_ID, LOG_EXPIRES_AT, LOG_METADATA, LOG_BUCKET,
	LOG_TXID, LOG_WAITS_FROM, LOG_CREDIT_OF, LOG_OCCURRED_AT, LOG_LINK_OF,
	LOG_NATTS
};

enum
{
	BATCHES_BUCKET, BATCHES_ID, BATCHES_PREV, BATCHES_CUR, BATCHES_CUR_XMAX,
	BATCHES_CURSOR_TXID, BATCHES_CURSOR_ID, BATCHES_DECIDED_AT,
	BATCHES_APPLIED, BATCHES_REJECTED, BATCHES_FIRST_LEG, BATCHES_LAST_LEG,
	BATCHES_HASH, BATCHES_NATTS
};

enum
{
	OUTCOMES_EVENT_ID, OUTCOMES_STATUS, OUTCOMES_REASON, OUTCOMES_BATCH_ID,
	OUTCOMES_DECIDED_AT, OUTCOMES_NATTS
};

enum
{
	DEFERRED_EVENT_ID, DEFERRED_BUCKET, DEFERRED_BATCH_ID, DEFERRED_DEFERRED_AT,
	DEFERRED_NATTS
};

enum
{
	TRANSACTIONS_ID, TRANSACTIONS_ACCOUNT_ID, TRANSACTIONS_EVENT_ID,
	TRANSACTIONS_AMOUNT, TRANSACTIONS_BALANCE_AFTER, TRANSACTIONS_CREATED_AT,
	TRANSACTIONS_NATTS
};

enum
{
	BREAKPOINTS_ACCOUNT_ID, BREAKPOINTS_PREVIOUS_BALANCE,
	BREAKPOINTS_CURRENT_BALANCE, BREAKPOINTS_AMOUNT_DIFFERENCE,
	BREAKPOINTS_FIRST_TXN_ID, BREAKPOINTS_LAST_TXN_ID, BREAKPOINTS_CREATED_AT,
	BREAKPOINTS_NATTS
};

enum
{
	HOLD_ENDS_HOLD_ID, HOLD_ENDS_ACCOUNT_ID, HOLD_ENDS_STATUS,
	HOLD_ENDS_EVENT_ID, HOLD_ENDS_AMOUNT, HOLD_ENDS_ENDED_AT, HOLD_ENDS_NATTS
};

enum
{
	ACCOUNT_HOLDS_ACCOUNT_ID, ACCOUNT_HOLDS_ID, ACCOUNT_HOLDS_HELD,
	ACCOUNT_HOLDS_CHANGED_AT, ACCOUNT_HOLDS_NATTS
};

enum
{
	TRANSIT_SOURCE_NODE, TRANSIT_ID, TRANSIT_TARGET_NODE, TRANSIT_EVENT_ID,
	TRANSIT_PAYER, TRANSIT_CURRENCY, TRANSIT_TO_ACCOUNTS, TRANSIT_AMOUNTS,
	TRANSIT_AMOUNT, TRANSIT_CREATED_AT, TRANSIT_NATTS
};

/*
 * What the worker found installed (installed.c): valid from
 * ledger_prepare_worker() until ledger_apply_reset().
 */
typedef struct LedgerInstalled
{
	int			worker;			/* the worker this process is */
	bool		cluster_mode;	/* a node of a cluster */
	int64		base_id;		/* events up to it are read by id only */
	Oid			transaction_seq;
	Oid			event_seq;
	Oid			batch_seq;
	Oid			event_log;
	Oid			event_log_delta_index;
	Oid			batches;
	Oid			outcomes;
	Oid			deferred;
	Oid			transactions;
	Oid			breakpoints;
	Oid			hold_ends;
	Oid			account_holds;
	Oid			linked_votes;
	Oid			transit;		/* InvalidOid but in a cluster */
} LedgerInstalled;

extern LedgerInstalled ledger_installed;

/* An event of the log a batch decides. */
typedef struct QueuedEvent
{
	int64		row_id;			/* its row's id: a credit has one of its own */
	int64		id;				/* the event's: a credit's is the one it completes */
	char		kind;
	int64		account_id;
	int64		amount;
	int64		hold_id;		/* post and void */
	TimestampTz expires_at;		/* hold, or 0 */
	int64		waits_from;		/* see order.c; or 0 */
	Datum		txid;			/* xid8 */
	bool		was_deferred;	/* left for later by an earlier batch */
	TimestampTz occurred_at;	/* imported: when it happened; else 0 */
	int64		link_of;		/* a linked transfer's group, or 0 */
	char		transfer_state; /* an imported credit's transfer, see import.c */
	int			npayees;		/* transfers, disbursements, credits, posts */
	int64	   *payees;
	int64	   *amounts;
} QueuedEvent;

/*
 * A bucket this worker serves (its own, or one left from a larger setting
 * of ledger.buckets), and the delta it is applying.
 */
typedef struct BucketState
{
	int			bucket;
	Datum		prev;			/* pg_snapshot: where the last delta ended */
	Datum		cur;			/* the delta's own, or 0 before it starts */
	Datum		cursor_txid;	/* (xid8, id) of the last event of the delta */
	int64		cursor_id;		/* decided; cursor_txid 0 before the first */
	int64	   *deferred;		/* the events left for later, in order */
	int			ndeferred;
	int			maxdeferred;
} BucketState;

/* Where a batch's rows go. */
typedef struct BatchOutput
{
	BulkInsert *legs;
	BulkInsert *credits;
	BulkInsert *breakpoints;
	BulkInsert *hold_ends;
	BulkInsert *transit;		/* NULL but in a cluster */
	BulkInsert *outcomes;
	BulkInsert *deferred;
	BulkInsert *votes;
	int64		batch_id;
	Datum		txid;			/* the batch's own (xid8), for its credits */
	TimestampTz now;
	TimestampTz leg_time;		/* the time of the legs being posted */
	struct BatchChain *chain;	/* chain.c */
} BatchOutput;

/*
 * The accounts whose events wait in this batch: their later ones wait too.
 * And the payees of this bucket's linked transfers that voted and wait for
 * their group: a close of one waits for the group's decision.
 */
typedef struct Waiting
{
	HTAB	   *accounts;
	HTAB	   *promised;
} Waiting;

enum
{
	LINKED_VOTES_EVENT_ID, LINKED_VOTES_BATCH_ID, LINKED_VOTES_VOTED_AT,
	LINKED_VOTES_NATTS
};

/* delta.c */
extern void ledger_serve_buckets(void);
extern int	ledger_served_buckets(void);
extern BucketState *ledger_served_bucket(int index);
extern void ledger_delta_begin(BucketState *b);
extern QueuedEvent *ledger_fetch_batch(BucketState *b, int batch_size,
									   int *nevents, bool *more);
extern void ledger_delta_defer(BucketState *b, int64 event_id);
extern void ledger_delta_end(BucketState *b);
extern void ledger_delta_reset(void);

/* decide.c */
extern void ledger_load_batch_accounts(QueuedEvent *events, int nevents,
									   TimestampTz now);
extern bool ledger_must_wait(Waiting *w, BucketState *b, QueuedEvent *ev,
							 TimestampTz now);
extern void ledger_note_promised(Waiting *w, QueuedEvent *ev);
extern bool ledger_imported_credit_waits(Waiting *w, QueuedEvent *ev);
extern const char *ledger_decide(BatchOutput *out, QueuedEvent *ev);
extern const char *ledger_find_payees(QueuedEvent *ev, AccountState **payees);
extern void ledger_pay(BatchOutput *out, QueuedEvent *ev, AccountState *payer,
					   AccountState **payees);
extern bool ledger_apply_credit(BatchOutput *out, QueuedEvent *ev);
extern int	ledger_expire_holds(BatchOutput *out);
extern void ledger_decide_reset(void);

/* linked.c */
extern const char *ledger_decide_linked(BatchOutput *out, BucketState *b,
										Waiting *w, QueuedEvent *ev, bool *wait);
extern void ledger_linked_reset(void);

/* import.c */
extern void ledger_import_read_transfers(QueuedEvent *events, int nevents);
extern void ledger_import_decided(QueuedEvent *ev);
extern void ledger_import_reset(void);

/* chain.c */
extern void ledger_chain_begin(BatchOutput *out);
extern void ledger_chain_leg(BatchOutput *out, int64 id, int64 account_id,
							 int64 event_id, int64 amount, int64 balance_after,
							 TimestampTz created_at);
extern void ledger_chain_outcome(BatchOutput *out, int64 event_id, char status,
								 const char *reason);
extern bool ledger_chain_any(BatchOutput *out);
extern void ledger_chain_end(BatchOutput *out, int bucket, int applied,
							 int rejected, Datum *values, bool *isnull);
extern void ledger_chain_reset(void);

/* batch_rows.c */
extern void ledger_rows_begin(BatchOutput *out, TimestampTz now);
extern void ledger_rows_end(BatchOutput *out);
extern void ledger_post_leg(BatchOutput *out, AccountState *acct,
							int64 event_id, int64 amount);
extern void ledger_credit_elsewhere(BatchOutput *out, QueuedEvent *ev,
									AccountState **payees, int first,
									bool *done);
extern void ledger_end_hold(BatchOutput *out, HoldState *hold, char status,
							int64 event_id, int64 posted);
extern void ledger_record_outcome(BatchOutput *out, QueuedEvent *ev,
								  const char *reason);
extern void ledger_record_deferral(BatchOutput *out, BucketState *b,
								   QueuedEvent *ev);
extern void ledger_record_vote(BatchOutput *out, QueuedEvent *ev);
extern void ledger_write_batch(BatchOutput *out, BucketState *b,
							   bool delta_done, LedgerBatchCounts *counts);

#endif							/* LEDGER_BATCH_H */
