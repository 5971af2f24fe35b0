/*-------------------------------------------------------------------------
 *
 * ledger.c
 *	  Module start-up: settings, shared memory, and worker registration.
 *
 * The library must be in shared_preload_libraries for its workers to run.
 * Loaded any other way, the API functions still work (events are queued),
 * but nothing applies them until the server is restarted with the library
 * preloaded.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "ledger.h"
#include "guard.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

char	   *ledger_database = NULL;
int			ledger_buckets = 2;
int			ledger_batch_size = 500;
int			ledger_poll_interval = 1000;
int			ledger_max_payees = 1000;
int			ledger_breakpoint_interval = 1000;
bool		ledger_log_batches = false;
char	   *ledger_default_currency = NULL;
int			ledger_max_pending_per_account = 0;
int			ledger_node_id = 0;

LedgerSharedState *ledger_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void ledger_shmem_request(void);
static void ledger_shmem_startup(void);
static void define_settings(void);
static void register_workers(void);
static bool check_currency_code(char **newval, void **extra, GucSource source);

void
_PG_init(void)
{
	define_settings();

	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ledger_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ledger_shmem_startup;

	register_workers();
}

static void
define_settings(void)
{
	DefineCustomStringVariable("ledger.database",
							   "Database in which the ledger workers apply events.",
							   NULL,
							   &ledger_database,
							   "postgres",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("ledger.buckets",
							"Number of buckets, each with its own worker.",
							"A new account goes to bucket (id mod ledger.buckets) "
							"and stays there.",
							&ledger_buckets,
							2, 1, LEDGER_MAX_BUCKETS,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("ledger.batch_size",
							"Most events a worker applies in one transaction.",
							NULL,
							&ledger_batch_size,
							500, 1, 100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("ledger.poll_interval",
							"Longest a worker sleeps between looks at its queue.",
							"Committed enqueues wake the worker at once; this "
							"bounds the wait when a wake-up is missed.",
							&ledger_poll_interval,
							1000, 1, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("ledger.max_payees",
							"Most payees one disbursement may pay.",
							NULL,
							&ledger_max_payees,
							1000, 1, 100000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("ledger.breakpoint_interval",
							"Legs of an account between two of its breakpoints.",
							NULL,
							&ledger_breakpoint_interval,
							1000, 1, INT_MAX,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("ledger.default_currency",
							   "Currency of accounts opened without one.",
							   NULL,
							   &ledger_default_currency,
							   "XXX",
							   PGC_USERSET,
							   0,
							   check_currency_code, NULL, NULL);

	DefineCustomIntVariable("ledger.max_pending_per_account",
							"Most events of one paying account that may wait to be applied.",
							"Enqueueing more raises an error; 0 (the default) lets any number wait.",
							&ledger_max_pending_per_account,
							0, 0, INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("ledger.node_id",
							"This server's node number in a cluster of ledgers; 0 if none.",
							"Event ids are tagged with it; see ledger_cluster_init().",
							&ledger_node_id,
							0, 0, 1023,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("ledger.log_batches",
							 "Log every batch a worker applies.",
							 NULL,
							 &ledger_log_batches,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	MarkGUCPrefixReserved("ledger");
}

static void
register_workers(void)
{
	BackgroundWorker worker;
	int			i;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "ledger");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "ledger_worker_main");
	snprintf(worker.bgw_type, BGW_MAXLEN, "ledger bucket worker");

	for (i = 0; i < ledger_buckets; i++)
	{
		snprintf(worker.bgw_name, BGW_MAXLEN, "ledger bucket worker %d", i);
		worker.bgw_main_arg = Int32GetDatum(i);
		RegisterBackgroundWorker(&worker);
	}
}

static void
ledger_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();

	RequestAddinShmemSpace(MAXALIGN(sizeof(LedgerSharedState)));
}

static void
ledger_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ledger_shared = ShmemInitStruct("ledger", sizeof(LedgerSharedState), &found);
	if (!found)
	{
		int			i;

		memset(ledger_shared, 0, sizeof(LedgerSharedState));
		ConditionVariableInit(&ledger_shared->batch_applied);
		pg_atomic_init_u64(&ledger_shared->limits_generation, 0);
		for (i = 0; i < LEDGER_MAX_BUCKETS; i++)
		{
			SpinLockInit(&ledger_shared->workers[i].mutex);
			pg_atomic_init_u64(&ledger_shared->workers[i].wakeups, 0);
		}
		ledger_guard_init();
	}
	LWLockRelease(AddinShmemInitLock);
}

static bool
check_currency_code(char **newval, void **extra, GucSource source)
{
	if (ledger_valid_currency_code(*newval))
		return true;
	GUC_check_errdetail("A currency code is an upper-case letter followed by at most %d upper-case letters, digits or underscores.",
						LEDGER_MAX_CURRENCY_LENGTH - 1);
	return false;
}
