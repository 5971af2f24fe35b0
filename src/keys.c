/*-------------------------------------------------------------------------
 *
 * keys.c
 *	  Idempotency keys: one request of one role each.
 *
 * A key is claimed by inserting it into ledger.idempotency with the id of
 * the event it names.  A concurrent transaction inserting the same key makes
 * the second wait for the first's outcome, so two racing callers get one
 * event between them.  A key found claimed answers with its event only if
 * the call repeats the request the key first named: the same function, and
 * the same accounts, amounts, hold or timeout, and metadata.  Anything else
 * is an error naming what differs, since answering would tell the caller
 * that a request happened which did not.
 *
 * The request is kept as four digests (SHA-256, truncated to 8 bytes) of
 * those parts, so that a retry is recognised without reading its event, and
 * the first part that differs can be named.  Keys are per role: the same
 * key used by two roles names two requests.
 *
 * Keys recorded before 1.5 belong to no role and carry no request; they
 * answer with their event, to any caller, as they did.  A backend looks for
 * them once per installation, and only a ledger that has them pays for the
 * look-up.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"

#include "ledger.h"
#include "keys.h"

static const char *const part_names[LEDGER_REQUEST_PARTS] = {
	"accounts", "amounts", "hold", "metadata"
};

/* Does this installation have keys from before 1.5?  -1: not known yet. */
static int	legacy_keys = -1;
static Oid	legacy_keys_extension = InvalidOid;

/* Set one part of a request's digest to a digest of data. */
void
ledger_request_part(KeyedRequest *req, LedgerRequestPart part,
					const void *data, size_t len)
{
	uint8		hash[PG_SHA256_DIGEST_LENGTH];
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) data, len) < 0 ||
		pg_cryptohash_final(ctx, hash, sizeof(hash)) < 0)
		elog(ERROR, "could not compute a SHA-256 digest: %s",
			 pg_cryptohash_error(ctx));
	pg_cryptohash_free(ctx);
	memcpy(req->request + part * LEDGER_REQUEST_PART_SIZE, hash,
		   LEDGER_REQUEST_PART_SIZE);
}

/*
 * The error for a key claimed by another request, event_id's (0: by an
 * earlier request of the same call): the function if that differs, else
 * the first part that does.
 */
static void
report_reuse(KeyedRequest *req, int64 event_id, char kind, const uint8 *request)
{
	char	   *key = text_to_cstring(req->key);
	int			part;

	if (event_id == 0)
		ereport(ERROR,
				(errcode(ERRCODE_LEDGER_KEY_REUSED),
				 errmsg("idempotency key \"%s\" names two different requests of this call", key),
				 errdetail("Requests of one call that share a key must be the same request."),
				 errhint("A new request needs a new key.")));
	if (kind != req->kind)
		ereport(ERROR,
				(errcode(ERRCODE_LEDGER_KEY_REUSED),
				 errmsg("idempotency key \"%s\" is already used by a %s",
						key, ledger_kind_name(kind)),
				 errdetail("Event " INT64_FORMAT " holds the key; this call is a %s.",
						   event_id, ledger_kind_name(req->kind)),
				 errhint("A retry repeats the call it retries; a new request needs a new key.")));
	for (part = 0; part < LEDGER_REQUEST_PARTS; part++)
	{
		int			offset = part * LEDGER_REQUEST_PART_SIZE;

		if (memcmp(request + offset, req->request + offset,
				   LEDGER_REQUEST_PART_SIZE) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_LEDGER_KEY_REUSED),
					 errmsg("idempotency key \"%s\" is already used with other %s",
							key,
							part == LEDGER_REQUEST_HOLD && kind == LEDGER_HOLD ?
							"timeout" : part_names[part]),
					 errdetail("Event " INT64_FORMAT ", a %s, holds the key.",
							   event_id, ledger_kind_name(kind)),
					 errhint("A retry repeats the call it retries; a new request needs a new key.")));
	}
}

static int
compare_keys(const void *a, const void *b)
{
	const KeyedRequest *x = *(KeyedRequest *const *) a;
	const KeyedRequest *y = *(KeyedRequest *const *) b;
	int			lx = VARSIZE_ANY_EXHDR(x->key);
	int			ly = VARSIZE_ANY_EXHDR(y->key);
	int			c = memcmp(VARDATA_ANY(x->key), VARDATA_ANY(y->key), Min(lx, ly));

	if (c != 0)
		return c;
	if (lx != ly)
		return lx < ly ? -1 : 1;
	/* stable: the first of equal keys first */
	return x < y ? -1 : (x > y);
}

static bool
same_key(KeyedRequest *x, KeyedRequest *y)
{
	return VARSIZE_ANY_EXHDR(x->key) == VARSIZE_ANY_EXHDR(y->key) &&
		memcmp(VARDATA_ANY(x->key), VARDATA_ANY(y->key),
			   VARSIZE_ANY_EXHDR(x->key)) == 0;
}

/* Does this installation still hold keys from before 1.5? */
static bool
have_legacy_keys(void)
{
	Oid			extension = ledger_extension_oid();

	if (legacy_keys < 0 || extension != legacy_keys_extension)
	{
		if (SPI_execute("SELECT 1 FROM ledger.idempotency i WHERE i.role = 0 LIMIT 1",
						true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not look for idempotency keys of earlier versions");
		legacy_keys = SPI_processed > 0;
		legacy_keys_extension = extension;
	}
	return legacy_keys;
}

/* A claimed key, as read back from ledger.idempotency. */
typedef struct ClaimedKey
{
	char		key[LEDGER_MAX_KEY_LENGTH + 1];
	int64		event_id;
	char		kind;
	bool		has_request;
	uint8		request[LEDGER_REQUEST_SIZE];
} ClaimedKey;

/*
 * The keys claimed already among those of a call, as the statement sql
 * reads them from ledger.idempotency: rows of (key, event_id[, kind,
 * request]), by key.  Its parameters are the role ($1) and the keys ($2) of
 * args; its plan is made the first time and kept in *plan.
 */
static HTAB *
claimed_keys(SPIPlanPtr *plan, const char *sql, Oid *argtypes, Datum *args)
{
	HASHCTL		ctl;
	HTAB	   *claimed;
	uint64		row;

	ledger_prepare_plan(plan, sql, 2, argtypes);
	if (SPI_execute_plan(*plan, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read idempotency keys");

	ctl.keysize = sizeof(((ClaimedKey *) NULL)->key);
	ctl.entrysize = sizeof(ClaimedKey);
	ctl.hcxt = CurrentMemoryContext;
	claimed = hash_create("ledger idempotency keys", Max(SPI_processed, 16),
						  &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		ClaimedKey *entry;
		bool		isnull;

		entry = hash_search(claimed, SPI_getvalue(tuple, desc, 1), HASH_ENTER, NULL);
		entry->event_id = DatumGetInt64(SPI_getbinval(tuple, desc, 2, &isnull));
		entry->has_request = false;
		if (desc->natts >= 4)
		{
			Datum		request = SPI_getbinval(tuple, desc, 4, &isnull);

			entry->kind = DatumGetChar(SPI_getbinval(tuple, desc, 3, &isnull));
			if (!isnull &&
				VARSIZE_ANY_EXHDR(DatumGetByteaPP(request)) == LEDGER_REQUEST_SIZE)
			{
				memcpy(entry->request, VARDATA_ANY(DatumGetByteaPP(request)),
					   LEDGER_REQUEST_SIZE);
				entry->has_request = true;
			}
		}
	}
	return claimed;
}

static Datum
request_datum(const uint8 *request)
{
	bytea	   *result = palloc(VARHDRSZ + LEDGER_REQUEST_SIZE);

	SET_VARSIZE(result, VARHDRSZ + LEDGER_REQUEST_SIZE);
	memcpy(VARDATA(result), request, LEDGER_REQUEST_SIZE);
	return PointerGetDatum(result);
}

/*
 * Claim the idempotency keys of n new requests of role.  reqs[i].key is NULL
 * for a request without one; ids[i] is the id drawn for its event, replaced
 * by the id of the event its key names when that is another.  Returns, for
 * each request, whether it is new and so must be queued.  Requests of one
 * call that share a key must be the same request: the later ones get the
 * first's event.  An error about one request sets *element to its number
 * (from 1), for the caller's error context.  Called inside SPI.
 */
bool *
ledger_claim_keys(Oid role, KeyedRequest *reqs, int64 *ids, int n, int *element)
{
	static SPIPlanPtr insert_plan = NULL;
	static SPIPlanPtr select_plan = NULL;
	static SPIPlanPtr legacy_plan = NULL;
	Oid			argtypes[5] = {OIDOID, TEXTARRAYOID, INT8ARRAYOID, CHARARRAYOID,
		BYTEAARRAYOID};
	KeyedRequest **sorted = palloc(sizeof(KeyedRequest *) * Max(n, 1));
	int		   *first = palloc(sizeof(int) * Max(n, 1));
	bool	   *is_new = palloc(sizeof(bool) * Max(n, 1));
	Datum	   *keys;
	Datum	   *key_ids;
	Datum	   *kinds;
	Datum	   *requests;
	Datum		args[5];
	HTAB	   *claimed;
	int			nsorted = 0;
	int			nunique = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		is_new[i] = true;
		first[i] = i;
		if (reqs[i].key != NULL)
			sorted[nsorted++] = &reqs[i];
	}
	if (nsorted == 0)
		return is_new;

	/*
	 * Keys are claimed in byte order, so that two calls waiting on each
	 * other's keys cannot deadlock.  Equal keys of one call must name one
	 * request, and the first of them claims it.
	 */
	qsort(sorted, nsorted, sizeof(KeyedRequest *), compare_keys);
	for (i = 1; i < nsorted; i++)
	{
		KeyedRequest *req = sorted[i];
		int			k = req - reqs;

		if (!same_key(sorted[i - 1], req))
			continue;
		first[k] = first[sorted[i - 1] - reqs];
		if (req->kind != reqs[first[k]].kind ||
			memcmp(req->request, reqs[first[k]].request, LEDGER_REQUEST_SIZE) != 0)
		{
			*element = k + 1;
			report_reuse(req, 0, reqs[first[k]].kind, reqs[first[k]].request);
		}
	}

	/* keys of earlier versions answer first, whoever asks */
	args[0] = ObjectIdGetDatum(role);
	if (have_legacy_keys())
	{
		keys = palloc(sizeof(Datum) * nsorted);
		for (i = 0; i < nsorted; i++)
			keys[i] = PointerGetDatum(sorted[i]->key);
		args[1] = PointerGetDatum(construct_array(keys, nsorted, TEXTOID, -1, false,
												  TYPALIGN_INT));
		claimed = claimed_keys(&legacy_plan,
							   "SELECT i.key, i.event_id FROM ledger.idempotency i"
							   " WHERE i.role = 0 AND i.key = ANY ($2)",
							   argtypes, args);
		for (i = 0; i < n; i++)
		{
			ClaimedKey *entry;

			if (reqs[i].key == NULL || first[i] != i)
				continue;
			entry = hash_search(claimed, text_to_cstring(reqs[i].key), HASH_FIND, NULL);
			if (entry != NULL)
			{
				ids[i] = entry->event_id;
				is_new[i] = false;
			}
		}
	}

	/* the others are claimed for the role */
	keys = palloc(sizeof(Datum) * nsorted);
	key_ids = palloc(sizeof(Datum) * nsorted);
	kinds = palloc(sizeof(Datum) * nsorted);
	requests = palloc(sizeof(Datum) * nsorted);
	for (i = 0; i < nsorted; i++)
	{
		int			k = sorted[i] - reqs;

		if (first[k] != k || !is_new[k])
			continue;
		keys[nunique] = PointerGetDatum(reqs[k].key);
		key_ids[nunique] = Int64GetDatum(ids[k]);
		kinds[nunique] = CharGetDatum(reqs[k].kind);
		requests[nunique] = request_datum(reqs[k].request);
		nunique++;
	}
	if (nunique == 0)
		goto answered;
	args[1] = PointerGetDatum(construct_array(keys, nunique, TEXTOID, -1, false,
											  TYPALIGN_INT));
	args[2] = ledger_bigint_array(key_ids, nunique);
	args[3] = PointerGetDatum(construct_array(kinds, nunique, CHAROID, 1, true,
											  TYPALIGN_CHAR));
	args[4] = PointerGetDatum(construct_array(requests, nunique, BYTEAOID, -1, false,
											  TYPALIGN_INT));

	ledger_prepare_plan(&insert_plan,
						"INSERT INTO ledger.idempotency (role, key, event_id, kind, request)"
						" SELECT $1, u.key, u.event_id, u.kind, u.request"
						"   FROM unnest($2, $3, $4, $5) WITH ORDINALITY"
						"        AS u(key, event_id, kind, request, n)"
						"  ORDER BY u.n"
						" ON CONFLICT (role, key) DO NOTHING",
						5, argtypes);
	if (SPI_execute_plan(insert_plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record idempotency keys");

	claimed = claimed_keys(&select_plan,
						   "SELECT i.key, i.event_id, i.kind, i.request FROM ledger.idempotency i"
						   " WHERE i.role = $1 AND i.key = ANY ($2)",
						   argtypes, args);

	for (i = 0; i < n; i++)
	{
		KeyedRequest *req = &reqs[i];
		ClaimedKey *entry;

		if (req->key == NULL || first[i] != i || !is_new[i])
			continue;
		entry = hash_search(claimed, text_to_cstring(req->key), HASH_FIND, NULL);
		if (entry == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not read the event of an idempotency key in use"),
					 errhint("Retry the call.")));
		if (entry->event_id == ids[i])
			continue;			/* claimed just now */
		if (!entry->has_request)
			elog(ERROR, "the idempotency key of event " INT64_FORMAT " records no request",
				 entry->event_id);
		if (entry->kind != req->kind ||
			memcmp(entry->request, req->request, LEDGER_REQUEST_SIZE) != 0)
		{
			*element = i + 1;
			report_reuse(req, entry->event_id, entry->kind, entry->request);
		}
		ids[i] = entry->event_id;
		is_new[i] = false;
	}

answered:
	/* the later requests of a key get the first's answer */
	for (i = 0; i < n; i++)
	{
		if (first[i] != i)
		{
			ids[i] = ids[first[i]];
			is_new[i] = false;
		}
	}
	return is_new;
}
