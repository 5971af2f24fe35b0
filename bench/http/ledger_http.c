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
 * The parts, each calling only those below it.  Calls that go up go
 * through function pointers given from above: a request's send function
 * (http_conn.c), the pool's source (transfers.c), and each statement's done
 * function (routes.c, transfers.c).
 *
 *	  ledger_http.c  this file: flags, start, drain
 *	  http_conn.c	 client sockets and HTTP framing; creates the requests
 *	  routes.c		 a request to a statement, a result to JSON
 *	  transfers.c	 transfers grouped into ledger_transfer_many() calls;
 *					 registers with the pool as its source of statements
 *	  request.c		 a request's life: created, answered once (through the
 *					 function http_conn.c gives it), freed
 *	  db_pool.c		 libpq connections running the statements they are
 *					 given, from its queue and from the registered source
 *	  statements.c	 the SQL of the statements
 *	  pgtext.c		 values in PostgreSQL's text format
 *	  fifo.h		 the list type of the pool's queue and the waiting
 *					 transfers
 *	  common.c		 settings, loop, log
 *
 *-------------------------------------------------------------------------
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"
#include "db_pool.h"
#include "http_conn.h"
#include "statements.h"
#include "transfers.h"

/* The flags that take a whole number: where it goes, and its bounds. */
typedef struct NumberFlag
{
	const char *name;
	long long  *value;
	long long	min;
	long long	max;
} NumberFlag;

static const NumberFlag number_flags[] = {
	{"port", &settings.port, 1, 65535},
	{"pool", &settings.pool_size, 1, 1000},
	{"group-max", &settings.group_max, 1, 100000},
	{"group-wait-us", &settings.group_wait_us, 0, 10000000},
	{"test-accounts", &settings.test_accounts, 0, (long long) 1 << 62},
	{"max-body", &settings.max_body, 0, 1 << 30},
	{"max-header", &settings.max_header, 256, 1 << 20},
	{"timeout-ms", &settings.timeout_ms, 1, 3600000},
	{"idle-timeout-ms", &settings.idle_timeout_ms, 1, 3600000},
};

#define NUM_NUMBER_FLAGS (int) (sizeof(number_flags) / sizeof(number_flags[0]))

/* getopt_long()'s value for number_flags[i]: beyond any option letter */
#define NUMBER_FLAG_VALUE 256

static uv_signal_t sigterm_handle;
static uv_signal_t sigint_handle;
static uv_timer_t drain_timer;

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

/* Set a number flag's setting, or exit with a message if out of bounds. */
static void
set_number_flag(const NumberFlag *flag, const char *value)
{
	char	   *end;
	long long	n = strtoll(value, &end, 10);

	if (*value == '\0' || *end != '\0' || n < flag->min || n > flag->max)
	{
		fprintf(stderr, "ledger-http: --%s must be a whole number from %lld to %lld\n",
				flag->name, flag->min, flag->max);
		exit(2);
	}
	*flag->value = n;
}

static void
parse_flags(int argc, char **argv)
{
	struct option options[NUM_NUMBER_FLAGS + 4] = {
		{"listen", required_argument, NULL, 'l'},
		{"conninfo", required_argument, NULL, 'c'},
		{"help", no_argument, NULL, 'h'},
	};
	int			opt;
	int			i;

	/* then the number flags, after the three above; the last entry stays 0 */
	for (i = 0; i < NUM_NUMBER_FLAGS; i++)
	{
		options[3 + i].name = number_flags[i].name;
		options[3 + i].has_arg = required_argument;
		options[3 + i].val = NUMBER_FLAG_VALUE + i;
	}

	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1)
	{
		switch (opt)
		{
			case 'l':
				settings.listen = optarg;
				break;
			case 'c':
				settings.conninfo = optarg;
				break;
			case 'h':
				usage(stdout);
				exit(0);
			default:
				if (opt < NUMBER_FLAG_VALUE ||
					opt >= NUMBER_FLAG_VALUE + NUM_NUMBER_FLAGS)
				{
					usage(stderr);
					exit(2);
				}
				set_number_flag(&number_flags[opt - NUMBER_FLAG_VALUE], optarg);
				break;
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
	db_start(ledger_statements, NUM_STATEMENTS);

	uv_signal_init(loop, &sigterm_handle);
	uv_signal_start(&sigterm_handle, on_signal, SIGTERM);
	uv_signal_init(loop, &sigint_handle);
	uv_signal_start(&sigint_handle, on_signal, SIGINT);
	uv_timer_init(loop, &drain_timer);

	log_message("listening on %s port %lld, %lld database connections",
				settings.listen, settings.port, settings.pool_size);
	uv_run(loop, UV_RUN_DEFAULT);

	if (uv_loop_close(loop) != 0)
		log_message("handles left open at exit");
	db_free();
	transfers_report();
	log_message("stopped");
	return 0;
}
