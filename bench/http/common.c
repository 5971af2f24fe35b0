/*-------------------------------------------------------------------------
 *
 * common.c
 *	  The state every part of ledger-http reads: settings with their
 *	  defaults, the loop, the shutdown flag; and the log.
 *
 * ledger_http.c fills these in at start-up; the other parts only read them.
 *
 *-------------------------------------------------------------------------
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

Settings	settings = {
	.listen = "127.0.0.1",
	.conninfo = "",
	.port = 8080,
	.pool_size = 4,
	.group_max = 256,
	.group_wait_us = 0,
	.test_accounts = 1000,
	.max_body = 64 * 1024,
	.max_header = 8 * 1024,
	.timeout_ms = 10000,
	.idle_timeout_ms = 60000,
};

uv_loop_t  *loop;
bool		shutting_down = false;

void
log_message(const char *fmt,...)
{
	va_list		args;

	fputs("ledger-http: ", stderr);
	va_start(args, fmt);
	vfprintf(stderr, fmt, args);
	va_end(args);
	/* libpq's messages end with a newline already */
	if (fmt[0] == '\0' || fmt[strlen(fmt) - 1] != '\n')
		fputc('\n', stderr);
}
