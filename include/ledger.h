/*-------------------------------------------------------------------------
 *
 * ledger.h
 *	  What every source file of the ledger extension shares: the event
 *	  kinds and outcomes, the settings, the state in shared memory, and the
 *	  few functions every part calls (schema.c, definitions.c,
 *	  spi_tools.c).  Each other module has a header of its own.
 *
 * The extension is built around one queue of events (ledger.queue) that
 * clients append to, and one background worker per bucket of accounts that
 * applies its bucket's events in batches, writing immutable legs to
 * ledger.transactions.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_H
#define LEDGER_H

#include "executor/spi.h"
#include "fmgr.h"
#include "executor/tuptable.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/itemptr.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

/* The most buckets (and so workers) a server may run. */
#define LEDGER_MAX_BUCKETS	64

/* Event kinds, as stored in ledger.queue.kind and ledger.events.kind. */
#define LEDGER_DEPOSIT		'd'
#define LEDGER_WITHDRAW		'w'
#define LEDGER_TRANSFER		't'
#define LEDGER_DISBURSE		's'
#define LEDGER_CREDIT		'c'
#define LEDGER_HOLD			'h'		/* since 1.2 */
#define LEDGER_POST			'p'
#define LEDGER_VOID			'v'
#define LEDGER_LINKED		'l'		/* since 1.9 */
#define LEDGER_CLOSE		'x'
#define LEDGER_REOPEN		'o'

/* How a hold ended, as stored in ledger.hold_ends.status. */
#define LEDGER_HOLD_POSTED	'p'
#define LEDGER_HOLD_VOIDED	'v'
#define LEDGER_HOLD_EXPIRED	'x'

/* Event outcomes, as stored in ledger.events.status. */
#define LEDGER_APPLIED		'a'
#define LEDGER_REJECTED		'r'

/*
 * The external account that balances the deposits and withdrawals of a
 * bucket in one currency (numbered as in ledger.currencies), and back.
 * Currency 0's are the external accounts of 1.0, one per bucket.  SQL has
 * the same formula as ledger.external_account().
 */
#define LEDGER_EXTERNAL_ACCOUNT(bucket, currency) \
	(-1 - (int64) (bucket) - (int64) LEDGER_MAX_BUCKETS * (currency))
#define LEDGER_EXTERNAL_BUCKET(account_id) \
	((int) ((-1 - (account_id)) % LEDGER_MAX_BUCKETS))
#define LEDGER_EXTERNAL_CURRENCY(account_id) \
	((int) ((-1 - (account_id)) / LEDGER_MAX_BUCKETS))

/* Longest currency code, in bytes. */
#define LEDGER_MAX_CURRENCY_LENGTH	16

/* Longest idempotency key, in bytes: keys are kept in a btree. */
#define LEDGER_MAX_KEY_LENGTH	256

/*
 * What the accounts of one bucket may owe, per currency: the sum of what
 * their open holds and negative balances take beyond their money.  A node
 * has at most LEDGER_MAX_BUCKETS buckets and a cluster at most 1024 nodes,
 * so all the accounts of a currency together owe less than 2^63, the
 * money they hold is as much, and no balance can overflow.
 */
#define LEDGER_BUCKET_SUPPLY	((INT64CONST(1) << 47) - 1)

/* SQLSTATE of an idempotency key used again for another request. */
#define ERRCODE_LEDGER_KEY_REUSED	MAKE_SQLSTATE('2','3','L','0','1')

/*
 * The schema the library finds in the database: it serves its own
 * version's only.
 */
typedef enum LedgerSchema
{
	LEDGER_SCHEMA_NONE,			/* no extension */
	LEDGER_SCHEMA_OLDER,		/* waiting for ALTER EXTENSION ledger UPDATE */
	LEDGER_SCHEMA_CURRENT
} LedgerSchema;


/* GUCs (ledger.c) */
extern char *ledger_database;
extern int	ledger_buckets;
extern int	ledger_batch_size;
extern int	ledger_poll_interval;
extern int	ledger_max_payees;
extern int	ledger_breakpoint_interval;
extern bool ledger_log_batches;
extern char *ledger_default_currency;
extern int	ledger_max_pending_per_account;
extern int	ledger_node_id;

/*
 * State shared between the workers and the backends (ledger.c).  The latch
 * of each running worker lets a committing enqueuer wake the worker that
 * will apply its events; the condition variable lets ledger_wait() sleep
 * until some worker has committed a batch.  Each slot also holds its
 * worker's statistics and pause flag (stats.c).
 */
typedef enum LedgerWorkerState
{
	LEDGER_STATE_STOPPED = 0,
	LEDGER_STATE_WAITING,		/* for the extension to be created */
	LEDGER_STATE_OUTDATED,		/* for the extension to be updated */
	LEDGER_STATE_IDLE,
	LEDGER_STATE_APPLYING,
	LEDGER_STATE_PAUSED,
	LEDGER_STATE_UNMAPPED,		/* the node map gives it no account */
	LEDGER_STATE_BACKOFF		/* waiting to try again after an error */
} LedgerWorkerState;

/* How much of a worker's last error ledger_stats shows. */
#define LEDGER_ERROR_LEN	256

/* Seconds over which ledger_stats reports events per second. */
#define LEDGER_RATE_SECONDS	60

typedef struct LedgerWorkerStats
{
	uint64		events_applied;
	uint64		events_rejected;
	uint64		credits_applied;
	uint64		batches;
	uint64		entries;		/* queue entries read, over all batches */
	double		total_batch_ms;
	double		last_batch_ms;
	int			last_batch_size;
	TimestampTz last_batch_at;
	int64		rate_second[LEDGER_RATE_SECONDS];	/* the second counted */
	uint64		rate_events[LEDGER_RATE_SECONDS];
} LedgerWorkerStats;

typedef struct LedgerWorkerSlot
{
	/*
	 * Wake-ups sent, counted: a worker that saw the count change during a
	 * pass does not sleep, though a lock wait in the pass took the latch's
	 * wake-up (ProcSleep() resets the latch it waits on).
	 */
	pg_atomic_uint64 wakeups;
	slock_t		mutex;			/* protects everything below */
	pid_t		pid;
	Latch	   *latch;
	bool		paused;
	LedgerWorkerState state;
	LedgerWorkerStats stats;

	/*
	 * Errors: how many passes in a row failed (each ends the worker, and the
	 * next one waits longer before it tries), and the last one's message.
	 * Kept across the worker's restarts, not the server's.
	 */
	int			failures;
	TimestampTz failed_at;
	char		error[LEDGER_ERROR_LEN];
} LedgerWorkerSlot;

/* The spam guard's counters of pending events (guard.c): 512 kB. */
#define LEDGER_GUARD_ROWS	2
#define LEDGER_GUARD_SLOTS	65536

typedef struct LedgerSharedState
{
	ConditionVariable batch_applied;
	/* bumped by every committed ledger_set_limits(): workers reload limits */
	pg_atomic_uint64 limits_generation;
	LedgerWorkerSlot workers[LEDGER_MAX_BUCKETS];
	pg_atomic_uint32 guard[LEDGER_GUARD_ROWS][LEDGER_GUARD_SLOTS];
} LedgerSharedState;

/* What one batch did. */
typedef struct LedgerBatchCounts
{
	int			read;			/* queue entries read */
	int			applied;		/* events applied */
	int			rejected;		/* events rejected */
	int			credits;		/* credit entries posted */
	int			expired;		/* holds expired */
	int			deferred;		/* entries left queued: credits held back,
								 * events waiting for a credit */
	bool		full;			/* read as many entries as it asked for */
} LedgerBatchCounts;

extern LedgerSharedState *ledger_shared;

/* schema.c */
extern Oid	ledger_extension_oid(void);
extern LedgerSchema ledger_schema(void);
extern void ledger_require_schema(void);
extern bool ledger_installation(int64 *base_id);
extern void ledger_require_installation(void);
extern bool ledger_in_cluster(void);

/* definitions.c */
extern int	ledger_worker_of_bucket(int bucket);
extern const char *ledger_kind_name(char kind);
extern bool ledger_valid_currency_code(const char *code);

/* spi_tools.c */
extern SPIPlanPtr ledger_prepare_plan(SPIPlanPtr *plan, const char *sql,
									  int nargs, Oid *argtypes);
extern void ledger_free_plan(SPIPlanPtr *plan);
extern int	ledger_execute_by_id(SPIPlanPtr *plan, const char *sql, int64 id);
extern int	ledger_execute_for_worker(const char *sql, int worker);
extern Datum ledger_bigint_array(Datum *values, int n);
extern struct HTAB *ledger_hash_create(const char *name, long nelem, Size keysize,
									   Size entrysize, MemoryContext cxt);
extern void ledger_column_attnums(Oid relid, const char *const *names, int n,
								  AttrNumber *attnums);

#endif							/* LEDGER_H */
