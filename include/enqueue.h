/*-------------------------------------------------------------------------
 *
 * enqueue.h
 *	  What the enqueue functions share: their arguments, the accounts they
 *	  name, and the queue row they write.  Private to args.c, lookup.c,
 *	  enqueue.c, transfer_many.c and account_setup.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_ENQUEUE_H
#define LEDGER_ENQUEUE_H

#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "ledger.h"
#include "keys.h"

/* Largest metadata of one event, in bytes of jsonb. */
#define LEDGER_MAX_METADATA_SIZE	65536

/* A movement to enqueue, before it has an id. */
typedef struct Movement
{
	char		kind;
	int64		account_id;		/* payer, or the account deposited to */
	int64		to_account;		/* transfer, hold, post */
	int64		amount;			/* for a disbursement, the total; for a post
								 * of the whole hold, 0 */
	int			npayees;		/* transfer, disbursement, hold, post */
	int64	   *payees;
	int64	   *amounts;
	int64		hold_id;		/* post and void */
	TimestampTz expires_at;		/* hold only; 0 for none */
	Interval   *timeout;		/* hold only, as given; or NULL */
	text	   *idempotency_key;	/* or NULL */
	Jsonb	   *metadata;		/* or NULL */
	int64		waits_from;		/* see order.c; 0: none */
	int64		link_of;		/* a linked transfer's group; 0: none */
} Movement;

/* What enqueueing needs to know of the accounts a call names. */
typedef struct AccountInfo
{
	int64	   *ids;			/* sorted and distinct */
	int		   *buckets;		/* bucket of ids[i]; -1: no such account,
								 * -2: an account of another node */
	int		   *currencies;		/* currency number of ids[i] */
	Oid		   *owners;			/* owner role of ids[i], or InvalidOid */
	int			n;
} AccountInfo;

/* args.c */
extern void ledger_require_arg(FunctionCallInfo fcinfo, int argno, const char *name);
extern void ledger_check_account_id(int64 account_id);
extern void ledger_check_amount(int64 amount);
extern void ledger_check_key_length(text *key);
extern void ledger_check_transfer(int64 from_account, int64 to_account, int64 amount);
extern void ledger_check_metadata(Jsonb *metadata);
extern void ledger_get_key_and_metadata(FunctionCallInfo fcinfo, int argno,
										Movement *m);
extern int64 *ledger_get_bigint_array(ArrayType *array, const char *name, int *n);
extern int	ledger_cmp_int64(const void *a, const void *b);
extern Datum ledger_int64_array(int64 *values, int n);

/* lookup.c */
extern AccountInfo *ledger_lookup_accounts(int64 *ids, int n);
extern int	ledger_account_bucket(AccountInfo *info, int64 account_id);
extern int	ledger_payer_bucket(AccountInfo *info, int64 account_id);
extern Oid	ledger_account_owner(AccountInfo *info, int64 account_id);
extern void ledger_check_same_currency(AccountInfo *info, int64 payer, int64 payee);

/* enqueue.c */
extern Oid	ledger_event_id_seq(void);
extern void ledger_movement_request(Movement *m, KeyedRequest *req);
extern void ledger_insert_queue_row(Movement *m, int bucket, int64 event_id);

#endif							/* LEDGER_ENQUEUE_H */
