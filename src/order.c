/*-------------------------------------------------------------------------
 *
 * order.c
 *	  Order inside one transaction, across buckets.
 *
 * Each bucket's worker applies its events in id order, but a transfer to
 * an account of another bucket reaches it as a credit, queued only when the
 * paying bucket applies the transfer.  So in
 *
 *		BEGIN;
 *		SELECT ledger_transfer(901, 902, 100);	-- 901, 902 in two buckets
 *		SELECT ledger_withdraw(902, 100);
 *		COMMIT;
 *
 * the withdrawal could be decided before the credit arrives.  To decide the
 * events of a transaction as if applied in id order, the enqueueing backend
 * remembers, for the rest of its transaction, the first of its events that
 * credits each account from another bucket.  An event debiting such an
 * account is logged with that id (ledger.event_log.waits_from), and its worker
 * holds it back while it would be refused for want of money and credits to
 * its payer with ids from there to its own are still on their way
 * (decide.c).  Nothing is remembered, and nothing costs, in a transaction
 * that sends no credit across buckets.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "ledger.h"
#include "order.h"

/* An account credited from another bucket by events of this transaction. */
typedef struct CreditedAccount
{
	int64		account_id;		/* hash key */
	int64		first_event;	/* the first event that credits it */
} CreditedAccount;

static HTAB *credited = NULL;
static bool callback_registered = false;

static void
forget_credits(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* the table was in TopTransactionContext, gone with it */
			credited = NULL;
			break;
		default:
			break;
	}
}

/*
 * An event of this transaction credits account_id, an account of another
 * bucket than its payer's.  An event rolled back to a savepoint stays
 * noted: a later debit then looks for credits from an id on which some
 * events no longer exist, which costs nothing.
 */
void
ledger_note_credit(int64 account_id, int64 event_id)
{
	CreditedAccount *entry;
	bool		found;

	if (credited == NULL)
	{
		if (!callback_registered)
		{
			RegisterXactCallback(forget_credits, NULL);
			callback_registered = true;
		}
		credited = ledger_hash_create("ledger accounts credited across buckets", 16,
									  sizeof(int64), sizeof(CreditedAccount),
									  TopTransactionContext);
	}
	entry = hash_search(credited, &account_id, HASH_ENTER, &found);
	if (!found)
		entry->first_event = event_id;
}

/*
 * The first event of this transaction, queued so far, that credits
 * account_id from another bucket; 0 if none does.
 */
int64
ledger_credited_from(int64 account_id)
{
	CreditedAccount *entry;

	if (credited == NULL)
		return 0;
	entry = hash_search(credited, &account_id, HASH_FIND, NULL);
	return entry ? entry->first_event : 0;
}
