/*-------------------------------------------------------------------------
 *
 * linked.c
 *	  Deciding the transfers of a linked group (ledger_transfer_linked()):
 *	  all of them are applied, or none is.
 *
 * The group's transfers are events of their payers' buckets, and no worker
 * may touch another's accounts, so each bucket decides its own in two
 * steps, in its own batches.  First it votes: it checks the transfer as it
 * would check a transfer, and either rejects it (with the reason) or sets
 * its amount aside out of the payer's available balance, as a hold does,
 * and records the vote in ledger.linked_votes.  A transfer that voted
 * stays pending, left for later (ledger.deferred), without holding back
 * the later events of its accounts: its money is already set aside.  Then,
 * at each batch that reads it again, it looks at the group: once every
 * transfer has voted, it releases its amount and pays it; once any was
 * rejected, it releases its amount and is rejected too, naming the element
 * that was.  Votes are final and a transfer that voted can always be paid,
 * so every bucket comes to the same decision, each in its own time.  A
 * crash between two buckets' votes loses nothing: the votes, the amounts
 * set aside and the events left for later are rows of the batches that
 * committed them.  Each bucket wakes the others of the group when it votes
 * or rejects, and itself, for the votes of its own batch it cannot see yet.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "utils/array.h"

#include "ledger.h"
#include "wait.h"
#include "batch.h"

/* What the transfers of a group have said so far. */
typedef struct LinkedGroup
{
	int			nparts;
	int			nvoted;
	bool		voted;			/* this transfer voted */
	char	   *rejection;		/* "element N: reason", the first rejected */
	int		   *buckets;		/* the buckets of its transfers */
	int			nbuckets;
} LinkedGroup;

static SPIPlanPtr group_plan = NULL;

/* Forget the plan: the extension was dropped or created again. */
void
ledger_linked_reset(void)
{
	ledger_free_plan(&group_plan);
}

/* Read the group's state. */
static LinkedGroup
group_state(QueuedEvent *ev)
{
	Oid			argtypes[2] = {INT8OID, INT8OID};
	Datum		args[2];
	LinkedGroup	g = {0};
	HeapTuple	row;
	TupleDesc	desc;
	bool		isnull;
	Datum		buckets;
	ArrayType  *array;
	Datum	   *elems;
	int			nelems;
	int			i;

	ledger_prepare_plan(&group_plan,
						"SELECT count(*)::integer, count(v.event_id)::integer,"
						"       bool_or(p.id = $2 AND v.event_id IS NOT NULL),"
						"       (array_agg('element ' || p.n || ': ' || o.reason ORDER BY p.n)"
						"          FILTER (WHERE o.status = 'r' AND v.event_id IS NULL"
						"                    AND o.reason NOT LIKE 'linked!_rejected%' ESCAPE '!'))[1],"
						"       array_agg(DISTINCT p.bucket)"
						"  FROM (SELECT e.id, e.bucket, row_number() OVER (ORDER BY e.id) AS n"
						"          FROM ledger.event_log e WHERE e.link_of = $1) p"
						"  LEFT JOIN ledger.linked_votes v ON v.event_id = p.id"
						"  LEFT JOIN ledger.outcomes o ON o.event_id = p.id",
						2, argtypes);
	args[0] = Int64GetDatum(ev->link_of);
	args[1] = Int64GetDatum(ev->row_id);
	if (SPI_execute_plan(group_plan, args, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read linked group " INT64_FORMAT, ev->link_of);
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	g.nparts = DatumGetInt32(SPI_getbinval(row, desc, 1, &isnull));
	g.nvoted = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
	g.voted = DatumGetBool(SPI_getbinval(row, desc, 3, &isnull)) && !isnull;
	g.rejection = SPI_getvalue(row, desc, 4);
	buckets = SPI_getbinval(row, desc, 5, &isnull);
	if (!isnull)
	{
		array = DatumGetArrayTypeP(buckets);
		deconstruct_array(array, INT4OID, 4, true, TYPALIGN_INT, &elems, NULL, &nelems);
		g.buckets = palloc(sizeof(int) * nelems);
		for (i = 0; i < nelems; i++)
			g.buckets[i] = DatumGetInt32(elems[i]);
		g.nbuckets = nelems;
	}
	return g;
}

/*
 * This batch voted or rejected: wake the workers of the group's buckets at
 * commit, this one's included (the votes of its own batch are not visible
 * to it until then).  Waking on these alone, a group waiting for a vote
 * costs nothing meanwhile.
 */
static void
wake_group(LinkedGroup *g)
{
	int			i;

	for (i = 0; i < g->nbuckets; i++)
		ledger_wake_at_commit(g->buckets[i]);
}

/*
 * Vote: check the transfer as a transfer is checked, and set its amount
 * aside.  NULL when it voted; else why it is rejected.
 */
static const char *
vote(BatchOutput *out, QueuedEvent *ev)
{
	AccountState *payer = ledger_find_account(ev->account_id);
	AccountState *payee;
	const char *reason = NULL;
	int64		held;

	if (payer == NULL || !payer->owned)
		return "unknown_account";
	if (!ledger_can_debit(payer, ev->amount, out->now, &reason))
		return reason;
	if ((reason = ledger_find_payees(ev, &payee)) != NULL)
		return reason;
	if (pg_add_s64_overflow(payer->held, ev->amount, &held))
		return "overflow";
	ledger_account_set(payer, payer->balance, held);
	ledger_record_vote(out, ev);
	return NULL;
}

/* Release the amount set aside, and pay the transfer if paid is true. */
static void
settle(BatchOutput *out, QueuedEvent *ev, bool paid)
{
	AccountState *payer = ledger_find_account(ev->account_id);
	AccountState *payee = ledger_find_account(ev->payees[0]);

	if (payer == NULL || !payer->owned || payee == NULL)
		elog(ERROR, "the accounts of linked transfer " INT64_FORMAT " are gone",
			 ev->id);
	ledger_account_set(payer, payer->balance, payer->held - ev->amount);
	if (paid)
		ledger_pay(out, ev, payer, &payee);
}

/*
 * Decide a transfer of a linked group, or leave it for later (*wait): NULL
 * when it is applied, else why it is rejected.
 */
const char *
ledger_decide_linked(BatchOutput *out, BucketState *b, Waiting *w,
					 QueuedEvent *ev, bool *wait)
{
	LinkedGroup	g = group_state(ev);
	const char *reason;

	*wait = false;
	if (!g.voted)
	{
		/* an event of its accounts before it waits: it waits too */
		if (ledger_must_wait(w, b, ev, out->now))
		{
			*wait = true;
			return NULL;
		}
		if (g.rejection != NULL)
			return psprintf("linked_rejected (%s)", g.rejection);
		wake_group(&g);
		if ((reason = vote(out, ev)) != NULL)
			return reason;
		if (g.nvoted + 1 < g.nparts)
		{
			ledger_note_promised(w, ev);
			*wait = true;
			return NULL;
		}
		/* the last to vote decides at once */
		settle(out, ev, true);
		return NULL;
	}

	if (g.rejection != NULL)
	{
		settle(out, ev, false);
		return psprintf("linked_rejected (%s)", g.rejection);
	}
	if (g.nvoted < g.nparts)
	{
		ledger_note_promised(w, ev);
		*wait = true;
		return NULL;
	}
	settle(out, ev, true);
	return NULL;
}
