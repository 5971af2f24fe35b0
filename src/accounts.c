/*-------------------------------------------------------------------------
 *
 * accounts.c
 *	  The bucket worker's account cache, and the checks of a debit.
 *
 * An account is loaded the first time a batch names it: its flags and
 * currency, its newest leg and breakpoint, the running total of its open
 * holds, its limits and, when it has a daily debit limit, its debits of the
 * last 24 hours: a handful of index probes, however long its history.  From
 * then on the worker keeps all of it up to date itself.  Changed limits
 * empty the cache (installed.c): the accounts are loaded again, limits with
 * them.
 *
 * The supply bound.  What an account owes is what its open holds and a
 * negative balance take beyond its money: max(0, held - balance).  Only
 * accounts that may go negative (external ones, allow_negative, an
 * overdraft limit) ever owe anything.  The worker keeps, per bucket and
 * currency, the total its accounts owe, and rejects a debit or hold that
 * would take it past LEDGER_BUCKET_SUPPLY ("supply_limit").  Credits only
 * lower it.  Since every bucket of every node is bound so, the money a
 * currency holds, which is what its accounts owe, stays below 2^63: no
 * balance and no credit in flight can overflow, whatever the order in which
 * events are decided.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "ledger.h"
#include "apply.h"

/* The window a daily debit limit looks back over. */
#define DAY_USECS	(INT64CONST(24) * 60 * 60 * 1000000)

/*
 * The debits of one account over the last day, oldest first, as a growing
 * array read from head on: entries fall out at the head as they age.
 */
struct DebitWindow
{
	int			head;
	int			n;
	int			size;
	TimestampTz *at;
	int64	   *amount;
	int128		total;			/* of entries head .. n - 1 */
};

static HTAB *account_cache = NULL;
static MemoryContext cache_context = NULL;

/* What the accounts of one bucket owe in one currency. */
typedef struct SupplyKey
{
	int32		bucket;
	int32		currency;
} SupplyKey;

struct Supply
{
	SupplyKey	key;
	int128		owed;
};

/* Kept apart from the accounts: forgetting them must not forget this. */
static HTAB *supply = NULL;

/* The accounts whose open holds changed in the current batch. */
static AccountState **held_changed = NULL;
static int	nheld_changed = 0;
static int	max_held_changed = 0;

static SPIPlanPtr load_plan = NULL;
static SPIPlanPtr window_plan = NULL;
static SPIPlanPtr directory_plan = NULL;

/* Forget every account, and the plans that loaded them. */
void
ledger_accounts_reset(void)
{
	if (cache_context)
		MemoryContextDelete(cache_context);
	cache_context = NULL;
	account_cache = NULL;
	nheld_changed = 0;
	ledger_free_plan(&load_plan);
	ledger_free_plan(&window_plan);
	ledger_free_plan(&directory_plan);
}

static void
create_cache(void)
{
	cache_context = AllocSetContextCreate(TopMemoryContext,
										  "ledger account cache",
										  ALLOCSET_DEFAULT_SIZES);
	account_cache = ledger_hash_create("ledger account cache", 4096, sizeof(int64),
									   sizeof(AccountState), cache_context);
}

AccountState *
ledger_find_account(int64 account_id)
{
	if (account_cache == NULL)
		return NULL;
	return hash_search(account_cache, &account_id, HASH_FIND, NULL);
}

/* Daily windows */

static void
window_append(DebitWindow *w, TimestampTz at, int64 amount)
{
	if (w->n == w->size)
	{
		if (w->head > 0)
		{
			/* slide the live entries down rather than grow */
			memmove(w->at, w->at + w->head, sizeof(TimestampTz) * (w->n - w->head));
			memmove(w->amount, w->amount + w->head, sizeof(int64) * (w->n - w->head));
			w->n -= w->head;
			w->head = 0;
		}
		if (w->n == w->size)
		{
			w->size *= 2;
			w->at = repalloc(w->at, sizeof(TimestampTz) * w->size);
			w->amount = repalloc(w->amount, sizeof(int64) * w->size);
		}
	}
	w->at[w->n] = at;
	w->amount[w->n] = amount;
	w->n++;
	w->total += amount;
}

/* The account's debits of the 24 hours before now. */
static int128
window_total(DebitWindow *w, TimestampTz now)
{
	while (w->head < w->n && w->at[w->head] <= now - DAY_USECS)
	{
		w->total -= w->amount[w->head];
		w->head++;
	}
	if (w->head == w->n)
		w->head = w->n = 0;
	return w->total;
}

/*
 * Read the account's debits of the last 24 hours.  Legs before the newest
 * breakpoint older than that are not read, so the cost is that of the
 * day's legs and at most one breakpoint interval, not of the history.
 */
static DebitWindow *
load_window(AccountState *acct, TimestampTz now)
{
	Oid			argtypes[2] = {INT8OID, TIMESTAMPTZOID};
	Datum		args[2];
	DebitWindow *w;
	uint64		i;

	w = MemoryContextAllocZero(cache_context, sizeof(DebitWindow));
	w->size = 16;
	w->at = MemoryContextAlloc(cache_context, sizeof(TimestampTz) * w->size);
	w->amount = MemoryContextAlloc(cache_context, sizeof(int64) * w->size);

	ledger_prepare_plan(&window_plan,
						"SELECT t.created_at, -t.amount FROM ledger.transactions t"
						" WHERE t.account_id = $1 AND t.amount < 0 AND t.created_at > $2"
						"   AND t.id > COALESCE((SELECT b.last_txn_id FROM ledger.breakpoints b"
						"                         WHERE b.account_id = $1 AND b.created_at <= $2"
						"                         ORDER BY b.created_at DESC, b.last_txn_id DESC"
						"                         LIMIT 1), 0)"
						" ORDER BY t.id",
						2, argtypes);
	args[0] = Int64GetDatum(acct->id);
	args[1] = TimestampTzGetDatum(now - DAY_USECS);
	if (SPI_execute_plan(window_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the debits of account " INT64_FORMAT, acct->id);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		window_append(w,
					  DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc, 1, &isnull)),
					  DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
												  SPI_tuptable->tupdesc, 2, &isnull)));
	}
	return w;
}

/* The supply bound */

static int64
int64_or(HeapTuple row, TupleDesc desc, int column, int64 otherwise)
{
	bool		isnull;
	Datum		value = SPI_getbinval(row, desc, column, &isnull);

	return isnull ? otherwise : DatumGetInt64(value);
}


/* What an account owes: what its holds and debits take beyond its money. */
static int128
owed(int128 balance, int64 held)
{
	int128		beyond = held - balance;

	return beyond > 0 ? beyond : 0;
}

static Supply *
supply_of(int bucket, int currency)
{
	SupplyKey	key;
	Supply	   *entry;
	bool		found;

	if (supply == NULL)
		supply = ledger_hash_create("ledger supply", 64, sizeof(SupplyKey),
									sizeof(Supply), TopMemoryContext);
	memset(&key, 0, sizeof(key));
	key.bucket = bucket;
	key.currency = currency;
	entry = hash_search(supply, &key, HASH_ENTER, &found);
	if (!found)
		entry->owed = 0;
	return entry;
}

/*
 * Count what the accounts of the worker's buckets owe, from the accounts
 * that may owe anything.  Once per installation, as the worker starts.
 * Called inside SPI.
 */
void
ledger_supply_load(int worker)
{
	uint64		i;

	ledger_supply_reset();
	if (ledger_execute_for_worker("SELECT a.bucket, a.currency, t.balance_after, h.held"
								  "  FROM ledger.accounts a"
								  "  LEFT JOIN LATERAL"
								  "       (SELECT t.balance_after FROM ledger.transactions t"
								  "         WHERE t.account_id = a.id"
								  "         ORDER BY t.id DESC LIMIT 1) t ON true"
								  "  LEFT JOIN LATERAL"
								  "       (SELECT h.held FROM ledger.account_holds h"
								  "         WHERE h.account_id = a.id"
								  "         ORDER BY h.id DESC LIMIT 1) h ON true"
								  " WHERE a.bucket % $1 = $2"
								  "   AND (a.allow_negative"
								  "        OR EXISTS (SELECT FROM ledger.limits l"
								  "                    WHERE l.account_id = a.id))",
								  worker) != SPI_OK_SELECT)
		elog(ERROR, "could not count what the accounts of worker %d owe", worker);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Supply	   *s;

		s = supply_of(DatumGetInt32(SPI_getbinval(row, desc, 1, &isnull)),
					  DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull)));
		s->owed += owed(int64_or(row, desc, 3, 0), int64_or(row, desc, 4, 0));
	}
}

void
ledger_supply_reset(void)
{
	if (supply)
		hash_destroy(supply);
	supply = NULL;
}

/*
 * Would the account's bucket still owe no more than the bound, were its
 * balance and open holds these?
 */
static bool
within_supply(AccountState *acct, int128 balance, int64 held)
{
	int128		more = owed(balance, held) - owed(acct->balance, acct->held);

	return more <= 0 || acct->supply->owed + more <= LEDGER_BUCKET_SUPPLY;
}

/*
 * Set an owned account's balance and open holds, keeping what its bucket
 * owes, and noting a change of its holds for ledger.account_holds.
 */
void
ledger_account_set(AccountState *acct, int64 balance, int64 held)
{
	Assert(acct->owned);
	acct->supply->owed += owed(balance, held) - owed(acct->balance, acct->held);
	if (held != acct->held && !acct->held_changed)
	{
		if (nheld_changed == max_held_changed)
		{
			max_held_changed = Max(64, max_held_changed * 2);
			held_changed = held_changed == NULL ?
				MemoryContextAlloc(TopMemoryContext,
								   sizeof(AccountState *) * max_held_changed) :
				repalloc(held_changed, sizeof(AccountState *) * max_held_changed);
		}
		held_changed[nheld_changed++] = acct;
		acct->held_changed = true;
	}
	acct->balance = balance;
	acct->held = held;
}

/*
 * The accounts whose open holds changed since the last call, for the batch
 * to record their new totals; forgotten by the next call.
 */
AccountState **
ledger_accounts_held_changed(int *n)
{
	int			i;

	*n = nheld_changed;
	for (i = 0; i < nheld_changed; i++)
		held_changed[i]->held_changed = false;
	nheld_changed = 0;
	return held_changed;
}

/* Loading */

/*
 * An account entering the cache, with no legs, holds, limits or window: the
 * loaders fill in what they read.
 */
static AccountState *
new_account(int64 id)
{
	AccountState *acct = hash_search(account_cache, &id, HASH_ENTER, NULL);

	memset((char *) acct + sizeof(acct->id), 0, sizeof(AccountState) - sizeof(acct->id));
	acct->overdraft_limit = LEDGER_NO_LIMIT;
	acct->max_amount = LEDGER_NO_LIMIT;
	acct->daily_debit_limit = LEDGER_NO_LIMIT;
	return acct;
}

/*
 * Enter into the cache the account a row of load_plan describes (see
 * ledger_load_accounts() for its columns): one of this node, owned if the
 * worker serves its bucket.
 */
static void
enter_account(HeapTuple row, TupleDesc desc, int worker)
{
	AccountState *acct = new_account(int64_or(row, desc, 1, 0));
	bool		isnull;

	acct->bucket = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
	acct->allow_negative = DatumGetBool(SPI_getbinval(row, desc, 3, &isnull));
	acct->owned = ledger_worker_of_bucket(acct->bucket) == worker;
	acct->last_txn_id = int64_or(row, desc, 4, 0);
	acct->balance = int64_or(row, desc, 5, 0);
	acct->bp_first_txn_id = int64_or(row, desc, 6, 0) + 1;
	acct->bp_balance = int64_or(row, desc, 7, 0);

	/*
	 * Count the legs since the breakpoint from here on: after a restart the
	 * next breakpoint of an account may cover up to twice the interval,
	 * which keeps loading an account to two index probes (new_account() set
	 * the count to 0).
	 */
	acct->currency = DatumGetInt32(SPI_getbinval(row, desc, 8, &isnull));
	acct->overdraft_limit = int64_or(row, desc, 9, LEDGER_NO_LIMIT);
	acct->max_amount = int64_or(row, desc, 10, LEDGER_NO_LIMIT);
	acct->daily_debit_limit = int64_or(row, desc, 11, LEDGER_NO_LIMIT);
	acct->held = int64_or(row, desc, 12, 0);
	acct->last_leg_at = DatumGetTimestampTz(SPI_getbinval(row, desc, 13, &isnull));
	if (isnull)
		acct->last_leg_at = DT_NOBEGIN;
	acct->closed = DatumGetBool(SPI_getbinval(row, desc, 14, &isnull)) && !isnull;
	if (acct->owned)
		acct->supply = supply_of(acct->bucket, acct->currency);
}

/*
 * In a cluster, the accounts of other nodes that the batch pays: from the
 * directory, as accounts this worker does not own, on their node.
 */
static void
load_remote_accounts(Datum *wanted, int nwanted)
{
	Oid			argtypes[2] = {INT8ARRAYOID, INT4OID};
	Datum		args[2];
	uint64		i;

	ledger_prepare_plan(&directory_plan,
						"SELECT d.account_id, d.node_id, d.currency FROM ledger.directory d"
						" WHERE d.account_id = ANY ($1) AND d.node_id <> $2",
						2, argtypes);
	args[0] = ledger_bigint_array(wanted, nwanted);
	args[1] = Int32GetDatum(ledger_node_id);
	if (SPI_execute_plan(directory_plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the directory of accounts");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		int64		id = int64_or(row, desc, 1, 0);
		AccountState *acct;
		bool		isnull;

		acct = new_account(id);
		acct->bucket = -1;
		acct->node = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
		strlcpy(acct->currency_code, SPI_getvalue(row, desc, 3),
				sizeof(acct->currency_code));
	}
}

/*
 * Load into the cache those of the accounts given that it does not hold
 * yet.  An id that is no account is left out: the events naming it are
 * rejected.  Called inside SPI.
 */
void
ledger_load_accounts(int64 *ids, int nids, int worker, bool in_cluster,
					 TimestampTz now)
{
	Oid			argtype = INT8ARRAYOID;
	Datum	   *wanted = palloc(sizeof(Datum) * Max(nids, 1));
	int			nwanted = 0;
	Datum		arg;
	uint64		i;
	int			j;

	if (account_cache == NULL)
		create_cache();
	for (j = 0; j < nids; j++)
		if (ledger_find_account(ids[j]) == NULL)
			wanted[nwanted++] = Int64GetDatum(ids[j]);
	if (nwanted == 0)
		return;

	/*
	 * Columns: id, bucket, allow_negative, newest leg and its balance,
	 * newest breakpoint and its balance, currency, limits, the running
	 * total of open holds, the newest leg's time, and whether it is closed.
	 */
	ledger_prepare_plan(&load_plan,
						"SELECT a.id, a.bucket, a.allow_negative,"
						"       t.id, t.balance_after, b.last_txn_id, b.current_balance,"
						"       a.currency, l.overdraft_limit, l.max_amount,"
						"       l.daily_debit_limit, h.held, t.created_at, c.closed"
						"  FROM ledger.accounts a"
						"  LEFT JOIN LATERAL"
						"       (SELECT t.id, t.balance_after, t.created_at"
						"          FROM ledger.transactions t"
						"         WHERE t.account_id = a.id"
						"         ORDER BY t.id DESC LIMIT 1) t ON true"
						"  LEFT JOIN LATERAL"
						"       (SELECT b.last_txn_id, b.current_balance FROM ledger.breakpoints b"
						"         WHERE b.account_id = a.id"
						"         ORDER BY b.last_txn_id DESC LIMIT 1) b ON true"
						"  LEFT JOIN LATERAL"
						"       (SELECT l.overdraft_limit, l.max_amount, l.daily_debit_limit"
						"          FROM ledger.limits l WHERE l.account_id = a.id"
						"         ORDER BY l.id DESC LIMIT 1) l ON true"
						"  LEFT JOIN LATERAL"
						"       (SELECT h.held FROM ledger.account_holds h"
						"         WHERE h.account_id = a.id"
						"         ORDER BY h.id DESC LIMIT 1) h ON true"
						"  LEFT JOIN LATERAL"
						"       (SELECT c.closed FROM ledger.closures c"
						"         WHERE c.account_id = a.id"
						"         ORDER BY c.event_id DESC LIMIT 1) c ON true"
						" WHERE a.id = ANY ($1)",
						1, &argtype);
	arg = ledger_bigint_array(wanted, nwanted);
	if (SPI_execute_plan(load_plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not load accounts");

	for (i = 0; i < SPI_processed; i++)
		enter_account(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, worker);

	/* the windows last: reading them replaces SPI_tuptable */
	for (j = 0; j < nwanted; j++)
	{
		AccountState *acct = ledger_find_account(DatumGetInt64(wanted[j]));

		if (acct && acct->owned && acct->daily_debit_limit != LEDGER_NO_LIMIT &&
			acct->window == NULL)
			acct->window = load_window(acct, now);
	}

	if (in_cluster)
	{
		int			nmissing = 0;

		for (j = 0; j < nwanted; j++)
			if (ledger_find_account(DatumGetInt64(wanted[j])) == NULL)
				wanted[nmissing++] = wanted[j];
		if (nmissing > 0)
			load_remote_accounts(wanted, nmissing);
	}
}

/* Deciding */

/*
 * May the account pay amount now, or hold it?  Its limits first (largest
 * debit, debits of the last 24 hours with its open holds), then what is
 * left of the balance once its open holds are set aside: down to minus its
 * overdraft limit if it has one, without end if it may go negative, else to
 * zero; and its bucket may not owe more than the supply bound.  A hold of
 * amount owes what a debit of it would, so one check serves both.  Sets
 * *reason when not.
 */
bool
ledger_can_debit(AccountState *acct, int64 amount, TimestampTz now,
				 const char **reason)
{
	int128		after = (int128) acct->balance - amount;
	int128		available = after - acct->held;

	if (acct->closed)
	{
		*reason = "account_closed";
		return false;
	}
	if (acct->max_amount != LEDGER_NO_LIMIT && amount > acct->max_amount)
	{
		*reason = "max_amount";
		return false;
	}
	/* open holds count against the day's limit from when they are placed */
	if (acct->window != NULL &&
		window_total(acct->window, now) + acct->held + amount > acct->daily_debit_limit)
	{
		*reason = "daily_debit_limit";
		return false;
	}
	if (acct->overdraft_limit != LEDGER_NO_LIMIT)
	{
		if (available < -(int128) acct->overdraft_limit)
		{
			*reason = "overdraft_limit";
			return false;
		}
	}
	else if (available < 0 && !acct->allow_negative)
	{
		*reason = "insufficient_funds";
		return false;
	}
	if (!within_supply(acct, after, acct->held))
	{
		*reason = "supply_limit";
		return false;
	}
	/* only a ledger that was past the supply bound before 1.5 gets here */
	if (after < PG_INT64_MIN)
	{
		*reason = "overflow";
		return false;
	}
	return true;
}

bool
ledger_can_credit(AccountState *acct, int64 amount, const char **reason)
{
	int64		result;

	if (acct->closed)
	{
		*reason = "account_closed";
		return false;
	}
	if (pg_add_s64_overflow(acct->balance, amount, &result))
	{
		*reason = "overflow";
		return false;
	}
	return true;
}

/* Count a debit posted to the account in its daily window. */
void
ledger_note_debit(AccountState *acct, int64 amount, TimestampTz at)
{
	if (acct->window != NULL)
		window_append(acct->window, at, amount);
}
