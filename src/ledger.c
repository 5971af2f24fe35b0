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

#include "catalog/namespace.h"
#include "access/xlog.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"

#include "ledger.h"

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

/*
 * Prepare an SPI plan once per backend and keep it.  The API functions run
 * with search_path pinned, and a kept plan is replanned with the search_path
 * it was made with, so callers' paths never reach it.  The plans are
 * generic: every statement is a handful of index probes whatever its
 * parameters, and planning it again at each call would cost more than
 * running it.
 */
SPIPlanPtr
ledger_prepare_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare_cursor(sql, nargs, argtypes,
										   CURSOR_OPT_GENERIC_PLAN);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s",
				 sql, SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	return *plan;
}

/* A bigint[] of the Datums given. */
Datum
ledger_bigint_array(Datum *values, int n)
{
	return PointerGetDatum(construct_array(values, n, INT8OID, 8,
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * A hash table in memory context cxt whose entries start with their key, of
 * keysize bytes compared as bytes (an int64 id, mostly).
 */
HTAB *
ledger_hash_create(const char *name, long nelem, Size keysize, Size entrysize,
				   MemoryContext cxt)
{
	HASHCTL		ctl;

	ctl.keysize = keysize;
	ctl.entrysize = entrysize;
	ctl.hcxt = cxt;
	return hash_create(name, nelem, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* Free a plan ledger_prepare_plan() kept, if there is one. */
void
ledger_free_plan(SPIPlanPtr *plan)
{
	if (*plan)
		SPI_freeplan(*plan);
	*plan = NULL;
}

/*
 * The worker that serves a bucket.  Buckets above ledger.buckets exist only
 * if the setting was lowered; they are shared out among the workers, so that
 * each bucket still has exactly one.
 */
int
ledger_worker_of_bucket(int bucket)
{
	return bucket % ledger_buckets;
}

/* The OID of the ledger extension in this database, or InvalidOid. */
Oid
ledger_extension_oid(void)
{
	return get_extension_oid("ledger", true);
}

/*
 * Which schema does this database hold?  The library serves its own
 * version's only: a database with an earlier one waits for ALTER EXTENSION
 * ledger UPDATE (its queued events stay queued).  Told by the object each
 * version added last, so that asking costs two syscache probes.
 */
LedgerSchema
ledger_schema(void)
{
	Oid			nsp = get_namespace_oid("ledger", true);

	if (!OidIsValid(nsp))
		return LEDGER_SCHEMA_NONE;
	/* 1.6's */
	if (OidIsValid(get_relname_relid("batches", nsp)))
		return LEDGER_SCHEMA_CURRENT;
	return LEDGER_SCHEMA_OLDER;
}

/*
 * ledger.system_identifier() - this cluster's system identifier, which
 * ledger.installation compares with the one its log's transaction ids are
 * of.
 */
PG_FUNCTION_INFO_V1(ledger_system_identifier);
Datum
ledger_system_identifier(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64((int64) GetSystemIdentifier());
}

/*
 * Are the log's transaction ids of another history than this cluster's?
 * They are when the row of ledger.installation in force (the newest take-
 * over, see ledger--1.5--1.6.sql) names another cluster: a dump restored
 * there.  They are too when the newest batch of a bucket since that take-
 * over saw transaction ids this cluster has not yet given out: a dump of a
 * later state of this same cluster, restored into a copy of it from before
 * (a physical backup, a standby promoted).  Sets *base_id, the event up to
 * which they are of an earlier history.  Called inside SPI.
 */
bool
ledger_installation(int64 *base_id)
{
	bool		isnull;

	if (SPI_execute("SELECT i.system_id <> ledger.system_identifier()"
					"       OR EXISTS (SELECT FROM pg_catalog.generate_series(0, 63) k(bucket),"
					"                  LATERAL (SELECT b.id, b.cur_xmax FROM ledger.batches b"
					"                            WHERE b.bucket = k.bucket"
					"                            ORDER BY b.id DESC LIMIT 1) l"
					"                   WHERE l.id > i.base_batch"
					"                     AND l.cur_xmax > pg_catalog.pg_snapshot_xmax("
					"                                        pg_catalog.pg_current_snapshot())),"
					"       i.base_id"
					"  FROM ledger.installation i"
					" ORDER BY i.base_batch DESC, i.base_id DESC, i.since DESC,"
					"          i.system_id = ledger.system_identifier()"
					" LIMIT 1", false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "ledger.installation is empty");
	*base_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 2, &isnull));
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Refuse to enqueue into a ledger restored from another history that the
 * workers have not taken over yet: its events would be logged under
 * transaction ids the workers cannot tell from the restored ones.  Asked
 * once per backend and installation, which its table ledger.installation
 * stands for: a restore creates it again.  (Its OID comes from the syscache;
 * the extension's would cost a scan of pg_extension every call.)  Called
 * inside SPI, as the extension's owner.
 */
void
ledger_require_installation(void)
{
	static Oid	checked = InvalidOid;
	Oid			installation = get_relname_relid("installation",
												 get_namespace_oid("ledger", false));
	int64		base_id;

	if (installation == checked)
		return;
	if (ledger_installation(&base_id))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the ledger was restored from another cluster, and its workers have not taken it over yet"),
				 errdetail("Its events are logged under the other cluster's transaction ids until they have."),
				 errhint("Retry in a moment; the workers do it as they start.")));
	checked = installation;
}

/*
 * Where the columns names[] are in the rows of table relid, into attnums[]:
 * the library names columns, not positions, in the rows it builds itself.
 */
void
ledger_column_attnums(Oid relid, const char *const *names, int n,
					  AttrNumber *attnums)
{
	int			i;

	for (i = 0; i < n; i++)
		if ((attnums[i] = get_attnum(relid, names[i])) == InvalidAttrNumber)
			elog(ERROR, "table %s has no column %s", get_rel_name(relid), names[i]);
}

/* Refuse to enqueue into a schema the library does not serve. */
void
ledger_require_schema(void)
{
	if (ledger_schema() != LEDGER_SCHEMA_CURRENT)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the ledger extension must be updated to use this version of its library"),
				 errdetail("The library is version %s; the events already queued wait for the update.",
						   LEDGER_VERSION),
				 errhint("Run ALTER EXTENSION ledger UPDATE.")));
}

/* Is this server a node of a cluster of ledgers? */
bool
ledger_in_cluster(void)
{
	return ledger_node_id != 0;
}

/* The name of an event kind, as ledger.kind_name() gives it in SQL. */
const char *
ledger_kind_name(char kind)
{
	switch (kind)
	{
		case LEDGER_DEPOSIT:
			return "deposit";
		case LEDGER_WITHDRAW:
			return "withdraw";
		case LEDGER_TRANSFER:
			return "transfer";
		case LEDGER_DISBURSE:
			return "disburse";
		case LEDGER_HOLD:
			return "hold";
		case LEDGER_POST:
			return "post";
		case LEDGER_VOID:
			return "void";
		case LEDGER_CREDIT:
			return "credit";
	}
	return "unknown";
}

/* ledger_supply_bound() - LEDGER_BUCKET_SUPPLY, for SQL */
PG_FUNCTION_INFO_V1(ledger_supply_bound);
Datum
ledger_supply_bound(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(LEDGER_BUCKET_SUPPLY);
}

/*
 * A currency code: an upper-case letter, then up to 15 upper-case letters,
 * digits or underscores ("USD", "EUR", "USDC").
 */
bool
ledger_valid_currency_code(const char *code)
{
	int			i;

	if (code == NULL || !(code[0] >= 'A' && code[0] <= 'Z'))
		return false;
	for (i = 1; code[i] != '\0'; i++)
	{
		if (i >= LEDGER_MAX_CURRENCY_LENGTH ||
			!((code[i] >= 'A' && code[i] <= 'Z') ||
			  (code[i] >= '0' && code[i] <= '9') || code[i] == '_'))
			return false;
	}
	return true;
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

/* ledger.external_account(bucket, currency) - LEDGER_EXTERNAL_ACCOUNT, for SQL */
PG_FUNCTION_INFO_V1(ledger_external_account);
Datum
ledger_external_account(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(LEDGER_EXTERNAL_ACCOUNT(PG_GETARG_INT32(0), PG_GETARG_INT32(1)));
}
