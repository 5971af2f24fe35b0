/*-------------------------------------------------------------------------
 *
 * batch_rows.c
 *	  The rows a batch writes: legs and breakpoints, credits for other
 *	  buckets and nodes, how holds ended, outcomes, events left for later,
 *	  the new totals of open holds, and the batch's own row.
 *
 * All of it goes straight to the heap and its indexes, a table's rows at a
 * time (bulk.c).  Nothing is updated or deleted.  An event's outcome is
 * written only when the batch does not say it already: an event of the
 * batch's delta is applied unless a row of ledger.outcomes says otherwise.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/sequence.h"
#include "common/int.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/xid8.h"

#include "ledger.h"
#include "bulk.h"
#include "guard.h"
#include "wait.h"
#include "batch.h"

/*
 * Open the batch's outputs; the batch gets its id, and its transaction's id
 * for the credits it logs.
 */
void
ledger_rows_begin(BatchOutput *out, TimestampTz now)
{
	LedgerInstalled *in = &ledger_installed;

	out->now = now;
	out->leg_time = now;
	out->batch_id = nextval_internal(in->batch_seq, false);
	out->txid = FullTransactionIdGetDatum(GetTopFullTransactionId());
	out->legs = ledger_bulk_begin(in->transactions);
	out->credits = ledger_bulk_begin(in->event_log);
	out->breakpoints = ledger_bulk_begin(in->breakpoints);
	out->hold_ends = ledger_bulk_begin(in->hold_ends);
	out->transit = in->cluster_mode ? ledger_bulk_begin(in->transit) : NULL;
	out->outcomes = ledger_bulk_begin(in->outcomes);
	out->deferred = ledger_bulk_begin(in->deferred);
	out->votes = ledger_bulk_begin(in->linked_votes);
	ledger_chain_begin(out);
}

/*
 * The slot of the next row of a table the batch writes, every column not
 * null: the caller sets every value, and the nulls of the few columns that
 * may be.
 */
static TupleTableSlot *
next_row(BulkInsert *bulk)
{
	TupleTableSlot *slot = ledger_bulk_next_slot(bulk);

	memset(slot->tts_isnull, false,
		   sizeof(bool) * slot->tts_tupleDescriptor->natts);
	return slot;
}

static void
write_breakpoint(BatchOutput *out, AccountState *acct)
{
	TupleTableSlot *slot = next_row(out->breakpoints);
	Datum	   *v = slot->tts_values;

	v[BREAKPOINTS_ACCOUNT_ID] = Int64GetDatum(acct->id);
	v[BREAKPOINTS_PREVIOUS_BALANCE] = Int64GetDatum(acct->bp_balance);
	v[BREAKPOINTS_CURRENT_BALANCE] = Int64GetDatum(acct->balance);
	v[BREAKPOINTS_AMOUNT_DIFFERENCE] = Int64GetDatum(acct->balance - acct->bp_balance);
	v[BREAKPOINTS_FIRST_TXN_ID] = Int64GetDatum(acct->bp_first_txn_id);
	v[BREAKPOINTS_LAST_TXN_ID] = Int64GetDatum(acct->last_txn_id);
	/* as of its last leg: an imported history's are in the past */
	v[BREAKPOINTS_CREATED_AT] = TimestampTzGetDatum(out->leg_time);
	ledger_bulk_add_row(out->breakpoints, slot);

	acct->bp_balance = acct->balance;
	acct->bp_first_txn_id = acct->last_txn_id + 1;
	acct->legs_since_bp = 0;
}

/* Post one leg, already checked, and a breakpoint when one is due. */
void
ledger_post_leg(BatchOutput *out, AccountState *acct, int64 event_id,
				int64 amount)
{
	TupleTableSlot *slot;
	Datum	   *v;
	int64		difference;

	Assert(acct->owned);

	/*
	 * A breakpoint records the difference its legs make as a bigint.  An
	 * account that may go negative can swing further than that between two
	 * breakpoints: close the current one early when this leg would.
	 */
	if (acct->last_txn_id >= acct->bp_first_txn_id &&
		pg_sub_s64_overflow(acct->balance + amount, acct->bp_balance, &difference))
		write_breakpoint(out, acct);

	slot = next_row(out->legs);
	v = slot->tts_values;
	ledger_account_set(acct, acct->balance + amount, acct->held);
	acct->last_txn_id = nextval_internal(ledger_installed.transaction_seq, false);
	acct->legs_since_bp++;
	acct->last_leg_at = out->leg_time;
	if (amount < 0)
		ledger_note_debit(acct, -amount, out->now);

	v[TRANSACTIONS_ID] = Int64GetDatum(acct->last_txn_id);
	v[TRANSACTIONS_ACCOUNT_ID] = Int64GetDatum(acct->id);
	v[TRANSACTIONS_EVENT_ID] = Int64GetDatum(event_id);
	v[TRANSACTIONS_AMOUNT] = Int64GetDatum(amount);
	v[TRANSACTIONS_BALANCE_AFTER] = Int64GetDatum(acct->balance);
	v[TRANSACTIONS_CREATED_AT] = TimestampTzGetDatum(out->leg_time);
	ledger_bulk_add_row(out->legs, slot);
	ledger_chain_leg(out, acct->last_txn_id, acct->id, event_id, amount,
					 acct->balance, out->leg_time);

	if (acct->legs_since_bp >= ledger_breakpoint_interval)
		write_breakpoint(out, acct);
}

/*
 * An event is decided.  Only what the batch does not say itself is
 * written: a rejection, with its reason, and the outcome of an event an
 * earlier batch left for later.
 */
void
ledger_record_outcome(BatchOutput *out, QueuedEvent *ev, const char *reason)
{
	if (reason != NULL || ev->was_deferred)
	{
		TupleTableSlot *slot = next_row(out->outcomes);
		Datum	   *v = slot->tts_values;

		v[OUTCOMES_EVENT_ID] = Int64GetDatum(ev->row_id);
		v[OUTCOMES_STATUS] = CharGetDatum(reason ? LEDGER_REJECTED : LEDGER_APPLIED);
		v[OUTCOMES_REASON] = reason ? CStringGetTextDatum(reason) : (Datum) 0;
		slot->tts_isnull[OUTCOMES_REASON] = reason == NULL;
		v[OUTCOMES_BATCH_ID] = Int64GetDatum(out->batch_id);
		v[OUTCOMES_DECIDED_AT] = TimestampTzGetDatum(out->now);
		ledger_bulk_add_row(out->outcomes, slot);
		ledger_chain_outcome(out, ev->row_id,
							 reason ? LEDGER_REJECTED : LEDGER_APPLIED, reason);
	}

	/*
	 * No longer pending for the spam guard.  Counted off before the commit
	 * rather than after: should the batch fail, the event is left uncounted
	 * (let through), where a worker dying after the commit would leave it
	 * counted for good (refused).  A credit was never counted.
	 */
	if (ev->kind == LEDGER_CREDIT)
		return;
	ledger_guard_release(ev->account_id);
	if (ev->kind == LEDGER_POST || ev->kind == LEDGER_VOID)
		ledger_guard_release(-ev->hold_id);
}

/* An event is left for later: a row says so, the first time. */
void
ledger_record_deferral(BatchOutput *out, BucketState *b, QueuedEvent *ev)
{
	ledger_delta_defer(b, ev->row_id);
	if (!ev->was_deferred)
	{
		TupleTableSlot *slot = next_row(out->deferred);
		Datum	   *v = slot->tts_values;

		v[DEFERRED_EVENT_ID] = Int64GetDatum(ev->row_id);
		v[DEFERRED_BUCKET] = Int32GetDatum(b->bucket);
		v[DEFERRED_BATCH_ID] = Int64GetDatum(out->batch_id);
		v[DEFERRED_DEFERRED_AT] = TimestampTzGetDatum(out->now);
		ledger_bulk_add_row(out->deferred, slot);
	}
}

/* The payees of an event that one credit entry or transit row carries. */
typedef struct CreditShare
{
	Datum		to_accounts;	/* bigint[] */
	Datum		amounts;		/* bigint[] */
	int64		total;
} CreditShare;

/*
 * Gather the payees not handled yet (done[] false) that are where
 * payees[first] is: the same bucket of this node, or the same other node.
 * Marks them done.
 */
static CreditShare
gather_credit(QueuedEvent *ev, AccountState **payees, int first, bool *done)
{
	AccountState *where = payees[first];
	Datum	   *to = palloc(sizeof(Datum) * (ev->npayees - first));
	Datum	   *amounts = palloc(sizeof(Datum) * (ev->npayees - first));
	CreditShare share = {0};
	int			n = 0;
	int			p;

	for (p = first; p < ev->npayees; p++)
	{
		if (done[p] || payees[p]->node != where->node ||
			(where->node == 0 && payees[p]->bucket != where->bucket))
			continue;
		to[n] = Int64GetDatum(ev->payees[p]);
		amounts[n] = Int64GetDatum(ev->amounts[p]);
		share.total += ev->amounts[p];	/* no overflow: checked at enqueue */
		done[p] = true;
		n++;
	}
	share.to_accounts = ledger_bigint_array(to, n);
	share.amounts = ledger_bigint_array(amounts, n);
	return share;
}

/*
 * Send to another node of the cluster the credit legs of an event for the
 * payees that node holds, as a row of ledger.transit that logical
 * replication carries there.
 */
static void
send_credit(BatchOutput *out, QueuedEvent *ev, AccountState **payees,
			int first, bool *done)
{
	AccountState *where = payees[first];
	CreditShare share = gather_credit(ev, payees, first, done);
	TupleTableSlot *slot = next_row(out->transit);
	Datum	   *v = slot->tts_values;

	v[TRANSIT_SOURCE_NODE] = Int32GetDatum(ledger_node_id);
	v[TRANSIT_ID] = Int64GetDatum(nextval_internal(ledger_installed.event_seq, false));
	v[TRANSIT_TARGET_NODE] = Int32GetDatum(where->node);
	v[TRANSIT_EVENT_ID] = Int64GetDatum(ev->id);
	v[TRANSIT_PAYER] = Int64GetDatum(ev->account_id);
	v[TRANSIT_CURRENCY] = CStringGetTextDatum(where->currency_code);
	v[TRANSIT_TO_ACCOUNTS] = share.to_accounts;
	v[TRANSIT_AMOUNTS] = share.amounts;
	v[TRANSIT_AMOUNT] = Int64GetDatum(share.total);
	v[TRANSIT_CREATED_AT] = TimestampTzGetDatum(out->now);
	ledger_bulk_add_row(out->transit, slot);
}

/*
 * Log, for another bucket of this node, the credit legs of an event for the
 * payees that bucket holds: a credit event of the log, under the batch's
 * transaction, which that bucket's worker reads once the batch commits.
 */
static void
queue_credit(BatchOutput *out, QueuedEvent *ev, AccountState **payees,
			 int first, bool *done)
{
	int			bucket = payees[first]->bucket;
	CreditShare share = gather_credit(ev, payees, first, done);
	TupleTableSlot *slot = ledger_bulk_next_slot(out->credits);
	Datum	   *v = slot->tts_values;
	bool	   *isnull = slot->tts_isnull;

	memset(isnull, true, sizeof(bool) * LOG_NATTS);
	v[LOG_ID] = Int64GetDatum(nextval_internal(ledger_installed.event_seq, false));
	v[LOG_KIND] = CharGetDatum(LEDGER_CREDIT);
	v[LOG_ACCOUNT_ID] = Int64GetDatum(ev->account_id);
	v[LOG_AMOUNT] = Int64GetDatum(share.total);
	v[LOG_TO_ACCOUNTS] = share.to_accounts;
	v[LOG_AMOUNTS] = share.amounts;
	v[LOG_ENQUEUED_AT] = TimestampTzGetDatum(out->now);
	v[LOG_BUCKET] = Int32GetDatum(bucket);
	v[LOG_TXID] = out->txid;
	v[LOG_CREDIT_OF] = Int64GetDatum(ev->id);
	/* an imported event's credit is posted at the event's time too */
	v[LOG_OCCURRED_AT] = TimestampTzGetDatum(ev->occurred_at);
	isnull[LOG_OCCURRED_AT] = ev->occurred_at == 0;
	isnull[LOG_ID] = isnull[LOG_KIND] = isnull[LOG_ACCOUNT_ID] = false;
	isnull[LOG_AMOUNT] = isnull[LOG_TO_ACCOUNTS] = isnull[LOG_AMOUNTS] = false;
	isnull[LOG_ENQUEUED_AT] = isnull[LOG_BUCKET] = isnull[LOG_TXID] = false;
	isnull[LOG_CREDIT_OF] = false;
	ledger_bulk_add_row(out->credits, slot);

	ledger_wake_at_commit(bucket);
}

/*
 * Send the credit legs of an event for the payees that are where
 * payees[first] is, in another bucket or on another node; marks them done.
 */
void
ledger_credit_elsewhere(BatchOutput *out, QueuedEvent *ev,
						AccountState **payees, int first, bool *done)
{
	if (payees[first]->node != 0)
		send_credit(out, ev, payees, first, done);
	else
		queue_credit(out, ev, payees, first, done);
}

/* Record how a hold ended: posted (with the post), voided, or expired. */
void
ledger_end_hold(BatchOutput *out, HoldState *hold, char status,
				int64 event_id, int64 posted)
{
	TupleTableSlot *slot = next_row(out->hold_ends);
	Datum	   *v = slot->tts_values;
	AccountState *payer = ledger_find_account(hold->account_id);

	v[HOLD_ENDS_HOLD_ID] = Int64GetDatum(hold->id);
	v[HOLD_ENDS_ACCOUNT_ID] = Int64GetDatum(hold->account_id);
	v[HOLD_ENDS_STATUS] = CharGetDatum(status);
	v[HOLD_ENDS_EVENT_ID] = Int64GetDatum(event_id);
	slot->tts_isnull[HOLD_ENDS_EVENT_ID] = event_id == 0;
	v[HOLD_ENDS_AMOUNT] = Int64GetDatum(posted);
	v[HOLD_ENDS_ENDED_AT] = TimestampTzGetDatum(out->now);
	ledger_bulk_add_row(out->hold_ends, slot);

	/*
	 * The payer was loaded with the batch's accounts, or by expire_holds();
	 * only a database restored in pieces could lack it.
	 */
	if (payer != NULL && payer->owned)
		ledger_account_set(payer, payer->balance, payer->held - hold->amount);
	ledger_hold_ended(hold, status);
}

/* Record the new totals of the accounts whose open holds changed. */
static void
write_held(BatchOutput *out)
{
	int			n;
	AccountState **changed = ledger_accounts_held_changed(&n);
	BulkInsert *bulk;
	int			i;

	if (n == 0)
		return;
	bulk = ledger_bulk_begin(ledger_installed.account_holds);
	for (i = 0; i < n; i++)
	{
		TupleTableSlot *slot = next_row(bulk);
		Datum	   *v = slot->tts_values;

		v[ACCOUNT_HOLDS_ACCOUNT_ID] = Int64GetDatum(changed[i]->id);
		v[ACCOUNT_HOLDS_ID] = Int64GetDatum(nextval_internal(ledger_installed.transaction_seq, false));
		v[ACCOUNT_HOLDS_HELD] = Int64GetDatum(changed[i]->held);
		v[ACCOUNT_HOLDS_CHANGED_AT] = TimestampTzGetDatum(out->now);
		ledger_bulk_add_row(bulk, slot);
	}
	ledger_bulk_end(bulk);
}

/* Write out what the batch's decisions left in its outputs. */
void
ledger_rows_end(BatchOutput *out)
{
	ledger_bulk_end(out->legs);
	ledger_bulk_end(out->credits);
	ledger_bulk_end(out->breakpoints);
	ledger_bulk_end(out->hold_ends);
	if (out->transit)
		ledger_bulk_end(out->transit);
	ledger_bulk_end(out->outcomes);
	ledger_bulk_end(out->deferred);
	ledger_bulk_end(out->votes);
	write_held(out);
}

/* A linked transfer has checked its payer and set its amount aside. */
void
ledger_record_vote(BatchOutput *out, QueuedEvent *ev)
{
	TupleTableSlot *slot = next_row(out->votes);
	Datum	   *v = slot->tts_values;

	v[LINKED_VOTES_EVENT_ID] = Int64GetDatum(ev->row_id);
	v[LINKED_VOTES_BATCH_ID] = Int64GetDatum(out->batch_id);
	v[LINKED_VOTES_VOTED_AT] = TimestampTzGetDatum(out->now);
	ledger_bulk_add_row(out->votes, slot);
}

/*
 * Write the batch's own row: its delta, how far it got, what it did, and
 * its link of the bucket's hash chain.
 */
void
ledger_write_batch(BatchOutput *out, BucketState *b, bool delta_done,
				   LedgerBatchCounts *counts)
{
	BulkInsert *bulk = ledger_bulk_begin(ledger_installed.batches);
	TupleTableSlot *slot = next_row(bulk);
	Datum	   *v = slot->tts_values;
	int			applied = counts->applied + counts->credits;

	v[BATCHES_BUCKET] = Int32GetDatum(b->bucket);
	v[BATCHES_ID] = Int64GetDatum(out->batch_id);
	v[BATCHES_PREV] = b->prev;
	v[BATCHES_CUR] = b->cur;
	v[BATCHES_CUR_XMAX] = DirectFunctionCall1(pg_snapshot_xmax, b->cur);
	v[BATCHES_CURSOR_TXID] = b->cursor_txid;
	v[BATCHES_CURSOR_ID] = Int64GetDatum(b->cursor_id);
	slot->tts_isnull[BATCHES_CURSOR_TXID] = delta_done;
	slot->tts_isnull[BATCHES_CURSOR_ID] = delta_done;
	v[BATCHES_DECIDED_AT] = TimestampTzGetDatum(out->now);
	v[BATCHES_APPLIED] = Int32GetDatum(applied);
	v[BATCHES_REJECTED] = Int32GetDatum(counts->rejected);
	ledger_chain_end(out, b->bucket, applied, counts->rejected, v, slot->tts_isnull);
	ledger_bulk_add_row(bulk, slot);
	ledger_bulk_end(bulk);
}
