/*-------------------------------------------------------------------------
 *
 * pgtext.h
 *	  Values in PostgreSQL's text format: statement parameters written,
 *	  bigint[] results read.
 *
 * The writers return a malloc'd string, or NULL when memory ran out.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_HTTP_PGTEXT_H
#define LEDGER_HTTP_PGTEXT_H

#include <stdbool.h>

extern char *int_to_text(long long value);
extern char *bigint_array_literal(const long long *values, int n);
extern char *text_array_literal(char *const *values, int n);
extern bool bigint_array_next(const char **pos, long long *value);

#endif							/* LEDGER_HTTP_PGTEXT_H */
