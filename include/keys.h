/*-------------------------------------------------------------------------
 *
 * keys.h
 *	  Idempotency keys (keys.c): the request a key names, and claiming keys.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_KEYS_H
#define LEDGER_KEYS_H

#include "ledger.h"

/*
 * A request an idempotency key may name: its kind, and digests of its
 * parts (keys.c).
 */
typedef enum LedgerRequestPart
{
	LEDGER_REQUEST_ACCOUNTS,
	LEDGER_REQUEST_AMOUNTS,
	LEDGER_REQUEST_HOLD,		/* a post's or void's hold; a hold's timeout */
	LEDGER_REQUEST_METADATA,
	LEDGER_REQUEST_PARTS
} LedgerRequestPart;

#define LEDGER_REQUEST_PART_SIZE	8
#define LEDGER_REQUEST_SIZE		(LEDGER_REQUEST_PARTS * LEDGER_REQUEST_PART_SIZE)

typedef struct KeyedRequest
{
	text	   *key;			/* or NULL */
	char		kind;
	uint8		request[LEDGER_REQUEST_SIZE];
} KeyedRequest;

extern void ledger_request_part(KeyedRequest *req, LedgerRequestPart part,
								const void *data, size_t len);
extern bool *ledger_claim_keys(Oid role, KeyedRequest *reqs, int64 *ids, int n,
							   int *element);

#endif							/* LEDGER_KEYS_H */
