/*-------------------------------------------------------------------------
 *
 * statements.h
 *	  The statements ledger-http runs: one per kind of database call,
 *	  prepared on every connection of the pool.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_HTTP_STATEMENTS_H
#define LEDGER_HTTP_STATEMENTS_H

#include "db_pool.h"

/* A statement's number: its place in ledger_statements, DbWork.stmt. */
typedef enum Statement
{
	STMT_TRANSFER_MANY,
	STMT_DEPOSIT,
	STMT_WITHDRAW,
	STMT_DISBURSE,
	STMT_EVENT,
	STMT_BALANCE,
	NUM_STATEMENTS
} Statement;

extern const DbStatement ledger_statements[NUM_STATEMENTS];

#endif							/* LEDGER_HTTP_STATEMENTS_H */
