/*-------------------------------------------------------------------------
 *
 * import.c
 *	  Imported histories (ledger_import()): each account's legs in the time
 *	  order of the history, across buckets.
 *
 * An imported event's legs are posted at the time it happened, and reads as
 * of a time need each account's legs in time order.  Within a bucket the
 * order of the log gives it: an import logs its rows in time order, in one
 * transaction, and a worker reads its log in that order.  A transfer to an
 * account of another bucket is where it would break: a credit queued by the
 * payer's worker as it decided the transfer would reach the payee's bucket
 * after all of the import's own rows there, whose later legs it would then
 * have to follow.  So ledger_import() logs that credit itself, in the
 * payee's bucket, next to its transfer.  The payee's worker reads it in
 * time order and posts it once the payer's worker has decided the transfer
 * (or drops it, if the transfer was rejected); until then it waits, and the
 * later events of its payees with it (decide.c).  Every such wait is for a
 * row of a smaller id, and so are the waits of that row: no cycle.  The
 * payer's worker wakes the payee's when it decides the transfer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"

#include "ledger.h"
#include "wait.h"
#include "batch.h"

/* How the payer's worker decided an imported transfer. */
typedef struct TransferState
{
	int64		id;				/* the key */
	char		state;
} TransferState;

static SPIPlanPtr states_plan = NULL;

/* Forget the plan: the extension was dropped or created again. */
void
ledger_import_reset(void)
{
	ledger_free_plan(&states_plan);
}

/*
 * Read, in one statement, how the payers' workers decided the transfers of
 * the batch's imported credits, as their newest batches say: each credit's
 * transfer_state is LEDGER_APPLIED, LEDGER_REJECTED, or 0 while pending.
 */
void
ledger_import_read_transfers(QueuedEvent *events, int nevents)
{
	Oid			argtype = INT8ARRAYOID;
	Datum		arg;
	Datum	   *ids = palloc(sizeof(Datum) * Max(nevents, 1));
	HTAB	   *states;
	int			nids = 0;
	int			e;
	uint64		r;

	for (e = 0; e < nevents; e++)
		if (events[e].kind == LEDGER_CREDIT && events[e].occurred_at != 0)
			ids[nids++] = Int64GetDatum(events[e].id);
	if (nids == 0)
		return;

	ledger_prepare_plan(&states_plan,
						"SELECT s.id, s.state FROM ledger.log_states s"
						" WHERE s.id = ANY ($1)",
						1, &argtype);
	arg = ledger_bigint_array(ids, nids);
	if (SPI_execute_plan(states_plan, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the states of imported transfers");

	states = ledger_hash_create("ledger imported transfers", SPI_processed + 1,
								sizeof(int64), sizeof(TransferState),
								CurrentMemoryContext);
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
													 SPI_tuptable->tupdesc, 1, &isnull));
		char		state = DatumGetChar(SPI_getbinval(SPI_tuptable->vals[r],
													   SPI_tuptable->tupdesc, 2, &isnull));
		TransferState *entry = hash_search(states, &id, HASH_ENTER, NULL);

		entry->state = state;
	}
	for (e = 0; e < nevents; e++)
	{
		QueuedEvent *ev = &events[e];
		TransferState *entry;

		if (ev->kind != LEDGER_CREDIT || ev->occurred_at == 0)
			continue;
		entry = hash_search(states, &ev->id, HASH_FIND, NULL);
		ev->transfer_state = entry == NULL ? 0 : entry->state;
		if (ev->transfer_state != LEDGER_APPLIED && ev->transfer_state != LEDGER_REJECTED)
			ev->transfer_state = 0;
	}
	hash_destroy(states);
}

/*
 * An imported transfer was decided, applied or rejected: wake the buckets
 * whose credits of it wait for that (this worker's own too: it may serve
 * more than one bucket).
 */
void
ledger_import_decided(QueuedEvent *ev)
{
	AccountState *payer = ledger_find_account(ev->account_id);
	int			p;

	for (p = 0; p < ev->npayees; p++)
	{
		AccountState *payee = ledger_find_account(ev->payees[p]);

		if (payer != NULL && payee != NULL && payee->node == 0 &&
			payee->bucket != payer->bucket)
			ledger_wake_at_commit(payee->bucket);
	}
}
