/*-------------------------------------------------------------------------
 *
 * chain.c
 *	  The hash chain over a bucket's applied history: what makes a rewrite
 *	  of it evident.
 *
 * Every batch that writes a leg or an outcome records, in its own row,
 *
 *	 hash = sha256(previous batch's hash || sha256(content))
 *
 * where content is its legs in id order, its outcomes in event order, and
 * its own row's figures, in the binary form ledger--1.8--1.9.sql spells out
 * (ledger_verify_chain() recomputes it there, in SQL).  The content is
 * hashed as the legs are written, so the chain costs a few hundred bytes
 * of SHA-256 per leg and one index probe per batch, for the previous hash;
 * the outcomes, few, are sorted at the end.  Immutability triggers stop the
 * API's users; the chain is for those they do not stop: once a chain head
 * is published elsewhere, no rewrite of what it covers goes unnoticed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "port/pg_bswap.h"
#include "utils/builtins.h"

#include "ledger.h"
#include "batch.h"

typedef struct ChainOutcome
{
	int64		event_id;
	char		status;
	const char *reason;
} ChainOutcome;

typedef struct BatchChain
{
	pg_cryptohash_ctx *content;
	int64		first_leg;		/* 0: no leg yet */
	int64		last_leg;
	ChainOutcome *outcomes;
	int			noutcomes;
	int			maxoutcomes;
} BatchChain;

static SPIPlanPtr head_plan = NULL;

static void
update(BatchChain *chain, const void *data, size_t len)
{
	/*
	 * Begun at the first thing hashed: a context is a resource of the
	 * transaction, and a batch that writes no row never reaches
	 * ledger_chain_end() to free it.
	 */
	if (chain->content == NULL)
	{
		chain->content = pg_cryptohash_create(PG_SHA256);
		if (chain->content == NULL || pg_cryptohash_init(chain->content) < 0)
			elog(ERROR, "could not start hashing a batch");
	}
	if (pg_cryptohash_update(chain->content, data, len) < 0)
		elog(ERROR, "could not hash a batch: %s",
			 pg_cryptohash_error(chain->content));
}

static void
update_int64(BatchChain *chain, int64 value)
{
	uint64		big = pg_hton64((uint64) value);

	update(chain, &big, sizeof(big));
}

static void
update_int32(BatchChain *chain, int32 value)
{
	uint32		big = pg_hton32((uint32) value);

	update(chain, &big, sizeof(big));
}

/* Start a batch's chain: nothing hashed yet. */
void
ledger_chain_begin(BatchOutput *out)
{
	out->chain = palloc0(sizeof(BatchChain));
}

/* A leg the batch writes, in id order. */
void
ledger_chain_leg(BatchOutput *out, int64 id, int64 account_id, int64 event_id,
				 int64 amount, int64 balance_after, TimestampTz created_at)
{
	BatchChain *chain = out->chain;
	uint64		leg[6];

	if (chain->first_leg == 0)
		chain->first_leg = id;
	chain->last_leg = id;
	/* one update a leg: the hash costs little more than its bytes */
	leg[0] = pg_hton64((uint64) id);
	leg[1] = pg_hton64((uint64) account_id);
	leg[2] = pg_hton64((uint64) event_id);
	leg[3] = pg_hton64((uint64) amount);
	leg[4] = pg_hton64((uint64) balance_after);
	leg[5] = pg_hton64((uint64) created_at);
	update(chain, leg, sizeof(leg));
}

/* An outcome the batch writes: hashed at the end, in event order. */
void
ledger_chain_outcome(BatchOutput *out, int64 event_id, char status,
					 const char *reason)
{
	BatchChain *chain = out->chain;

	if (chain->noutcomes == chain->maxoutcomes)
	{
		chain->maxoutcomes = Max(16, chain->maxoutcomes * 2);
		chain->outcomes = chain->outcomes == NULL ?
			palloc(sizeof(ChainOutcome) * chain->maxoutcomes) :
			repalloc(chain->outcomes, sizeof(ChainOutcome) * chain->maxoutcomes);
	}
	chain->outcomes[chain->noutcomes].event_id = event_id;
	chain->outcomes[chain->noutcomes].status = status;
	chain->outcomes[chain->noutcomes].reason = reason;
	chain->noutcomes++;
}

/* Did the batch write anything the chain covers? */
bool
ledger_chain_any(BatchOutput *out)
{
	return out->chain->first_leg != 0 || out->chain->noutcomes > 0;
}

static int
compare_outcomes(const void *a, const void *b)
{
	int64		x = ((const ChainOutcome *) a)->event_id;
	int64		y = ((const ChainOutcome *) b)->event_id;

	return (x > y) - (x < y);
}

/*
 * The newest hash of the bucket's chain, or false when it has none yet.
 * Batches without one are skipped: those of before 1.9, and the empty rows
 * a take-over of a restored ledger writes (installed.c).
 */
static bool
chain_head(int bucket, uint8 *head)
{
	Oid			argtype = INT4OID;
	Datum		arg = Int32GetDatum(bucket);
	bool		isnull;
	Datum		hash;

	ledger_prepare_plan(&head_plan,
						"SELECT b.hash FROM ledger.batches b"
						" WHERE b.bucket = $1 AND b.hash IS NOT NULL"
						" ORDER BY b.id DESC LIMIT 1",
						1, &argtype);
	if (SPI_execute_plan(head_plan, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the chain head of bucket %d", bucket);
	if (SPI_processed == 0)
		return false;
	hash = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return false;
	if (VARSIZE_ANY_EXHDR(DatumGetPointer(hash)) != PG_SHA256_DIGEST_LENGTH)
		elog(ERROR, "the chain head of bucket %d is not a SHA-256 hash", bucket);
	memcpy(head, VARDATA_ANY(DatumGetPointer(hash)), PG_SHA256_DIGEST_LENGTH);
	return true;
}

/*
 * Finish the batch's hash, with the figures of its row, and set its
 * first_leg, last_leg and hash columns.  decided_at is out->now.
 */
void
ledger_chain_end(BatchOutput *out, int bucket, int applied, int rejected,
				 Datum *values, bool *isnull)
{
	BatchChain *chain = out->chain;
	uint8		content[PG_SHA256_DIGEST_LENGTH];
	uint8		head[PG_SHA256_DIGEST_LENGTH];
	bool		has_head;
	pg_cryptohash_ctx *link;
	bytea	   *hash;
	int			i;

	qsort(chain->outcomes, chain->noutcomes, sizeof(ChainOutcome), compare_outcomes);
	for (i = 0; i < chain->noutcomes; i++)
	{
		ChainOutcome *o = &chain->outcomes[i];

		update_int64(chain, o->event_id);
		update(chain, &o->status, 1);
		if (o->reason)
			update(chain, o->reason, strlen(o->reason));
		update(chain, "", 1);
	}
	update_int32(chain, bucket);
	update_int64(chain, out->batch_id);
	update_int32(chain, applied);
	update_int32(chain, rejected);
	update_int64(chain, out->now);
	if (pg_cryptohash_final(chain->content, content, sizeof(content)) < 0)
		elog(ERROR, "could not hash a batch");
	pg_cryptohash_free(chain->content);
	chain->content = NULL;

	has_head = chain_head(bucket, head);
	hash = palloc(VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	SET_VARSIZE(hash, VARHDRSZ + PG_SHA256_DIGEST_LENGTH);
	link = pg_cryptohash_create(PG_SHA256);
	if (link == NULL || pg_cryptohash_init(link) < 0 ||
		(has_head && pg_cryptohash_update(link, head, sizeof(head)) < 0) ||
		pg_cryptohash_update(link, content, sizeof(content)) < 0 ||
		pg_cryptohash_final(link, (uint8 *) VARDATA(hash), PG_SHA256_DIGEST_LENGTH) < 0)
		elog(ERROR, "could not chain a batch");
	pg_cryptohash_free(link);

	values[BATCHES_FIRST_LEG] = Int64GetDatum(chain->first_leg);
	values[BATCHES_LAST_LEG] = Int64GetDatum(chain->last_leg);
	isnull[BATCHES_FIRST_LEG] = isnull[BATCHES_LAST_LEG] = chain->first_leg == 0;
	values[BATCHES_HASH] = PointerGetDatum(hash);
	isnull[BATCHES_HASH] = false;
}

/* Forget the plan: the extension was dropped or created again. */
void
ledger_chain_reset(void)
{
	ledger_free_plan(&head_plan);
}
