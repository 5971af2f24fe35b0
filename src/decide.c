/*-------------------------------------------------------------------------
 *
 * decide.c
 *	  Deciding the events of a batch: applied, rejected (and why), or left
 *	  for later.
 *
 * The events are decided here, in C, one at a time in the order delta.c
 * read them, because each depends on the balances the previous ones left.
 * Balances come from a cache of account state kept across batches
 * (accounts.c), holds from a cache of the open ones (holds.c).  They can be
 * trusted because every leg and hold of an account is written by the worker
 * of the account's bucket, that is by this process: debits and same-bucket
 * credits while applying the paying event, cross-bucket credits while
 * applying the credit entries other buckets queued here.  What a decision
 * writes goes through batch_rows.c.
 *
 * Two kinds of entries stay queued past their turn, neither of them work
 * the worker spins on: a debit that must wait for the credits earlier
 * events of its transaction send its payer from other buckets (order.c),
 * with every later event of the accounts it names; and, in a ledger that
 * was over the supply bound before 1.5, a credit that would overflow its
 * payee.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "ledger.h"
#include "wait.h"
#include "batch.h"

/* Credits held back that were reported already: reported once each. */
static HTAB *reported_credits = NULL;

static SPIPlanPtr awaited_plan = NULL;

/* Forget the plan and the reports: the extension was dropped or created again. */
void
ledger_decide_reset(void)
{
	ledger_free_plan(&awaited_plan);
	if (reported_credits)
		hash_destroy(reported_credits);
	reported_credits = NULL;
}

/* Accounts */

/* Open an external account that should exist but does not. */
static void
create_external_account(int bucket, int currency)
{
	Oid			argtypes[2] = {INT4OID, INT4OID};
	Datum		args[2];

	args[0] = Int32GetDatum(bucket);
	args[1] = Int32GetDatum(currency);
	if (SPI_execute_with_args("INSERT INTO ledger.accounts (id, allow_negative, bucket, currency)"
							  " VALUES (ledger.external_account($1, $2), true, $1, $2)"
							  " ON CONFLICT (id) DO NOTHING",
							  2, argtypes, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not create the external account of bucket %d", bucket);
}

/*
 * Load the accounts a batch names that the cache does not hold yet, and the
 * external accounts its deposits and withdrawals need: those of the bucket
 * in the accounts' currencies, known once the accounts are loaded.
 */
void
ledger_load_batch_accounts(QueuedEvent *events, int nevents, TimestampTz now)
{
	int64	   *ids;
	int			nids = 0;
	int			maxids = 1;
	int			e;
	int			p;

	for (e = 0; e < nevents; e++)
		maxids += 1 + events[e].npayees;
	ids = palloc(sizeof(int64) * maxids);
	for (e = 0; e < nevents; e++)
	{
		ids[nids++] = events[e].account_id;
		for (p = 0; p < events[e].npayees; p++)
			ids[nids++] = events[e].payees[p];
	}
	ledger_load_accounts(ids, nids, ledger_installed.worker,
						 ledger_installed.cluster_mode, now);

	nids = 0;
	for (e = 0; e < nevents; e++)
	{
		AccountState *acct;

		if (events[e].kind != LEDGER_DEPOSIT && events[e].kind != LEDGER_WITHDRAW)
			continue;
		acct = ledger_find_account(events[e].account_id);
		if (acct != NULL && acct->owned)
			ids[nids++] = LEDGER_EXTERNAL_ACCOUNT(acct->bucket, acct->currency);
	}
	if (nids == 0)
		return;
	ledger_load_accounts(ids, nids, ledger_installed.worker,
						 ledger_installed.cluster_mode, now);

	/*
	 * Registering a currency opens its external accounts in the buckets of
	 * the day; a bucket that was added since has them opened here.
	 */
	for (e = 0; e < nids; e++)
	{
		if (ledger_find_account(ids[e]) == NULL)
		{
			create_external_account(LEDGER_EXTERNAL_BUCKET(ids[e]),
									LEDGER_EXTERNAL_CURRENCY(ids[e]));
			ledger_load_accounts(&ids[e], 1, ledger_installed.worker,
								 ledger_installed.cluster_mode, now);
		}
	}
}

/* Deciding */

/*
 * The time of a leg of an imported deposit or withdrawal: the event's, but
 * for the external account, which moves with every deposit of its bucket
 * and keeps its legs in time order (see ledger_apply_credit()) by taking
 * the later of the event's time and its newest leg's.
 */
static void
imported_leg_time(BatchOutput *out, QueuedEvent *ev, AccountState *acct,
				  AccountState *external)
{
	if (ev->occurred_at == 0)
		return;
	out->leg_time = acct == external ?
		Max(ev->occurred_at, external->last_leg_at) : ev->occurred_at;
}

/*
 * Deposit or withdrawal: the account against its bucket's external account
 * in its currency.
 */
static const char *
apply_external(BatchOutput *out, QueuedEvent *ev)
{
	AccountState *acct = ledger_find_account(ev->account_id);
	AccountState *external;
	AccountState *from;
	AccountState *to;
	const char *reason = NULL;

	if (acct == NULL || !acct->owned)
		return "unknown_account";
	external = ledger_find_account(LEDGER_EXTERNAL_ACCOUNT(acct->bucket, acct->currency));
	if (external == NULL)
		elog(ERROR, "the external account of bucket %d for currency %d does not exist",
			 acct->bucket, acct->currency);
	from = ev->kind == LEDGER_DEPOSIT ? external : acct;
	to = ev->kind == LEDGER_DEPOSIT ? acct : external;
	if (!ledger_can_debit(from, ev->amount, out->now, &reason) ||
		!ledger_can_credit(to, ev->amount, &reason))
		return reason;

	imported_leg_time(out, ev, from, external);
	ledger_post_leg(out, from, ev->id, -ev->amount);
	imported_leg_time(out, ev, to, external);
	ledger_post_leg(out, to, ev->id, ev->amount);
	return NULL;
}

/*
 * Pay the payees of an event from its payer, already checked: credit the
 * payees this worker owns, and queue credit entries for the payees of other
 * buckets.
 */
void
ledger_pay(BatchOutput *out, QueuedEvent *ev, AccountState *payer,
		   AccountState **payees)
{
	bool	   *done = palloc(sizeof(bool) * ev->npayees);
	int			p;

	ledger_post_leg(out, payer, ev->id, -ev->amount);
	for (p = 0; p < ev->npayees; p++)
	{
		/*
		 * An imported transfer's credit to another bucket was logged with
		 * it (import.c), even to a bucket this worker serves too.
		 */
		if (ev->occurred_at != 0 && payees[p]->bucket != payer->bucket)
		{
			done[p] = true;
			continue;
		}
		done[p] = payees[p]->owned;
		if (done[p])
			ledger_post_leg(out, payees[p], ev->id, ev->amounts[p]);
	}
	for (p = 0; p < ev->npayees; p++)
		if (!done[p])
			ledger_credit_elsewhere(out, ev, payees, p, done);
}

/*
 * Find the payees of an event in the cache, and check the ones this worker
 * owns can take their amounts.  NULL when they can; else the reason.
 */
const char *
ledger_find_payees(QueuedEvent *ev, AccountState **payees)
{
	const char *reason = NULL;
	int			p;

	for (p = 0; p < ev->npayees; p++)
	{
		payees[p] = ledger_find_account(ev->payees[p]);
		if (payees[p] == NULL)
			return "unknown_account";
		if (payees[p]->owned && !ledger_can_credit(payees[p], ev->amounts[p], &reason))
			return reason;

		/*
		 * A payee of another bucket closed as this worker last loaded it.
		 * One closed since still gets the credit (ledger_apply_credit()).
		 */
		if (!payees[p]->owned && payees[p]->closed)
			return "account_closed";
	}
	return NULL;
}

/*
 * Transfer or disbursement: debit the payer, credit the payees.  All of it
 * or none.
 */
static const char *
apply_payment(BatchOutput *out, QueuedEvent *ev)
{
	AccountState *payer = ledger_find_account(ev->account_id);
	AccountState **payees = palloc(sizeof(AccountState *) * ev->npayees);
	const char *reason = NULL;

	if (payer == NULL || !payer->owned)
		return "unknown_account";
	if (!ledger_can_debit(payer, ev->amount, out->now, &reason))
		return reason;
	if ((reason = ledger_find_payees(ev, payees)) != NULL)
		return reason;

	ledger_pay(out, ev, payer, payees);
	return NULL;
}

/*
 * Hold: reserve the amount out of the payer's available balance, under the
 * same checks as a debit.  No money moves.
 */
static const char *
apply_hold(BatchOutput *out, QueuedEvent *ev)
{
	AccountState *payer = ledger_find_account(ev->account_id);
	AccountState *payee;
	const char *reason = NULL;
	int64		held = 0;

	if (payer == NULL || !payer->owned)
		reason = "unknown_account";
	else if (ev->expires_at != 0 && ev->expires_at <= out->now)
		reason = "hold_expired";
	else if (!ledger_can_debit(payer, ev->amount, out->now, &reason))
		;
	/* the payee as a transfer's: known, open, room for the amount */
	else if ((reason = ledger_find_payees(ev, &payee)) != NULL)
		;
	else if (pg_add_s64_overflow(payer->held, ev->amount, &held))
		reason = "overflow";

	if (reason != NULL)
	{
		/* remembered, so that a post of it in this batch says why it fails */
		ledger_hold_add(ev->id, ev->account_id, ev->payees[0], ev->amount,
						ev->expires_at, LEDGER_HOLD_REJECTED);
		return reason;
	}
	ledger_account_set(payer, payer->balance, held);
	ledger_hold_add(ev->id, ev->account_id, ev->payees[0], ev->amount,
					ev->expires_at, LEDGER_HOLD_OPEN);
	return NULL;
}

/* Why a hold that is not open (any more) cannot be posted or voided. */
static const char *
hold_gone_reason(int64 hold_id)
{
	HoldState  *hold = ledger_hold_find(hold_id);

	if (hold == NULL)
		return ledger_hold_gone_reason(hold_id);
	return ledger_hold_end_reason(hold->state);
}

/*
 * The open hold a post or void names, or NULL with *reason set.  A hold
 * past its timeout is expired here, before its next expiry pass would.
 */
static HoldState *
open_hold(BatchOutput *out, QueuedEvent *ev, const char **reason)
{
	HoldState  *hold = ledger_hold_find(ev->hold_id);

	if (hold == NULL || hold->state != LEDGER_HOLD_OPEN)
	{
		*reason = hold_gone_reason(ev->hold_id);
		return NULL;
	}
	if (hold->expires_at != 0 && hold->expires_at <= out->now)
	{
		ledger_end_hold(out, hold, LEDGER_HOLD_EXPIRED, 0, 0);
		*reason = "hold_expired";
		return NULL;
	}
	return hold;
}

/*
 * Post: pay the hold's payee the amount asked for (0: all of it) out of the
 * hold, and release the rest.  The money was reserved when the hold was
 * applied, so limits are not checked again.
 */
static const char *
apply_post(BatchOutput *out, QueuedEvent *ev)
{
	AccountState *payer;
	AccountState *payee;
	HoldState  *hold;
	const char *reason = NULL;
	int64		result;

	if ((hold = open_hold(out, ev, &reason)) == NULL)
		return reason;
	if (ev->amount == 0)
		ev->amount = hold->amount;
	else if (ev->amount > hold->amount)
		return "exceeds_hold";
	ev->amounts[0] = ev->amount;

	payer = ledger_find_account(hold->account_id);
	if (payer == NULL || !payer->owned)
		return "unknown_account";
	if (pg_sub_s64_overflow(payer->balance, ev->amount, &result))
		return "overflow";
	if ((reason = ledger_find_payees(ev, &payee)) != NULL)
		return reason;

	ledger_end_hold(out, hold, LEDGER_HOLD_POSTED, ev->id, ev->amount);
	ledger_pay(out, ev, payer, &payee);
	return NULL;
}

/* Void: release the hold. */
static const char *
apply_void(BatchOutput *out, QueuedEvent *ev)
{
	HoldState  *hold;
	const char *reason = NULL;

	if ((hold = open_hold(out, ev, &reason)) == NULL)
		return reason;
	ledger_end_hold(out, hold, LEDGER_HOLD_VOIDED, ev->id, 0);
	return NULL;
}

/*
 * Close or reopen an account.  A close is refused while holds are open or
 * the balance is not zero: nothing is left behind in a closed account, and
 * no hold can be posted out of it.  The state goes into ledger.closures,
 * and the other workers reload the accounts they hold before their next
 * batch, so that they refuse payments to it too.
 */
static const char *
apply_closure(BatchOutput *out, QueuedEvent *ev)
{
	AccountState *acct = ledger_find_account(ev->account_id);
	bool		closing = ev->kind == LEDGER_CLOSE;
	Oid			argtypes[5] = {INT8OID, INT8OID, BOOLOID, INT8OID, TIMESTAMPTZOID};
	Datum		args[5];

	if (acct == NULL || !acct->owned)
		return "unknown_account";
	if (closing && acct->closed)
		return "account_closed";
	if (!closing && !acct->closed)
		return "account_open";
	if (closing && acct->held != 0)
		return "holds_open";
	if (closing && acct->balance != 0)
		return "balance_not_zero";

	args[0] = Int64GetDatum(acct->id);
	args[1] = Int64GetDatum(ev->id);
	args[2] = BoolGetDatum(closing);
	args[3] = Int64GetDatum(acct->balance);
	args[4] = TimestampTzGetDatum(out->now);
	if (SPI_execute_with_args("INSERT INTO ledger.closures"
							  " (account_id, event_id, closed, balance, changed_at)"
							  " VALUES ($1, $2, $3, $4, $5)",
							  5, argtypes, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record the closure of account " INT64_FORMAT, acct->id);
	acct->closed = closing;
	ledger_limits_changed_at_commit();
	return NULL;
}

/*
 * An imported event (ledger_import()) is posted at the time it happened,
 * which may not be older than the newest leg of its payer or of a payee of
 * this bucket: an account's legs are in time order.
 */
static bool
imported_in_order(QueuedEvent *ev)
{
	AccountState *acct = ledger_find_account(ev->account_id);
	int			p;

	if (acct != NULL && acct->owned && acct->last_leg_at > ev->occurred_at)
		return false;
	for (p = 0; p < ev->npayees; p++)
	{
		acct = ledger_find_account(ev->payees[p]);
		if (acct != NULL && acct->owned && acct->last_leg_at > ev->occurred_at)
			return false;
	}
	return true;
}

/* Expire the open holds of the worker whose timeout has passed. */
int
ledger_expire_holds(BatchOutput *out)
{
	int			ndue;
	HoldState **due = ledger_holds_due(out->now, &ndue);
	int64	   *payers = palloc(sizeof(int64) * Max(ndue, 1));
	int			i;

	for (i = 0; i < ndue; i++)
		payers[i] = due[i]->account_id;
	if (ndue > 0)
		ledger_load_accounts(payers, ndue, ledger_installed.worker,
							 ledger_installed.cluster_mode, out->now);
	for (i = 0; i < ndue; i++)
		ledger_end_hold(out, due[i], LEDGER_HOLD_EXPIRED, 0, 0);
	return ndue;
}

/*
 * A credit queued by another bucket: its debit is posted, so it cannot be
 * rejected, and it cannot overflow its payees either, as long as the supply
 * bound held (accounts.c).  A ledger that was over it before 1.5 could hold
 * a balance a credit would overflow: that credit then stays queued (its
 * event pending, its money counted in flight by ledger_verify()) until the
 * payee's balance leaves room for it, reported once.  A credit to an
 * account closed since the payer's bucket decided the event (before it
 * learned of the close) is posted all the same: a close cannot call back
 * money already paid out, and holding it back would leave the event
 * pending for as long as the account stays closed.  It is reported, so
 * that an operator reopens the account and moves the money on.
 */
bool
ledger_apply_credit(BatchOutput *out, QueuedEvent *ev)
{
	int			p;

	for (p = 0; p < ev->npayees; p++)
	{
		AccountState *payee = ledger_find_account(ev->payees[p]);
		int64		result;

		if (payee == NULL || !payee->owned ||
			pg_add_s64_overflow(payee->balance, ev->amounts[p], &result))
		{
			bool		reported;

			if (reported_credits == NULL)
				reported_credits = ledger_hash_create("ledger credits held back", 16,
													  sizeof(int64), sizeof(int64),
													  TopMemoryContext);
			(void) hash_search(reported_credits, &ev->row_id, HASH_ENTER, &reported);
			if (!reported)
				ereport(WARNING,
						(errmsg("ledger: credit of event " INT64_FORMAT " to account " INT64_FORMAT " is held back",
								ev->id, ev->payees[p]),
						 errdetail("Crediting " INT64_FORMAT " would overflow the account's balance.",
								   ev->amounts[p]),
						 errhint("It is posted once the balance leaves room for it; ledger_health() lists it meanwhile.")));
			return false;
		}
	}
	for (p = 0; p < ev->npayees; p++)
	{
		AccountState *payee = ledger_find_account(ev->payees[p]);

		if (payee->closed)
			ereport(WARNING,
					(errmsg("ledger: credit of event " INT64_FORMAT " to closed account " INT64_FORMAT " is posted",
							ev->id, ev->payees[p]),
					 errdetail("The payer's bucket decided the event before it learned of the close."),
					 errhint("Reopen the account with ledger_reopen_account() to move the money on.")));

		/*
		 * An imported event's credit at the event's time, unless the payee
		 * has a later leg already: an account's legs stay in time order,
		 * which reads as of a time rely on.
		 */
		out->leg_time = ev->occurred_at == 0 ? out->now :
			Max(ev->occurred_at, payee->last_leg_at);
		ledger_post_leg(out, payee, ev->id, ev->amounts[p]);
	}
	out->leg_time = out->now;
	ledger_record_outcome(out, ev, NULL);
	if (reported_credits)
		(void) hash_search(reported_credits, &ev->row_id, HASH_REMOVE, NULL);
	return true;
}

/* Waiting for credits */

static bool
names_waiting_account(Waiting *w, QueuedEvent *ev)
{
	int			p;

	if (w->accounts == NULL)
		return false;
	if (hash_search(w->accounts, &ev->account_id, HASH_FIND, NULL))
		return true;
	for (p = 0; p < ev->npayees; p++)
		if (hash_search(w->accounts, &ev->payees[p], HASH_FIND, NULL))
			return true;
	return false;
}

/*
 * A linked transfer that voted waits for its group: its payees were
 * promised its amount.  Only a close of one of them waits for it: paid
 * after the close, the money would land in a closed account.
 */
void
ledger_note_promised(Waiting *w, QueuedEvent *ev)
{
	int			p;

	if (w->promised == NULL)
		w->promised = ledger_hash_create("ledger accounts promised", 16, sizeof(int64),
										 sizeof(int64), CurrentMemoryContext);
	for (p = 0; p < ev->npayees; p++)
		(void) hash_search(w->promised, &ev->payees[p], HASH_ENTER, NULL);
}

static bool
close_awaits_linked(Waiting *w, QueuedEvent *ev)
{
	return ev->kind == LEDGER_CLOSE && w->promised != NULL &&
		hash_search(w->promised, &ev->account_id, HASH_FIND, NULL) != NULL;
}

static void
wait_accounts_of(Waiting *w, QueuedEvent *ev)
{
	int			p;

	if (w->accounts == NULL)
		w->accounts = ledger_hash_create("ledger accounts waiting", 16, sizeof(int64),
										 sizeof(int64), CurrentMemoryContext);
	(void) hash_search(w->accounts, &ev->account_id, HASH_ENTER, NULL);
	for (p = 0; p < ev->npayees; p++)
		(void) hash_search(w->accounts, &ev->payees[p], HASH_ENTER, NULL);
}

/*
 * Must this event wait for credits still on their way?  Only a debit whose
 * transaction logged, before it, a credit of its payer from another bucket
 * (waits_from, see order.c), and only while it would be refused for want
 * of money: a debit that can be paid now could be paid with those credits
 * too, so deciding it now decides it as id order would.  It then waits
 * while an event of its transaction from waits_from on that credits its
 * payer from another bucket is pending there, or its credit is pending
 * here.  Each wait is for an event of the same transaction and a smaller
 * id, or for a credit, which never waits, and an event left for later
 * holds back only later events of its bucket: so waits cannot form a
 * cycle.  An event decided before 1.6 has no transaction id or bucket
 * logged: its pending credits from waits_from on are waited for, as 1.5
 * did.
 */
static bool
awaits_credit(BucketState *b, QueuedEvent *ev, TimestampTz now)
{
	Oid			argtypes[5] = {INT8OID, INT8OID, XID8OID, INT4OID, INT8OID};
	Datum		args[5];
	AccountState *payer;
	const char *reason = NULL;

	if (ev->waits_from == 0)
		return false;
	payer = ledger_find_account(ev->account_id);
	if (payer == NULL || !payer->owned ||
		ledger_can_debit(payer, ev->amount, now, &reason) ||
		!(strcmp(reason, "insufficient_funds") == 0 ||
		  strcmp(reason, "overdraft_limit") == 0 ||
		  strcmp(reason, "supply_limit") == 0))
		return false;

	ledger_prepare_plan(&awaited_plan,
						"SELECT 1 FROM ledger.event_log e"
						" WHERE e.id >= $1 AND e.id < $2"
						"   AND (e.txid = $3 OR e.txid IS NULL)"
						"   AND (e.bucket <> $4 OR e.bucket IS NULL)"
						"   AND e.credit_of IS NULL AND e.kind <> 'h'"
						"   AND ($5 = e.to_account OR $5 = ANY (e.to_accounts))"
						"   AND (ledger.row_state(e) = 'p'"
						"        OR EXISTS (SELECT FROM ledger.event_log c"
						"                    WHERE c.credit_of = e.id AND c.bucket = $4"
						"                      AND ledger.row_state(c) = 'p'))"
						" LIMIT 1",
						5, argtypes);
	args[0] = Int64GetDatum(ev->waits_from);
	args[1] = Int64GetDatum(ev->id);
	args[2] = ev->txid;
	args[3] = Int32GetDatum(b->bucket);
	args[4] = Int64GetDatum(ev->account_id);
	if (SPI_execute_plan(awaited_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for the credits event " INT64_FORMAT " waits for",
			 ev->id);
	return SPI_processed > 0;
}

/*
 * Must this imported credit wait (import.c)?  While its transfer is not
 * decided in the payer's bucket, or an earlier event of the batch that
 * names one of its payees waits: its payees' legs are in time order.  If
 * so, its payees are noted: their later events wait too.
 */
bool
ledger_imported_credit_waits(Waiting *w, QueuedEvent *ev)
{
	bool		wait = ev->transfer_state == 0;
	int			p;

	for (p = 0; p < ev->npayees && !wait; p++)
		wait = w->accounts != NULL &&
			hash_search(w->accounts, &ev->payees[p], HASH_FIND, NULL) != NULL;
	if (!wait)
		return false;
	if (w->accounts == NULL)
		w->accounts = ledger_hash_create("ledger accounts waiting", 16, sizeof(int64),
										 sizeof(int64), CurrentMemoryContext);
	for (p = 0; p < ev->npayees; p++)
		(void) hash_search(w->accounts, &ev->payees[p], HASH_ENTER, NULL);
	return true;
}

/*
 * Must this event be left for later?  When an earlier event of the batch
 * that names one of its accounts was, when it awaits a credit, or when it
 * closes an account a linked transfer waiting for its group pays.  If so,
 * its accounts are noted: their later events wait too.
 */
bool
ledger_must_wait(Waiting *w, BucketState *b, QueuedEvent *ev, TimestampTz now)
{
	if (!names_waiting_account(w, ev) && !close_awaits_linked(w, ev) &&
		!awaits_credit(b, ev, now))
		return false;
	wait_accounts_of(w, ev);
	return true;
}

/*
 * Decide an event of the batch that is not a credit and does not wait:
 * apply it, writing what it does, or say why it is rejected.
 */
const char *
ledger_decide(BatchOutput *out, QueuedEvent *ev)
{
	if (ev->occurred_at != 0)
	{
		if (!imported_in_order(ev))
			return "out_of_order";
		out->leg_time = ev->occurred_at;
	}
	switch (ev->kind)
	{
		case LEDGER_DEPOSIT:
		case LEDGER_WITHDRAW:
			return apply_external(out, ev);
		case LEDGER_TRANSFER:
		case LEDGER_DISBURSE:
			return apply_payment(out, ev);
		case LEDGER_HOLD:
			return apply_hold(out, ev);
		case LEDGER_POST:
			return apply_post(out, ev);
		case LEDGER_VOID:
			return apply_void(out, ev);
		case LEDGER_CLOSE:
		case LEDGER_REOPEN:
			return apply_closure(out, ev);
	}
	elog(ERROR, "event " INT64_FORMAT " has unknown kind '%c'", ev->id, ev->kind);
	return NULL;				/* keep compiler quiet */
}
