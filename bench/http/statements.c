/*-------------------------------------------------------------------------
 *
 * statements.c
 *	  The SQL of the statements ledger-http runs, handed to the pool at
 *	  start-up (ledger_http.c) and named by number by routes.c and
 *	  transfers.c.
 *
 * They are prepared without parameter types and their parameters are all
 * sent as text: the casts give the types.
 *
 *-------------------------------------------------------------------------
 */
#include "statements.h"

const DbStatement ledger_statements[NUM_STATEMENTS] = {
	[STMT_TRANSFER_MANY] = {
		"transfer_many",
		"SELECT ledger_transfer_many($1::bigint[], $2::bigint[],"
		" $3::bigint[], $4::text[])"
	},
	[STMT_DEPOSIT] = {
		"deposit",
		"SELECT ledger_deposit($1::bigint, $2::bigint, $3::text)"
	},
	[STMT_WITHDRAW] = {
		"withdraw",
		"SELECT ledger_withdraw($1::bigint, $2::bigint, $3::text)"
	},
	[STMT_DISBURSE] = {
		"disburse",
		"SELECT ledger_disburse($1::bigint, $2::bigint[],"
		" $3::bigint[], $4::text)"
	},
	[STMT_EVENT] = {
		"event",
		"SELECT kind, account_id, to_accounts, amounts, amount, status,"
		" reason, enqueued_at, applied_at FROM ledger_event($1::bigint)"
	},
	[STMT_BALANCE] = {
		"balance",
		"SELECT ledger_balance($1::bigint)"
	},
};
