/*-------------------------------------------------------------------------
 *
 * db_pool.h
 *	  A few non-blocking libpq connections running prepared statements.
 *
 * The pool knows the statements only by their number in the table given to
 * db_start(), and nothing of what they do.  Work reaches it two ways: from
 * its queue (db_submit, db_submit_first), and from a source registered with
 * db_set_source(), which it asks for a statement whenever a connection is
 * free: a source can so form its statement at the last moment, from all
 * that has come until then.  Each statement's result goes to the function
 * its work names.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_HTTP_DB_POOL_H
#define LEDGER_HTTP_DB_POOL_H

#include <stdbool.h>

#include <libpq-fe.h>

#include "fifo.h"

/* A statement each connection prepares when it opens. */
typedef struct DbStatement
{
	const char *name;
	const char *sql;
} DbStatement;

#define MAX_PARAMS 4

/*
 * A statement waiting for, or running on, a database connection.  done()
 * gets the statement's result, or NULL when the connection failed first; the
 * pool clears the result after done() returns.
 */
typedef struct DbWork DbWork;
typedef void (*DbDone) (DbWork *work, PGresult *result);

struct DbWork
{
	FifoLink	queued;			/* in the pool's queue */
	int			stmt;			/* its number in db_start()'s table */
	int			nparams;
	char	   *params[MAX_PARAMS];	/* malloc'd text values, NULL for SQL
									 * NULL */
	DbDone		done;
};

/*
 * A supplier of statements besides the queue.  take() returns one ready to
 * run, or NULL; the pool takes from the source and from its queue in turn.
 * fail_all() is called when no connection is left, to fail what the source
 * holds as the queue's statements are failed: no request waits on a
 * database that is not there.
 */
typedef struct DbSource
{
	DbWork	   *(*take) (void);
	void		(*fail_all) (void);
} DbSource;

extern void db_start(const DbStatement *statements, int nstatements);
extern void db_set_source(const DbSource *source);
extern bool db_available(void);
extern void db_submit(DbWork *work);
extern void db_submit_first(DbWork *work);
extern void db_kick(void);
extern bool db_idle(void);
extern void db_stop(void);
extern void db_free(void);
extern void db_work_free_params(DbWork *work);

#endif							/* LEDGER_HTTP_DB_POOL_H */
