/*-------------------------------------------------------------------------
 *
 * transfer_many.c
 *	  ledger_transfer_many(): many transfers in one call, one commit.
 *
 * Each transfer is checked as ledger_transfer() checks it, and an error
 * about one names it in its context ("transfer N of the batch").  Then the
 * new ones go into the queue with one statement.  Their ids are drawn in
 * call order, so that each bucket applies them in that order.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "enqueue.h"
#include "caller.h"
#include "guard.h"
#include "keys.h"
#include "order.h"
#include "wait.h"
#include "ledger_errors.h"

/* Error context naming the element of a batch being checked. */
static void
batch_element_context(void *arg)
{
	int			element = *(int *) arg;

	if (element > 0)
		errcontext(LEDGER_ELEMENT_CONTEXT, element);
}

/* The optional text[] or jsonb[] argument, one element per transfer. */
static Datum *
get_elements(FunctionCallInfo fcinfo, int argno, Oid type, const char *name,
			 const char *elements, int n, bool **nulls)
{
	ArrayType  *array;
	Datum	   *elems;
	int			nelems;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	array = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", name)));
	deconstruct_array(array, type, -1, false, TYPALIGN_INT, &elems, nulls, &nelems);
	if (nelems != n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must have one element per transfer", name),
				 errdetail("There are %d transfers and %d %s.", n, nelems, elements)));
	return elems;
}

/* Queue the transfers of the columns given (n of them), in one statement. */
static void
insert_transfers(Datum **columns, bool *metadata_nulls, bool with_metadata, int n)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr metadata_plan = NULL;
	Oid			argtypes[6] = {INT4ARRAYOID, INT8ARRAYOID, INT8ARRAYOID,
		INT8ARRAYOID, INT8ARRAYOID, JSONBARRAYOID};
	Datum		args[6];
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			i;

	args[0] = PointerGetDatum(construct_array(columns[0], n, INT4OID, 4,
											  true, TYPALIGN_INT));
	for (i = 1; i < 5; i++)
		args[i] = ledger_bigint_array(columns[i], n);
	if (with_metadata)
	{
		ledger_prepare_plan(&metadata_plan,
							"INSERT INTO ledger.event_log (bucket, id, kind, account_id,"
							" to_account, amount, enqueued_at, metadata, txid)"
							" SELECT u.bucket, u.id, 't', u.account_id, u.to_account,"
							"        u.amount, statement_timestamp(), u.metadata,"
							"        pg_current_xact_id()"
							"   FROM unnest($1, $2, $3, $4, $5, $6)"
							"        AS u(bucket, id, account_id, to_account, amount, metadata)",
							6, argtypes);
		args[5] = PointerGetDatum(construct_md_array(columns[5], metadata_nulls,
													 1, dims, lbs, JSONBOID, -1,
													 false, TYPALIGN_INT));
	}
	else
		ledger_prepare_plan(&plan,
							"INSERT INTO ledger.event_log (bucket, id, kind, account_id,"
							" to_account, amount, enqueued_at, txid)"
							" SELECT u.bucket, u.id, 't', u.account_id, u.to_account,"
							"        u.amount, statement_timestamp(), pg_current_xact_id()"
							"   FROM unnest($1, $2, $3, $4, $5)"
							"        AS u(bucket, id, account_id, to_account, amount)",
							5, argtypes);
	if (SPI_execute_plan(with_metadata ? metadata_plan : plan, args, NULL, false, 0) !=
		SPI_OK_INSERT)
		elog(ERROR, "could not enqueue transfers");
}

/*
 * The arrays both functions start with: from_accounts, to_accounts and
 * amounts, of one length, which it returns.
 */
static int
get_transfer_arrays(FunctionCallInfo fcinfo, int64 **from, int64 **to,
					int64 **amounts)
{
	int			n;
	int			nto;
	int			namounts;

	ledger_require_arg(fcinfo, 0, "from_accounts");
	ledger_require_arg(fcinfo, 1, "to_accounts");
	ledger_require_arg(fcinfo, 2, "amounts");
	*from = ledger_get_bigint_array(PG_GETARG_ARRAYTYPE_P(0), "from_accounts", &n);
	*to = ledger_get_bigint_array(PG_GETARG_ARRAYTYPE_P(1), "to_accounts", &nto);
	*amounts = ledger_get_bigint_array(PG_GETARG_ARRAYTYPE_P(2), "amounts", &namounts);
	if (nto != n || namounts != n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_accounts, to_accounts and amounts must have the same length"),
				 errdetail("They have %d, %d and %d elements.", n, nto, namounts)));
	return n;
}

/*
 * The transfers of the arrays as movements of the kind given, each checked
 * as ledger_transfer() checks its arguments; *element names the one being
 * checked, for the error context.
 */
static Movement *
transfer_movements(char kind, int64 *from, int64 *to, int64 *amounts, int n,
				   int *element)
{
	Movement   *moves = palloc0(sizeof(Movement) * n);
	int			i;

	for (i = 0; i < n; i++)
	{
		Movement   *m = &moves[i];

		*element = i + 1;
		ledger_check_transfer(from[i], to[i], amounts[i]);
		m->kind = kind;
		m->account_id = from[i];
		m->to_account = to[i];
		m->amount = amounts[i];
		m->npayees = 1;
		m->payees = &to[i];
		m->amounts = &amounts[i];
	}
	*element = 0;
	return moves;
}

/*
 * Look up the accounts of the transfers: both exist, in one currency, and
 * the caller may debit the payer.  Returns what it found.
 */
static AccountInfo *
check_transfer_accounts(LedgerCall *call, int64 *from, int64 *to, int n,
						int *element)
{
	int64	   *involved = palloc(sizeof(int64) * 2 * n);
	AccountInfo *info;
	int			i;

	memcpy(involved, from, sizeof(int64) * n);
	memcpy(involved + n, to, sizeof(int64) * n);
	info = ledger_lookup_accounts(involved, 2 * n);
	for (i = 0; i < n; i++)
	{
		*element = i + 1;
		(void) ledger_account_bucket(info, from[i]);
		(void) ledger_account_bucket(info, to[i]);
		ledger_check_same_currency(info, from[i], to[i]);
		(void) ledger_payer_bucket(info, from[i]);
		ledger_check_debit(call, from[i], ledger_account_owner(info, from[i]));
	}
	*element = 0;
	return info;
}

/*
 * ledger_transfer_many(from_accounts[], to_accounts[], amounts[],
 * idempotency_keys[], metadata[]) - enqueue many transfers in one call, each
 * under the rules of ledger_transfer(); return their event ids in order.
 * One bad element fails the whole call, naming the element.  Elements that
 * share an idempotency key must be the same transfer: they get one event.
 */
PG_FUNCTION_INFO_V1(ledger_transfer_many);
Datum
ledger_transfer_many(PG_FUNCTION_ARGS)
{
	ErrorContextCallback errcallback;
	LedgerCall	call;
	int64	   *from;
	int64	   *to;
	int64	   *amounts;
	Datum	   *keys;
	bool	   *key_nulls = NULL;
	Datum	   *metadata;
	bool	   *metadata_nulls = NULL;
	Movement   *moves;
	KeyedRequest *reqs;
	int64	   *ids;
	int64	   *payers;
	int		   *adding;
	int			npayers;
	AccountInfo *info;
	bool	   *is_new;
	Datum	   *columns[6];
	int			n;
	int			nqueued = 0;
	int			nbulk = 0;
	bool	   *bulk_nulls;
	int			element = 0;
	Oid			seq;
	int			i;

	n = get_transfer_arrays(fcinfo, &from, &to, &amounts);
	keys = get_elements(fcinfo, 3, TEXTOID, "idempotency_keys", "keys", n,
						&key_nulls);
	metadata = get_elements(fcinfo, 4, JSONBOID, "metadata", "metadata elements", n,
							&metadata_nulls);
	if (n == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(INT8OID));

	/* errors about one element name it */
	errcallback.callback = batch_element_context;
	errcallback.arg = &element;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	moves = transfer_movements(LEDGER_TRANSFER, from, to, amounts, n, &element);
	for (i = 0; i < n; i++)
	{
		Movement   *m = &moves[i];

		element = i + 1;
		if (keys && !key_nulls[i])
		{
			m->idempotency_key = DatumGetTextPP(keys[i]);
			ledger_check_key_length(m->idempotency_key);
		}
		if (metadata && !metadata_nulls[i])
		{
			m->metadata = DatumGetJsonbP(metadata[i]);
			ledger_check_metadata(m->metadata);
		}
	}
	element = 0;

	ledger_require_schema();
	ledger_call_begin(fcinfo, &call);
	SPI_connect();
	ledger_require_installation();

	/* every account involved, its bucket, currency and owner */
	info = check_transfer_accounts(&call, from, to, n, &element);

	/* ids in call order, so that the transfers apply in that order */
	seq = ledger_event_id_seq();
	/* returned after SPI_finish(), which frees what was allocated since */
	ids = SPI_palloc(sizeof(int64) * n);
	reqs = palloc0(sizeof(KeyedRequest) * n);
	for (i = 0; i < n; i++)
	{
		ids[i] = nextval_internal(seq, false);
		if (moves[i].idempotency_key != NULL)
			ledger_movement_request(&moves[i], &reqs[i]);
	}
	is_new = ledger_claim_keys(call.caller, reqs, ids, n, &element);

	/*
	 * The new transfers: those whose payer an earlier event of the
	 * transaction credits from another bucket wait for it (order.c), and are
	 * queued one by one; the others together.
	 */
	for (i = 0; i < 6; i++)
		columns[i] = palloc(sizeof(Datum) * n);
	bulk_nulls = palloc(sizeof(bool) * n);
	payers = palloc(sizeof(int64) * n);
	adding = palloc0(sizeof(int) * n);
	for (i = 0; i < n; i++)
	{
		Movement   *m = &moves[i];
		int			bucket = ledger_payer_bucket(info, from[i]);
		int			to_bucket = ledger_account_bucket(info, to[i]);

		if (!is_new[i])
			continue;
		payers[nqueued] = from[i];
		m->waits_from = ledger_credited_from(from[i]);
		if (to_bucket >= 0 && to_bucket != bucket)
			ledger_note_credit(to[i], ids[i]);
		if (m->waits_from != 0)
			ledger_insert_queue_row(m, bucket, ids[i]);
		else
		{
			columns[0][nbulk] = Int32GetDatum(bucket);
			columns[1][nbulk] = Int64GetDatum(ids[i]);
			columns[2][nbulk] = Int64GetDatum(from[i]);
			columns[3][nbulk] = Int64GetDatum(to[i]);
			columns[4][nbulk] = Int64GetDatum(amounts[i]);
			columns[5][nbulk] = PointerGetDatum(m->metadata);
			bulk_nulls[nbulk] = m->metadata == NULL;
			nbulk++;
		}
		nqueued++;
		ledger_wake_at_commit(bucket);
	}

	/* how many each payer adds, for the spam guard */
	qsort(payers, nqueued, sizeof(int64), ledger_cmp_int64);
	npayers = 0;
	for (i = 0; i < nqueued; i++)
	{
		if (npayers == 0 || payers[npayers - 1] != payers[i])
			payers[npayers++] = payers[i];
		adding[npayers - 1]++;
	}
	for (i = 0; i < npayers; i++)
		ledger_guard_check(payers[i], adding[i]);
	if (nbulk > 0)
		insert_transfers(columns, bulk_nulls, metadata != NULL, nbulk);
	for (i = 0; i < npayers; i++)
		ledger_guard_add(payers[i], adding[i]);

	SPI_finish();
	ledger_call_end(&call);
	error_context_stack = errcallback.previous;

	PG_RETURN_DATUM(ledger_int64_array(ids, n));
}

/* The most transfers of one linked group. */
#define LEDGER_MAX_LINKED	100

/*
 * ledger_transfer_linked(from_accounts[], to_accounts[], amounts[],
 * idempotency_key, metadata) - enqueue a group of transfers of which all
 * are applied or none is (linked.c); return the group's id, its first
 * transfer's.  Each transfer is checked as ledger_transfer() checks it, in
 * its own currency, and an error about one names it.  The key names the
 * whole group.
 */
PG_FUNCTION_INFO_V1(ledger_transfer_linked);
Datum
ledger_transfer_linked(PG_FUNCTION_ARGS)
{
	ErrorContextCallback errcallback;
	LedgerCall	call;
	Movement	group = {0};
	Movement   *moves;
	KeyedRequest req;
	AccountInfo *info;
	int64	   *from;
	int64	   *to;
	int64	   *amounts;
	int64	   *ids;
	int64		group_id;
	int			n;
	int			element = 0;
	int			i;
	int			j;

	n = get_transfer_arrays(fcinfo, &from, &to, &amounts);
	if (n < 1 || n > LEDGER_MAX_LINKED)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a linked group has from 1 to %d transfers", LEDGER_MAX_LINKED),
				 errdetail("This one has %d.", n)));
	ledger_get_key_and_metadata(fcinfo, 3, &group);

	errcallback.callback = batch_element_context;
	errcallback.arg = &element;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	moves = transfer_movements(LEDGER_LINKED, from, to, amounts, n, &element);
	for (i = 0; i < n; i++)
		moves[i].metadata = group.metadata;

	ledger_require_schema();
	ledger_call_begin(fcinfo, &call);
	SPI_connect();
	ledger_require_installation();

	info = check_transfer_accounts(&call, from, to, n, &element);

	/* ids in call order: the group is its first transfer's */
	ids = palloc(sizeof(int64) * n);
	for (i = 0; i < n; i++)
		ids[i] = nextval_internal(ledger_event_id_seq(), false);
	group_id = ids[0];

	/* the key names the whole group: every account and amount of it */
	if (group.idempotency_key != NULL)
	{
		int64	   *accounts = palloc(sizeof(int64) * 2 * n);
		int			keyed = 0;	/* the key is the group's, not an element's */

		memcpy(accounts, from, sizeof(int64) * n);
		memcpy(accounts + n, to, sizeof(int64) * n);
		req.key = group.idempotency_key;
		req.kind = LEDGER_LINKED;
		ledger_request_part(&req, LEDGER_REQUEST_ACCOUNTS, accounts,
							sizeof(int64) * 2 * n);
		ledger_request_part(&req, LEDGER_REQUEST_AMOUNTS, amounts,
							sizeof(int64) * n);
		ledger_request_part(&req, LEDGER_REQUEST_HOLD, NULL, 0);
		if (group.metadata != NULL)
			ledger_request_part(&req, LEDGER_REQUEST_METADATA, VARDATA(group.metadata),
								VARSIZE(group.metadata) - VARHDRSZ);
		else
			ledger_request_part(&req, LEDGER_REQUEST_METADATA, NULL, 0);
		if (!ledger_claim_keys(call.caller, &req, &group_id, 1, &keyed)[0])
		{
			SPI_finish();
			ledger_call_end(&call);
			error_context_stack = errcallback.previous;
			PG_RETURN_INT64(group_id);
		}
	}

	/* the spam guard counts each payer's transfers of the group */
	for (i = 0; i < n; i++)
	{
		int			adding = 0;

		for (j = 0; j < n; j++)
			adding += from[j] == from[i];
		ledger_guard_check(from[i], adding);
	}
	/*
	 * Each transfer waits for the credits earlier events of the transaction
	 * send its payer (order.c), but not for those of its own group, which
	 * are paid only once every transfer of it has voted: a group's credits
	 * do not fund its debits.
	 */
	for (i = 0; i < n; i++)
		moves[i].waits_from = ledger_credited_from(from[i]);
	for (i = 0; i < n; i++)
	{
		Movement   *m = &moves[i];
		int			bucket = ledger_payer_bucket(info, from[i]);
		int			to_bucket = ledger_account_bucket(info, to[i]);

		m->link_of = group_id;
		ledger_insert_queue_row(m, bucket, ids[i]);
		ledger_guard_add(from[i], 1);
		if (to_bucket >= 0 && to_bucket != bucket)
			ledger_note_credit(to[i], ids[i]);
		ledger_wake_at_commit(bucket);
	}

	SPI_finish();
	ledger_call_end(&call);
	error_context_stack = errcallback.previous;
	PG_RETURN_INT64(group_id);
}
