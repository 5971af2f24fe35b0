/*-------------------------------------------------------------------------
 *
 * ledger_http.c
 *	  ledger-http: the HTTP/1.1 endpoint of the ledger extension.
 *
 * One thread, one libuv loop (epoll underneath) carrying the client
 * connections and a few non-blocking libpq connections.  This file reads
 * the flags, starts the parts, and drains on SIGTERM or SIGINT: it stops
 * accepting, lets the requests in flight get their answers, closes the
 * database connections and exits 0.
 *
 *-------------------------------------------------------------------------
 */
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger_http.h"

Settings	settings = {
	.listen = "127.0.0.1",
	.port = 8080,
	.conninfo = "",
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

static uv_signal_t sigterm_handle;
static uv_signal_t sigint_handle;
static uv_timer_t drain_timer;

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

static void
usage(FILE *out)
{
	fprintf(out,
			"Usage: ledger-http [OPTION]...\n"
			"HTTP/1.1 endpoint of the ledger PostgreSQL extension.\n\n"
			"  --listen=ADDR         address to listen on (default 127.0.0.1)\n"
			"  --port=PORT           port to listen on (default 8080)\n"
			"  --conninfo=STRING     libpq connection string (default: libpq's defaults)\n"
			"  --pool=N              database connections (default 4)\n"
			"  --group-max=N         most transfers per ledger_transfer_many call (default 256)\n"
			"  --group-wait-us=US    longest wait for a group to fill, microseconds (default 0:\n"
			"                        a group is what arrived in one turn of the event loop)\n"
			"  --test-accounts=N     POST /transfer/test uses accounts 1..N (default 1000)\n"
			"  --max-body=BYTES      largest request body (default 65536)\n"
			"  --max-header=BYTES    largest request line and headers (default 8192)\n"
			"  --timeout-ms=MS       to receive a request or send a response (default 10000)\n"
			"  --idle-timeout-ms=MS  keep-alive connections idle longer are closed (default 60000)\n"
			"  --help                show this and exit\n");
}

/* A whole number in [min, max], or exit with a message. */
static long long
number_flag(const char *name, const char *value, long long min, long long max)
{
	char	   *end;
	long long	n = strtoll(value, &end, 10);

	if (*value == '\0' || *end != '\0' || n < min || n > max)
	{
		fprintf(stderr, "ledger-http: --%s must be a whole number from %lld to %lld\n",
				name, min, max);
		exit(2);
	}
	return n;
}

static void
parse_flags(int argc, char **argv)
{
	static const struct option options[] = {
		{"listen", required_argument, NULL, 'l'},
		{"port", required_argument, NULL, 'p'},
		{"conninfo", required_argument, NULL, 'c'},
		{"pool", required_argument, NULL, 'n'},
		{"group-max", required_argument, NULL, 'g'},
		{"group-wait-us", required_argument, NULL, 'w'},
		{"test-accounts", required_argument, NULL, 'a'},
		{"max-body", required_argument, NULL, 'b'},
		{"max-header", required_argument, NULL, 'H'},
		{"timeout-ms", required_argument, NULL, 't'},
		{"idle-timeout-ms", required_argument, NULL, 'i'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	int			opt;

	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1)
	{
		switch (opt)
		{
			case 'l':
				settings.listen = optarg;
				break;
			case 'p':
				settings.port = number_flag("port", optarg, 1, 65535);
				break;
			case 'c':
				settings.conninfo = optarg;
				break;
			case 'n':
				settings.pool_size = number_flag("pool", optarg, 1, 1000);
				break;
			case 'g':
				settings.group_max = number_flag("group-max", optarg, 1, 100000);
				break;
			case 'w':
				settings.group_wait_us = number_flag("group-wait-us", optarg, 0, 10000000);
				break;
			case 'a':
				settings.test_accounts = number_flag("test-accounts", optarg, 0,
													 (long long) 1 << 62);
				break;
			case 'b':
				settings.max_body = number_flag("max-body", optarg, 0, 1 << 30);
				break;
			case 'H':
				settings.max_header = number_flag("max-header", optarg, 256, 1 << 20);
				break;
			case 't':
				settings.timeout_ms = number_flag("timeout-ms", optarg, 1, 3600000);
				break;
			case 'i':
				settings.idle_timeout_ms = number_flag("idle-timeout-ms", optarg, 1, 3600000);
				break;
			case 'h':
				usage(stdout);
				exit(0);
			default:
				usage(stderr);
				exit(2);
		}
	}
	if (optind < argc)
	{
		fprintf(stderr, "ledger-http: unexpected argument \"%s\"\n", argv[optind]);
		exit(2);
	}
}

static void
close_handle(uv_handle_t *handle, void *arg)
{
	if (!uv_is_closing(handle))
		uv_close(handle, NULL);
}

/* Polled while draining: once nothing is left in flight, close everything. */
static void
drain_check(uv_timer_t *timer)
{
	if (http_client_count() > 0 || !transfers_idle() || !db_idle())
		return;
	uv_timer_stop(timer);
	db_stop();
	transfers_close();
	/* the signal handles and whatever else is left; the loop then ends */
	uv_walk(loop, close_handle, NULL);
}

static void
on_signal(uv_signal_t *handle, int signum)
{
	if (shutting_down)
		return;
	shutting_down = true;
	log_message("%s received: draining", signum == SIGTERM ? "SIGTERM" : "SIGINT");
	http_stop_accepting();
	transfers_flush();
	uv_timer_start(&drain_timer, drain_check, 0, 10);
}

int
main(int argc, char **argv)
{
	parse_flags(argc, argv);

	/* a client gone mid-write must give an error, not kill us */
	signal(SIGPIPE, SIG_IGN);

	loop = uv_default_loop();
	if (transfers_init() != 0)
	{
		log_message("cannot set up the group timer");
		return 1;
	}
	if (http_listen() != 0)
		return 1;
	db_start();

	uv_signal_init(loop, &sigterm_handle);
	uv_signal_start(&sigterm_handle, on_signal, SIGTERM);
	uv_signal_init(loop, &sigint_handle);
	uv_signal_start(&sigint_handle, on_signal, SIGINT);
	uv_timer_init(loop, &drain_timer);

	log_message("listening on %s port %d, %d database connections",
				settings.listen, settings.port, settings.pool_size);
	uv_run(loop, UV_RUN_DEFAULT);

	if (uv_loop_close(loop) != 0)
		log_message("handles left open at exit");
	db_free();
	transfers_report();
	log_message("stopped");
	return 0;
}
