/*-------------------------------------------------------------------------
 *
 * common.h
 *	  What every part of ledger-http shares: its settings, its event loop,
 *	  whether it is shutting down, and its log.
 *
 * This is the bottom of the program: it calls nothing else of ledger-http.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_HTTP_COMMON_H
#define LEDGER_HTTP_COMMON_H

#include <stdbool.h>

#include <uv.h>

/*
 * Command-line settings; see usage() in ledger_http.c.  The numbers are all
 * long long so that one table can parse them.
 */
typedef struct Settings
{
	const char *listen;
	const char *conninfo;
	long long	port;
	long long	pool_size;
	long long	group_max;
	long long	group_wait_us;
	long long	test_accounts;
	long long	max_body;
	long long	max_header;
	long long	timeout_ms;		/* to receive a whole request, or send a
								 * response */
	long long	idle_timeout_ms;	/* between requests on a keep-alive
									 * connection */
} Settings;

extern Settings settings;
extern uv_loop_t *loop;
extern bool shutting_down;

extern void log_message(const char *fmt,...) __attribute__((format(printf, 1, 2)));

#endif							/* LEDGER_HTTP_COMMON_H */
