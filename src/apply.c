/*-------------------------------------------------------------------------
 *
 * apply.c
 *	  Applying one batch of a bucket's events.
 *
 * A batch is applied in the worker's current transaction, in four steps,
 * each in a file of its own (batch.h): what is installed was checked
 * (installed.c); the batch's events are read, in the order they are to be
 * decided (delta.c); the accounts they name are loaded and each event is
 * decided in turn (decide.c); and the rows that say what was decided are
 * written (batch_rows.c): legs, credits for other buckets (events of the
 * log too), breakpoints, the new totals of open holds, a row for each event
 * rejected or left for later, and one for the batch.  Nothing is updated or
 * deleted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "ledger.h"
#include "worker.h"
#include "batch.h"

/*
 * Apply a batch of the index'th bucket this worker serves, in the current
 * transaction: the events it left for later, then up to batch_size more of
 * its delta (a new delta starts with this batch's snapshot when the last is
 * done), in (txid, id) order; count what was done; expire the worker's holds
 * whose time has come.  Must be called inside SPI, with the transaction's
 * snapshot active, after ledger_prepare_worker() said yes.
 */
void
ledger_apply_batch(int index, int batch_size, LedgerBatchCounts *counts)
{
	BucketState *b = ledger_served_bucket(index);
	QueuedEvent *events;
	BatchOutput out;
	Waiting		waiting = {0};
	TimestampTz now;
	bool		more;
	int			nevents;
	int			nwaiting;
	int			e;

	ledger_delta_begin(b);
	nwaiting = b->ndeferred;
	events = ledger_fetch_batch(b, batch_size, &nevents, &more);
	counts->full = more;
	/* after the read, so that no event is applied before it was enqueued */
	now = GetCurrentTimestamp();
	if (nevents == 0 && !(index == 0 && ledger_holds_any_due(now)))
	{
		/* an empty delta: nothing to say, the next starts where it ended */
		ledger_delta_end(b);
		return;
	}

	ledger_load_batch_accounts(events, nevents, now);
	ledger_import_read_transfers(events, nevents);
	ledger_rows_begin(&out, now);

	/* the worker's first bucket expires the holds of all of them */
	if (index == 0)
		counts->expired = ledger_expire_holds(&out);

	/* those still waiting after this batch are listed again */
	b->ndeferred = 0;
	counts->read = nevents;
	for (e = 0; e < nevents; e++)
	{
		QueuedEvent *ev = &events[e];
		const char *reason;

		if (ev->kind == LEDGER_CREDIT)
		{
			/*
			 * Credits never wait, the events waiting wait for them; but
			 * those an import logged wait for their transfers (import.c).
			 */
			if (ev->occurred_at != 0 && ledger_imported_credit_waits(&waiting, ev))
			{
				ledger_record_deferral(&out, b, ev);
				counts->deferred++;
			}
			else if (ev->occurred_at != 0 && ev->transfer_state == LEDGER_REJECTED)
				ledger_record_outcome(&out, ev, "transfer_rejected");
			else if (ledger_apply_credit(&out, ev))
				counts->credits++;
			else
			{
				ledger_record_deferral(&out, b, ev);
				counts->deferred++;
			}
			continue;
		}
		if (ev->kind == LEDGER_LINKED)
		{
			bool		wait;

			reason = ledger_decide_linked(&out, b, &waiting, ev, &wait);
			if (wait)
			{
				ledger_record_deferral(&out, b, ev);
				counts->deferred++;
				continue;
			}
		}
		else if (ledger_must_wait(&waiting, b, ev, now))
		{
			ledger_record_deferral(&out, b, ev);
			counts->deferred++;
			continue;
		}
		else
			reason = ledger_decide(&out, ev);
		/* an imported event's legs were posted at its own time */
		out.leg_time = now;
		if (ev->occurred_at != 0)
			ledger_import_decided(ev);
		ledger_record_outcome(&out, ev, reason);
		if (reason)
			counts->rejected++;
		else
			counts->applied++;
	}

	ledger_rows_end(&out);
	ledger_holds_end_batch();

	/*
	 * A batch that read new events, or decided any, says so; and one that
	 * wrote legs (expiring holds writes none) or outcomes, for the chain.
	 */
	if (nevents > nwaiting || counts->deferred < nevents || ledger_chain_any(&out))
		ledger_write_batch(&out, b, !more, counts);
	if (!more)
		ledger_delta_end(b);
}
