#!/usr/bin/env bash
# Importing a history, measured.  Starts a throwaway durable server (2
# buckets), opens ACCOUNTS accounts, writes a history of one deposit per
# account and EVENTS transfers between random accounts at increasing times in
# the past (two a minute, so that times tie), COPYs it into a staging table,
# then times ledger_import() of that table and the workers applying all of
# it (from the call until the queue is seen empty).  The baseline, in the
# same run: COPY of the very legs the import wrote into a table with
# ledger.transactions' columns and primary key, holding what the ledger
# held before the import (nothing: a fresh ledger).  Then the audit:
# ledger_verify() finds nothing, no event was rejected, every balance is the
# one the staging table gives, and so are balances as of five times and the
# legs of a time range (ledger_history), for a sample of accounts.  Any of
# these failing makes the exit status non-zero, after the report.
#
#   bench/import.sh                      1,000,000 transfers; writes
#                                        bench/reports/import-1.9.txt
#   bench/import.sh --events 100000      quick (the test suite); writes
#                                        bench/results/import.txt
#
# Options: --events N, --accounts N (default 10,000), --no-build (use the
# installed extension), --out FILE (the report).  Environment:
# LEDGER_IMPORT_DIR (default /tmp/ledger-import), LEDGER_IMPORT_PORT
# (55650), LEDGER_PGBIN (see scripts/common.sh).  Run as root on Debian 12.
source "$(dirname "$0")/../scripts/common.sh"
shopt -s inherit_errexit

ARGS=$*
EVENTS=1000000
ACCOUNTS=10000
BUILD=1
OUT=
usage() {
	echo "usage: $0 [--events N] [--accounts N] [--no-build] [--out FILE]" >&2
	exit 2
}
while [ $# -gt 0 ]; do
	case $1 in
		--events) [ $# -ge 2 ] || usage; EVENTS=$2; shift ;;
		--accounts) [ $# -ge 2 ] || usage; ACCOUNTS=$2; shift ;;
		--no-build) BUILD=0 ;;
		--out) [ $# -ge 2 ] || usage; OUT=$2; shift ;;
		*) usage ;;
	esac
	shift
done
[[ "$EVENTS" =~ ^[0-9]+$ && "$ACCOUNTS" =~ ^[0-9]+$ && "$ACCOUNTS" -ge 20 && "$EVENTS" -ge 10 ]] || usage
if [ -z "$OUT" ]; then
	if [ "$EVENTS" = 1000000 ]; then
		OUT=$TOP/bench/reports/import-1.9.txt
	else
		OUT=$TOP/bench/results/import.txt
	fi
fi

DIR=${LEDGER_IMPORT_DIR:-/tmp/ledger-import}
PORT=${LEDGER_IMPORT_PORT:-55650}
WORK=$DIR/work
DRAIN_TIMEOUT_MS=1800000
# the durable configuration of bench/run.sh
SETTINGS=(
	"fsync = on"
	"synchronous_commit = on"
	"full_page_writes = on"
	"shared_buffers = 1GB"
	"wal_buffers = 32MB"
	"max_wal_size = 4GB"
	"min_wal_size = 1GB"
	"checkpoint_timeout = 15min"
	"max_connections = 200"
	"ledger.buckets = 2"
)

progress() { printf '[import %s] %s\n' "$(date +%T)" "$*" >&2; }
psql_() {
	as_pg psql -h "$DIR" -p "$PORT" -U postgres -d postgres -X -q \
		-v ON_ERROR_STOP=1 "$@"
}
sql() { psql_ -At -F '|' -c "$1"; }
now() { date +%s.%N; }
# seconds B - A, and rates
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }'; }

STARTED=0
cleanup() {
	[ "$STARTED" = 1 ] && stop_server "$DIR"
	return 0
}
take_lock() {
	exec 9>"$DIR.lock"
	if ! flock -n 9; then
		progress "another bench/import.sh is using $DIR; waiting for it to finish"
		flock 9
	fi
}

take_lock
if [ "$BUILD" = 1 ]; then
	build_dependencies
	build_and_install
	give_tree_to_postgres
fi
trap cleanup EXIT
SECONDS=0
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

progress "starting PostgreSQL on port $PORT (data in $DIR)"
STARTED=1
start_server "$DIR" "$PORT" "${SETTINGS[@]}"
mkdir -p "$WORK"
chown "$PGUSER_OS" "$WORK"

progress "opening $ACCOUNTS accounts; writing a history of $ACCOUNTS deposits and $EVENTS transfers"
psql_ -v naccounts="$ACCOUNTS" -v nevents="$EVENTS" -v work="$WORK" <<'SQL'
CREATE EXTENSION ledger;
CREATE SCHEMA bench_import;
-- what the other system exported
CREATE TABLE bench_import.history (
	kind			text NOT NULL,
	from_account	bigint,
	to_account		bigint,
	amount			bigint NOT NULL,
	occurred_at		timestamptz NOT NULL
);
-- the baseline's table: the legs' columns and primary key
CREATE TABLE bench_import.legs (LIKE ledger.transactions INCLUDING ALL);

SELECT count(ledger_open_account(a)) AS opened FROM generate_series(1, :naccounts) a \gset

/*
 * The history: each account funded on 2016-12-31 with 10^9, far more than
 * its transfers can take (100 debits of at most 10,000 on average), so
 * that every event applies; then the transfers from 2017-01-01 on, two a
 * minute, each between two random accounts (never the same one).
 */
SELECT setseed(0.1959);
\set file :work '/history.copy'
COPY (
	SELECT 'deposit', NULL::bigint, a::bigint, 1000000000::bigint,
		   '2016-12-31'::timestamptz + a * interval '1 second'
	  FROM generate_series(1, :naccounts) a
	UNION ALL
	SELECT 'transfer', r.f, (r.f + r.d) % :naccounts + 1, r.amount,
		   '2017-01-01'::timestamptz + (r.k / 2) * interval '1 minute'
	  FROM (SELECT k, 1 + floor(random() * :naccounts)::bigint AS f,
				   floor(random() * (:naccounts - 1))::bigint AS d,
				   1 + floor(random() * 10000)::bigint AS amount
			  FROM generate_series(0, :nevents - 1) k) r
) TO :'file';

/*
 * Until the import is applied: the last event of each bucket decided (a
 * bucket decides its events in order, and a transfer stays pending until
 * its credit to another bucket is posted), then the queue seen empty.
 * Each look is a short transaction of its own.
 */
CREATE PROCEDURE bench_import.wait_applied(first_id bigint, last_id bigint, timeout_ms integer,
										   INOUT applied_at timestamptz DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
	deadline	timestamptz := clock_timestamp() + timeout_ms * interval '1 ms';
	lasts		bigint[];
	l			bigint;
	pending		boolean;
BEGIN
	SELECT array_agg(m.id) INTO lasts
	  FROM generate_series(0, current_setting('ledger.buckets')::integer - 1) k(bucket),
		   LATERAL (SELECT e.id FROM ledger.event_log e
					 WHERE e.id BETWEEN first_id AND last_id AND e.bucket = k.bucket
					 ORDER BY e.id DESC LIMIT 1) m;
	LOOP
		pending := false;
		FOREACH l IN ARRAY lasts LOOP
			IF ledger_wait(l, 1000) = 'pending' THEN
				pending := true;
				EXIT;
			END IF;
		END LOOP;
		IF NOT pending AND NOT EXISTS (SELECT FROM ledger.queue) THEN
			applied_at := clock_timestamp();
			RETURN;
		END IF;
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'the import was not applied after % ms', timeout_ms;
		END IF;
		COMMIT;
	END LOOP;
END
$$;
SQL

# staging: COPY of the file, as a user would load an export
sql "CHECKPOINT" >/dev/null
t0=$(now)
psql_ -c "COPY bench_import.history FROM '$WORK/history.copy'"
t1=$(now)
ROWS=$(sql "SELECT count(*) FROM bench_import.history")
STAGE_S=$(seconds "$t0" "$t1")
sql "VACUUM ANALYZE bench_import.history" >/dev/null
progress "staging: COPY of $ROWS rows in $STAGE_S s"

# the import, and the workers applying it
sql "CHECKPOINT" >/dev/null
progress "ledger_import() of $ROWS rows"
t0=$(now)
IFS='|' read -r NIMPORTED FIRST LAST <<<"$(sql "SELECT * FROM ledger_import('bench_import.history')")"
t1=$(now)
IMPORT_S=$(seconds "$t0" "$t1")
progress "  logged $NIMPORTED events (ids $FIRST..$LAST) in $IMPORT_S s; waiting for the workers"
APPLIED_AT=$(sql "CALL bench_import.wait_applied($FIRST, $LAST, $DRAIN_TIMEOUT_MS)")
t2=$(sql "SELECT extract(epoch FROM '$APPLIED_AT'::timestamptz)")
APPLY_S=$(seconds "$t1" "$t2")
TOTAL_S=$(seconds "$t0" "$t2")
progress "  applied $APPLY_S s after the import returned; $TOTAL_S s in all"

IFS='|' read -r NEVENTS REJECTED <<<"$(sql "SELECT count(*),
	(SELECT count(*) FROM ledger.outcomes o WHERE o.event_id BETWEEN $FIRST AND $LAST AND o.status = 'r')
	FROM ledger.event_log e WHERE e.id BETWEEN $FIRST AND $LAST AND e.credit_of IS NULL")"
rm -f "$WORK/legs.copy"
sql "COPY (SELECT * FROM ledger.transactions t WHERE t.event_id BETWEEN $FIRST AND $LAST)
	 TO '$WORK/legs.copy'" >/dev/null
LEGS=$(wc -l <"$WORK/legs.copy")
LEGS_RATE=$(rate "$LEGS" "$TOTAL_S")
# legs posted at another time than their event's (a credit from another
# bucket that reached its payee after a later leg of the payee's own bucket)
SHIFTED=$(sql "SELECT count(*) FROM ledger.transactions t
				 JOIN ledger.event_log e ON e.id = t.event_id
				WHERE t.event_id BETWEEN $FIRST AND $LAST AND t.account_id > 0
				  AND t.created_at <> e.occurred_at")
SHIFT_MAX=$(sql "SELECT COALESCE(max(t.created_at - e.occurred_at), '0')::text FROM ledger.transactions t
				   JOIN ledger.event_log e ON e.id = t.event_id
				  WHERE t.event_id BETWEEN $FIRST AND $LAST AND t.account_id > 0")

# the baseline: COPY of the same legs into a table holding what the ledger
# held before the import (nothing)
sql "CHECKPOINT" >/dev/null
t0=$(now)
psql_ -c "COPY bench_import.legs FROM '$WORK/legs.copy'"
t1=$(now)
COPY_S=$(seconds "$t0" "$t1")
COPY_RATE=$(rate "$LEGS" "$COPY_S")
RATIO=$(awk -v a="$LEGS_RATE" -v b="$COPY_RATE" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
progress "baseline: COPY of the $LEGS legs in $COPY_S s"

# ---------------------------------------------------------------- the audit
FAILED=0
progress "audit: ledger_verify()"
t0=$(now)
PROBLEMS=$(sql "SELECT count(*) FROM ledger_verify()")
VERIFY_S=$(seconds "$t0" "$(now)")
if [ "$PROBLEMS" != 0 ]; then
	progress "ledger_verify() reports $PROBLEMS problems:"
	sql "SELECT * FROM ledger_verify() LIMIT 20" >&2
	FAILED=1
fi
if [ "$REJECTED" != 0 ]; then
	progress "$REJECTED imported events were rejected:"
	sql "SELECT o.event_id, o.reason FROM ledger.outcomes o
		  WHERE o.event_id BETWEEN $FIRST AND $LAST AND o.status = 'r' LIMIT 20" >&2
	FAILED=1
fi

progress "audit: balances now, as of five times, and the legs of a time range, against the staging table"
# every account's balance
BAL_BAD=$(sql "WITH legs AS (
		SELECT h.to_account AS a, h.amount AS x FROM bench_import.history h
		 WHERE h.to_account IS NOT NULL
		UNION ALL
		SELECT h.from_account, -h.amount FROM bench_import.history h
		 WHERE h.from_account IS NOT NULL)
	SELECT count(*) FROM (SELECT l.a, sum(l.x) AS balance FROM legs l GROUP BY l.a) e
	 WHERE ledger_balance(e.a) IS DISTINCT FROM e.balance::bigint")
# five times inside the history (between two minutes' transfers), a tenth
# of the accounts
TIMES=$(sql "SELECT string_agg(quote_literal(t::text), ',')
			   FROM (SELECT '2017-01-01'::timestamptz + (($EVENTS * j / 6) / 2) * interval '1 minute'
							+ interval '15 seconds' AS t
					   FROM generate_series(1, 5) j) s")
IFS='|' read -r ASOF_N ASOF_BAD ASOF_EXAMPLE <<<"$(sql "WITH t AS (
		SELECT unnest(ARRAY[$TIMES]::timestamptz[]) AS at
	), acc AS (
		SELECT a FROM generate_series(1, $ACCOUNTS) a WHERE a % 10 = 3
	), legs AS (
		SELECT h.to_account AS a, h.amount AS x, h.occurred_at FROM bench_import.history h
		 WHERE h.to_account % 10 = 3
		UNION ALL
		SELECT h.from_account, -h.amount, h.occurred_at FROM bench_import.history h
		 WHERE h.from_account % 10 = 3
	), expected AS (
		SELECT t.at, acc.a, COALESCE(sum(l.x), 0)::bigint AS balance
		  FROM t CROSS JOIN acc
		  LEFT JOIN legs l ON l.a = acc.a AND l.occurred_at <= t.at
		 GROUP BY t.at, acc.a
	), compared AS (
		SELECT e.*, ledger_balance(e.a, e.at) AS found FROM expected e
	)
	SELECT count(*), count(*) FILTER (WHERE c.found IS DISTINCT FROM c.balance),
		   (SELECT format('account %s as of %s: %s, expected %s', x.a, x.at, x.found, x.balance)
			  FROM compared x WHERE x.found IS DISTINCT FROM x.balance ORDER BY x.at, x.a LIMIT 1)
	  FROM compared c")"
# the legs of [second time, fourth time) of 20 accounts: how many, and their sum
IFS='|' read -r HIST_N HIST_BAD HIST_EXAMPLE <<<"$(sql "WITH w AS (
		SELECT (ARRAY[$TIMES]::timestamptz[])[2] AS since, (ARRAY[$TIMES]::timestamptz[])[4] AS until
	), acc AS (
		SELECT a FROM generate_series(1, $ACCOUNTS, $ACCOUNTS / 20) a
	), expected AS (
		SELECT acc.a, count(h.kind) AS legs,
			   COALESCE(sum(CASE WHEN h.to_account = acc.a THEN h.amount ELSE -h.amount END), 0) AS total
		  FROM acc CROSS JOIN w
		  LEFT JOIN bench_import.history h
			ON (h.to_account = acc.a OR h.from_account = acc.a)
		   AND h.occurred_at >= w.since AND h.occurred_at < w.until
		 GROUP BY acc.a
	), compared AS (
		SELECT e.*, f.legs AS found_legs, f.total AS found_total
		  FROM expected e, w,
			   LATERAL (SELECT count(*) AS legs, COALESCE(sum(x.amount), 0) AS total
						  FROM ledger_history(e.a, w.since, w.until) x) f
	)
	SELECT count(*), count(*) FILTER (WHERE c.legs <> c.found_legs OR c.total <> c.found_total),
		   (SELECT format('account %s: %s legs summing to %s, expected %s summing to %s',
						  x.a, x.found_legs, x.found_total, x.legs, x.total)
			  FROM compared x WHERE x.legs <> x.found_legs OR x.total <> x.found_total
			 ORDER BY x.a LIMIT 1)
	  FROM compared c")"
[ "$BAL_BAD" != 0 ] && { progress "$BAL_BAD accounts' balances differ from the staging table's"; FAILED=1; }
[ "$ASOF_BAD" != 0 ] && { progress "$ASOF_BAD of $ASOF_N balances as of a time differ, e.g. $ASOF_EXAMPLE"; FAILED=1; }
[ "$HIST_BAD" != 0 ] && { progress "$HIST_BAD of $HIST_N histories differ, e.g. $HIST_EXAMPLE"; FAILED=1; }

# ---------------------------------------------------------------- report
dev=$(df --output=source "$DIR" | tail -1)
verdict() { [ "$1" = 0 ] && echo "ok" || echo "FAILED"; }
{
	echo "importing a history (ledger $(sql "SELECT extversion FROM pg_extension WHERE extname = 'ledger'"), $(date -u +%F))"
	echo
	echo "command: ${LEDGER_PGBIN:+LEDGER_PGBIN=$LEDGER_PGBIN }bench/import.sh${ARGS:+ $ARGS} (took ${SECONDS} s)"
	echo
	echo "machine"
	echo "  cpus:        $(nproc) ($(lscpu | awk -F: '/^Model name/ { gsub(/^ +/, "", $2); print $2; exit }'))"
	echo "  memory:      $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
	echo "  disk:        $dev, $(findmnt -no FSTYPE -T "$DIR")"
	echo "  load avg:    $LOAD_AT_START at start (shared machine: other work runs beside)"
	echo "  postgresql:  $(sql "SELECT version()")"
	echo
	echo "server settings not at their defaults"
	sql "SELECT '  ' || rpad(name, 28) || current_setting(name)
		   FROM pg_settings
		  WHERE source NOT IN ('default', 'override', 'client', 'session')
		  ORDER BY name"
	echo
	echo "the history: $ACCOUNTS accounts each funded by a deposit, then $EVENTS transfers"
	echo "between random accounts, two a minute from 2017-01-01 ($ROWS rows, $NEVENTS events,"
	echo "$LEGS legs); staged with COPY in $STAGE_S s"
	echo
	printf '  %-58s %12s %14s\n' "" "seconds" "rate"
	printf '  %-58s %12s %14s\n' "ledger_import() (checks, logs the events, commits)" "$IMPORT_S" "$(rate "$NEVENTS" "$IMPORT_S") events/s"
	printf '  %-58s %12s %14s\n' "the workers applying them, after the import returned" "$APPLY_S" "$(rate "$LEGS" "$APPLY_S") legs/s"
	printf '  %-58s %12s %14s\n' "import + apply" "$TOTAL_S" "$LEGS_RATE legs/s"
	printf '  %-58s %12s %14s\n' "baseline: COPY of the same legs into a table like" "$COPY_S" "$COPY_RATE rows/s"
	printf '  %-58s\n' "ledger.transactions, holding what the ledger held (none)"
	printf '  %-58s %12s\n' "ratio, import + apply against the baseline" "$RATIO"
	echo
	echo "audit"
	echo "  ledger_verify():                     $PROBLEMS problems ($VERIFY_S s)  $(verdict "$PROBLEMS")"
	echo "  imported events rejected:            $REJECTED  $(verdict "$REJECTED")"
	echo "  balances now, against the staging:   $BAL_BAD of $(sql "SELECT count(DISTINCT a) FROM (SELECT to_account a FROM bench_import.history UNION SELECT from_account FROM bench_import.history) s WHERE a IS NOT NULL") differ  $(verdict "$BAL_BAD")"
	echo "  balances as of 5 times (a tenth of"
	echo "  the accounts), against the staging: $ASOF_BAD of $ASOF_N differ  $(verdict "$ASOF_BAD")${ASOF_EXAMPLE:+ (e.g. $ASOF_EXAMPLE)}"
	echo "  ledger_history(since, until) of 20"
	echo "  accounts, against the staging:       $HIST_BAD of $HIST_N differ  $(verdict "$HIST_BAD")${HIST_EXAMPLE:+ (e.g. $HIST_EXAMPLE)}"
	echo "  customer legs not posted at their"
	echo "  event's occurred_at:                 $SHIFTED (latest by $SHIFT_MAX)"
} | { mkdir -p "$(dirname "$OUT")"; tee "$OUT.tmp"; }
mv "$OUT.tmp" "$OUT"
progress "report: $OUT"
if [ "$FAILED" = 1 ]; then
	echo "the imported history failed its audit (see above): the run fails" >&2
	exit 1
fi
