/*-------------------------------------------------------------------------
 *
 * holds.c
 *	  The bucket worker's open holds.
 *
 * A worker loads the open holds of its buckets when it starts and keeps
 * them in memory from then on: posts and voids find their hold here, and
 * the holds past their timeout are found here to expire, without reading
 * the log.  A hold that ends in a batch stays until the batch's end,
 * so that a second post or void in the same batch names what happened to
 * it; later ones learn it from ledger.hold_ends.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "ledger.h"
#include "apply.h"

static HTAB *hold_cache = NULL;

/* No open hold expires before this; 0 when none has a timeout. */
static TimestampTz next_expiry = 0;

/* The holds that ended, or were rejected, in the current batch. */
static int64 *ended = NULL;
static int	nended = 0;
static int	maxended = 0;

static void
remember_ended(int64 hold_id)
{
	if (nended == maxended)
	{
		maxended = Max(64, maxended * 2);
		ended = ended ?
			repalloc(ended, sizeof(int64) * maxended) :
			MemoryContextAlloc(TopMemoryContext, sizeof(int64) * maxended);
	}
	ended[nended++] = hold_id;
}

void
ledger_holds_reset(void)
{
	if (hold_cache)
		hash_destroy(hold_cache);
	hold_cache = NULL;
	next_expiry = 0;
	nended = 0;
}

static void
create_cache(void)
{
	hold_cache = ledger_hash_create("ledger open holds", 1024, sizeof(int64),
									sizeof(HoldState), TopMemoryContext);
}

HoldState *
ledger_hold_add(int64 hold_id, int64 account_id, int64 to_account,
				int64 amount, TimestampTz expires_at, char state)
{
	HoldState  *hold;

	if (hold_cache == NULL)
		create_cache();
	hold = hash_search(hold_cache, &hold_id, HASH_ENTER, NULL);
	hold->account_id = account_id;
	hold->to_account = to_account;
	hold->amount = amount;
	hold->expires_at = expires_at;
	hold->state = state;
	if (state != LEDGER_HOLD_OPEN)
		remember_ended(hold_id);
	else if (expires_at != 0 && (next_expiry == 0 || expires_at < next_expiry))
		next_expiry = expires_at;
	return hold;
}

/* An open hold ended in this batch: posted, voided or expired. */
void
ledger_hold_ended(HoldState *hold, char state)
{
	Assert(hold->state == LEDGER_HOLD_OPEN);
	hold->state = state;
	remember_ended(hold->id);
}

/*
 * Load the open holds of the worker's accounts.  Called inside SPI, once
 * per installation.
 */
void
ledger_holds_load(int worker)
{
	uint64		i;

	ledger_holds_reset();
	if (ledger_execute_for_worker("SELECT e.id, e.account_id, e.to_account, e.amount, e.expires_at"
								  "  FROM ledger.event_log e"
								  "  JOIN ledger.accounts a ON a.id = e.account_id"
								  " WHERE e.kind = 'h' AND a.bucket % $1 = $2"
								  "   AND NOT EXISTS (SELECT FROM ledger.hold_ends h"
								  "                    WHERE h.hold_id = e.id)"
								  "   AND ledger.row_state(e) = 'a'",
								  worker) != SPI_OK_SELECT)
		elog(ERROR, "could not load the open holds of worker %d", worker);
	create_cache();
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		expires = SPI_getbinval(row, desc, 5, &isnull);

		ledger_hold_add(DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull)),
						DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull)),
						DatumGetInt64(SPI_getbinval(row, desc, 3, &isnull)),
						DatumGetInt64(SPI_getbinval(row, desc, 4, &isnull)),
						isnull ? 0 : DatumGetTimestampTz(expires),
						LEDGER_HOLD_OPEN);
	}
}

HoldState *
ledger_hold_find(int64 hold_id)
{
	if (hold_cache == NULL)
		return NULL;
	return hash_search(hold_cache, &hold_id, HASH_FIND, NULL);
}

/* Has the timeout of some open hold passed? */
bool
ledger_holds_any_due(TimestampTz now)
{
	return hold_cache != NULL && next_expiry != 0 && now >= next_expiry;
}

/*
 * The open holds whose timeout has passed, in a palloc'd array; NULL when
 * none.  Cheap until the earliest timeout comes.
 */
HoldState **
ledger_holds_due(TimestampTz now, int *ndue)
{
	HASH_SEQ_STATUS status;
	HoldState  *hold;
	HoldState **due;
	int			size = 16;

	*ndue = 0;
	if (!ledger_holds_any_due(now))
		return NULL;

	due = palloc(sizeof(HoldState *) * size);
	next_expiry = 0;
	hash_seq_init(&status, hold_cache);
	while ((hold = hash_seq_search(&status)) != NULL)
	{
		if (hold->state != LEDGER_HOLD_OPEN || hold->expires_at == 0)
			continue;
		if (hold->expires_at <= now)
		{
			if (*ndue == size)
			{
				size *= 2;
				due = repalloc(due, sizeof(HoldState *) * size);
			}
			due[(*ndue)++] = hold;
		}
		else if (next_expiry == 0 || hold->expires_at < next_expiry)
			next_expiry = hold->expires_at;
	}
	return due;
}

/* At the end of a batch, forget the holds that ended in it. */
void
ledger_holds_end_batch(void)
{
	int			i;

	for (i = 0; i < nended && hold_cache != NULL; i++)
		(void) hash_search(hold_cache, &ended[i], HASH_REMOVE, NULL);
	nended = 0;
}

/*
 * Why a hold that is not open cannot be posted or voided, as the rejection
 * reason of the post or void: it ended in an earlier batch, or its event
 * was rejected.  Called inside SPI.
 */
const char *
ledger_hold_gone_reason(int64 hold_id)
{
	Oid			argtype = INT8OID;
	Datum		arg = Int64GetDatum(hold_id);
	bool		isnull;
	Datum		value;

	if (SPI_execute_with_args("SELECT ledger.row_state(e), h.status FROM ledger.event_log e"
							  "  LEFT JOIN ledger.hold_ends h ON h.hold_id = e.id"
							  " WHERE e.id = $1 AND e.kind = 'h'",
							  1, &argtype, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up hold " INT64_FORMAT, hold_id);
	if (SPI_processed != 1)
		return "hold_not_found";
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (DatumGetChar(value) == LEDGER_REJECTED)
		return ledger_hold_end_reason(LEDGER_HOLD_REJECTED);
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	if (isnull)
		elog(ERROR, "hold " INT64_FORMAT " is open but not known to its worker",
			 hold_id);
	return ledger_hold_end_reason(DatumGetChar(value));
}

/*
 * The rejection reason of a post or void of a hold that is no longer open:
 * state is how it ended (or LEDGER_HOLD_REJECTED).
 */
const char *
ledger_hold_end_reason(char state)
{
	switch (state)
	{
		case LEDGER_HOLD_REJECTED:
			return "hold_rejected";
		case LEDGER_HOLD_POSTED:
			return "hold_posted";
		case LEDGER_HOLD_VOIDED:
			return "hold_voided";
		default:
			return "hold_expired";
	}
}
