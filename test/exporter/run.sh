#!/usr/bin/env bash
# scripts/prometheus/ledger-queries.yaml in the packaged Prometheus PostgreSQL
# exporter (Debian's prometheus-postgres-exporter) against a real PostgreSQL
# with the extension: the exporter connects as a login role with the rights
# the file's header names (not a superuser), and the ledger metrics it
# serves are checked against SQL: labels, counters after money moved, a
# paused worker's pending entries and lag, the hash chain heads and their
# age.  Run as root on Debian 12.  Prints each check and "N passed, M failed";
# exits non-zero on any failure.
#
#   test/exporter/run.sh
#
# PostgreSQL listens on the first free port from 55640, the exporter on the
# first free one after it, both on 127.0.0.1.
source "$(dirname "$0")/../../scripts/common.sh"
set +e

DIR=${LEDGER_EXPORTER_TEST_DIR:-/tmp/ledger-exporter-test}
T="$DIR/work"
QUERIES="$TOP/scripts/prometheus/ledger-queries.yaml"
EXPORTER=/usr/bin/prometheus-postgres-exporter
ROLE=ledger_exporter
EXPORTER_PID=

passed=0
failed=0

ok() { passed=$((passed + 1)); printf 'ok     %s\n' "$1"; }
not_ok() {
	failed=$((failed + 1))
	printf 'FAILED %s\n' "$1"
	[ -n "${2-}" ] && printf '       %s\n' "$2"
	return 0
}
# check DESCRIPTION DETAIL COMMAND...: ok if the command succeeds
check() {
	local desc=$1 detail=$2
	shift 2
	if "$@"; then ok "$desc"; else not_ok "$desc" "$detail"; fi
}

cleanup() {
	if [ -n "$EXPORTER_PID" ]; then
		kill "$EXPORTER_PID" 2>/dev/null
		timeout 10 tail --pid="$EXPORTER_PID" -f /dev/null 2>/dev/null || kill -9 "$EXPORTER_PID" 2>/dev/null
		wait "$EXPORTER_PID" 2>/dev/null
	fi
	stop_server "$DIR"
}
trap cleanup EXIT

# install_packages PKG...: apt-get install what is missing, updating the
# package lists only if the install fails without.
install_packages() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 && return 0
	timeout 600 apt-get update -qq &&
		timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# free_port FROM [NOT]: the first port from FROM that nothing listens on at
# 127.0.0.1 (and that is not NOT).
free_port() {
	local p=$1
	while [ "$p" = "${2-}" ] || timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; do
		p=$((p + 1))
	done
	echo "$p"
}

psql_() {
	timeout 60 runuser -u "$PGUSER_OS" -- psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d "$DB" \
		-X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

# scrape: the exporter's page into $T/metrics; false if it does not answer.
scrape() {
	[ "$(curl -s -m 20 -o "$T/metrics" -w '%{http_code}' "$URL")" = 200 ]
}

# metric NAME [LABEL=VALUE...]: the values of the series of NAME in the last
# scrape that have these labels, one a line.
metric() {
	local name=$1
	shift
	awk -v name="$name" -v want="$*" '
		index($0, name "{") == 1 || index($0, name " ") == 1 {
			n = split(want, w, " ")
			for (i = 1; i <= n; i++) {
				split(w[i], kv, "=")
				if (index($0, kv[1] "=\"" kv[2] "\"") == 0) next
			}
			print $NF
		}' "$T/metrics"
}

# label_values NAME LABEL: the values of LABEL in NAME's series, sorted, on one line.
label_values() {
	grep "^$1{" "$T/metrics" | grep -o "$2=\"[^\"]*\"" | cut -d'"' -f2 | sort -n | tr '\n' ' ' | sed 's/ $//'
}

# num_eq A B / num_ge A B / num_le A B: numeric comparisons of what awk reads
# (the exporter writes 1.5e+09 and the like).
num_eq() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 == b + 0) }'; }
num_ge() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }'; }
num_le() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'; }
is_number() { [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?$ ]]; }

# expect_metric DESCRIPTION WANT NAME [LABEL=VALUE...]: exactly one series,
# whose value is WANT.
expect_metric() {
	local desc=$1 want=$2 name=$3 got
	shift 3
	got=$(metric "$name" "$@")
	if [ "$(wc -l <<<"$got")" = 1 ] && num_eq "$got" "$want"; then
		ok "$desc"
	else
		not_ok "$desc" "$name{$*}: expected $want, got '${got//$'\n'/ }'"
	fi
}

# settle: wait until no entry is pending and ledger_stats holds still, so
# that the exporter and SQL read the same numbers.
stats_sql="SELECT string_agg(concat_ws(' ', worker, events_applied, events_rejected, credits_applied, batches, pending, paused), ',' ORDER BY worker) FROM ledger_stats"
settle() {
	local before now
	for _ in $(seq 1 100); do
		before=$(psql_ -c "$stats_sql")
		sleep 0.3
		now=$(psql_ -c "$stats_sql")
		[ "$before" = "$now" ] && [ "$(psql_ -c 'SELECT sum(pending) FROM ledger_stats')" = 0 ] && return 0
	done
	return 1
}

log "installing what the test needs"
install_packages prometheus-postgres-exporter curl postgresql-15 || { echo "could not install packages"; exit 1; }
owner=$(stat -c %U "$TOP")
build_and_install || exit 1
[ "$owner" = "$PGUSER_OS" ] && give_tree_to_postgres

# the settings of test/ledger.conf, in the database it names
mapfile -t settings < <(grep -v '^\s*\(#\|$\)' "$TOP/test/ledger.conf" | grep -v '^shared_preload_libraries')
DB=$(sed -n "s/^ledger.database *= *'\(.*\)'.*/\1/p" "$TOP/test/ledger.conf" | tail -1)
DB=${DB:-postgres}
BUCKETS=$(sed -n "s/^ledger.buckets *= *\([0-9]*\).*/\1/p" "$TOP/test/ledger.conf" | tail -1)
BUCKETS=${BUCKETS:-2}

PGPORT=$(free_port 55640)
EXPORTER_PORT=$(free_port $((PGPORT + 1)))
URL="http://127.0.0.1:$EXPORTER_PORT/metrics"
log "starting PostgreSQL on port $PGPORT"
start_server "$DIR" "$PGPORT" "${settings[@]}" || { cat "$DIR/server.log" 2>/dev/null; exit 1; }
mkdir -p "$T"
chown "$PGUSER_OS" "$T"
if [ "$DB" != postgres ]; then
	DB=postgres psql_ -c "CREATE DATABASE $DB" || exit 1
fi
psql_ -c "CREATE EXTENSION ledger" >/dev/null || exit 1
# the exporter's role, made as the queries file's header says
role_sql=$(sed -n "s/^#   \(CREATE ROLE $ROLE .*\|GRANT .* TO $ROLE;\)\$/\1/p" "$QUERIES")
check "the queries file's header says how to make the role $ROLE" "$role_sql" \
	[ "$(grep -c . <<<"$role_sql")" -ge 2 ]
psql_ <<<"$role_sql" >/dev/null
check "... which works" "" [ $? = 0 ]

echo "--- money moved"
# accounts 1-6 in buckets 1, 0, 1, 0, ...: deposits, transfers within a
# bucket and across buckets, and one transfer rejected for want of funds
event_ids=()
enqueue() {
	local id
	id=$(psql_ -c "SELECT $1") || return 1
	event_ids+=("$id")
}
psql_ -c "SELECT count(ledger_open_account(a)) FROM generate_series(1, 6) a" >/dev/null
for a in 1 2 3 4 5 6; do enqueue "ledger_deposit($a, 1000)"; done
enqueue "ledger_transfer(1, 3, 100)"
enqueue "ledger_transfer(2, 4, 200)"
enqueue "ledger_transfer(1, 2, 300)"
enqueue "ledger_transfer(4, 5, 50)"
enqueue "ledger_transfer(6, 1, 999999)"
statuses=""
for id in "${event_ids[@]}"; do
	statuses+="$(psql_ -c "SELECT ledger_wait($id, 20000)") "
done
check "${#event_ids[@]} events enqueued and decided: 10 applied, 1 rejected" "$statuses" \
	[ "$(tr ' ' '\n' <<<"$statuses" | grep -c '^applied$')/$(tr ' ' '\n' <<<"$statuses" | grep -c '^rejected$')" = 10/1 ]
settle
rc=$?
check "ledger_stats settles: nothing pending" "$(psql_ -c "$stats_sql")" [ $rc = 0 ]

log "the exporter on port $EXPORTER_PORT"
DATA_SOURCE_NAME="host=127.0.0.1 port=$PGPORT dbname=$DB user=$ROLE sslmode=disable" \
	"$EXPORTER" --extend.query-path="$QUERIES" --web.listen-address="127.0.0.1:$EXPORTER_PORT" \
	>"$T/exporter.log" 2>&1 &
EXPORTER_PID=$!
up=
for _ in $(seq 1 100); do
	kill -0 "$EXPORTER_PID" 2>/dev/null || break
	scrape && [ "$(metric pg_up)" = 1 ] && { up=1; break; }
	sleep 0.2
done
if [ -z "$up" ]; then
	echo "the exporter did not come up:"
	cat "$T/exporter.log"
	exit 1
fi

echo "--- the exporter, its role and the queries file"
check "the exporter's role is not a superuser" "" \
	[ "$(psql_ -c "SELECT rolsuper FROM pg_roles WHERE rolname = '$ROLE'")" = f ]
expect_metric "pg_up 1: the exporter reaches PostgreSQL as $ROLE" 1 pg_up
expect_metric "the queries file loads (pg_exporter_user_queries_load_error 0)" 0 pg_exporter_user_queries_load_error
expect_metric "the scrape has no error (pg_exporter_last_scrape_error 0)" 0 pg_exporter_last_scrape_error
n=$(grep -c 'level=error' "$T/exporter.log")
check "the exporter logs no error" "$(grep 'level=error' "$T/exporter.log" | head -5)" [ "$n" = 0 ]

echo "--- ledger_worker_*: one series per worker, as ledger_stats says"
want_workers=$(seq -s ' ' 0 $((BUCKETS - 1)))
bad=
for m in events_applied_total events_rejected_total credits_applied_total batches_total pending \
	lag_seconds paused failures events_per_second last_batch_seconds avg_batch_seconds \
	last_batch_size avg_batch_size last_batch_timestamp last_error_timestamp; do
	got=$(label_values "ledger_worker_$m" worker)
	[ "$got" = "$want_workers" ] || bad+="ledger_worker_$m: workers '$got'; "
done
check "every ledger_worker_* metric has one series per worker, label worker ($want_workers)" "$bad" [ -z "$bad" ]
for m in events_applied events_rejected credits_applied batches; do
	grep -q "^# TYPE ledger_worker_${m}_total counter$" "$T/metrics" && ok "ledger_worker_${m}_total is a counter" ||
		not_ok "ledger_worker_${m}_total is a counter" "$(grep "^# TYPE ledger_worker_${m}_total" "$T/metrics")"
done
grep -q '^# HELP ledger_worker_pending .*ledger_stats.pending' "$T/metrics" &&
	ok "metrics carry their descriptions as HELP" || not_ok "metrics carry their descriptions as HELP"

# each worker's numbers against ledger_stats, read after the scrape (the
# ledger is settled, so they are the same numbers)
while read -r w applied rejected credits batches pending paused failures size state; do
	expect_metric "worker $w: events_applied_total = ledger_stats.events_applied ($applied)" "$applied" \
		ledger_worker_events_applied_total "worker=$w"
	expect_metric "worker $w: events_rejected_total = ledger_stats.events_rejected ($rejected)" "$rejected" \
		ledger_worker_events_rejected_total "worker=$w"
	expect_metric "worker $w: credits_applied_total = ledger_stats.credits_applied ($credits)" "$credits" \
		ledger_worker_credits_applied_total "worker=$w"
	expect_metric "worker $w: batches_total = ledger_stats.batches ($batches)" "$batches" \
		ledger_worker_batches_total "worker=$w"
	expect_metric "worker $w: pending 0 after the waits" 0 ledger_worker_pending "worker=$w"
	check "worker $w: ledger_stats.pending is 0 too" "$pending" [ "$pending" = 0 ]
	expect_metric "worker $w: lag_seconds 0 with nothing pending" 0 ledger_worker_lag_seconds "worker=$w"
	expect_metric "worker $w: paused 0 ($paused)" 0 ledger_worker_paused "worker=$w"
	expect_metric "worker $w: failures = ledger_stats.failures ($failures)" "$failures" ledger_worker_failures "worker=$w"
	expect_metric "worker $w: last_batch_size = ledger_stats.last_batch_size ($size)" "$size" \
		ledger_worker_last_batch_size "worker=$w"
	expect_metric "worker $w: state label '$state'" 1 ledger_worker_state_current "worker=$w" "state=$state"
	v=$(metric ledger_worker_last_batch_seconds "worker=$w")
	check "worker $w: last_batch_seconds is a number > 0 ($v)" "$v" num_ge "$v" 0.000001
	v=$(metric ledger_worker_last_batch_timestamp "worker=$w")
	sql=$(psql_ -c "SELECT extract(epoch FROM last_batch_at) FROM ledger_stats WHERE worker = $w")
	check "worker $w: last_batch_timestamp = ledger_stats.last_batch_at ($sql)" "got $v" \
		awk -v a="$v" -v b="$sql" 'BEGIN { d = a - b; exit !(d < 0.001 && d > -0.001) }'
done < <(psql_ -F ' ' -c "SELECT worker, events_applied, events_rejected, credits_applied, batches, pending,
		paused, failures, last_batch_size, state FROM ledger_stats ORDER BY worker")

sum() { metric "$1" | awk '{ s += $1 } END { print s + 0 }'; }
n=$(psql_ -c "SELECT count(*) FROM ledger.events WHERE status = 'applied'")
check "the workers' events_applied_total add up to the events applied ($n)" "sum $(sum ledger_worker_events_applied_total)" \
	num_eq "$(sum ledger_worker_events_applied_total)" "$n"
n=$(psql_ -c "SELECT count(*) FROM ledger.events WHERE status = 'rejected'")
check "the workers' events_rejected_total add up to the events rejected ($n)" "sum $(sum ledger_worker_events_rejected_total)" \
	num_eq "$(sum ledger_worker_events_rejected_total)" "$n"
check "cross-bucket transfers show as credits applied (> 0)" "sum $(sum ledger_worker_credits_applied_total)" \
	num_ge "$(sum ledger_worker_credits_applied_total)" 1

echo "--- ledger_chain_head_*: one series per bucket, as ledger_chain_heads() says"
heads_sql="SELECT bucket, batch_id, extract(epoch FROM now() - decided_at) FROM ledger_chain_heads() ORDER BY bucket"
want_buckets=$(psql_ -c "SELECT string_agg(bucket::text, ' ' ORDER BY bucket) FROM ledger_chain_heads()")
check "ledger_chain_heads() has a row per bucket that has batches ($want_buckets)" "" [ -n "$want_buckets" ]
for m in batch_id age_seconds; do
	got=$(label_values "ledger_chain_head_$m" bucket)
	check "ledger_chain_head_$m has one series per bucket, label bucket ($want_buckets)" "buckets: '$got'" \
		[ "$got" = "$want_buckets" ]
done
# the scrape came before this query: each age is at most SQL's
while read -r b id age; do
	expect_metric "bucket $b: chain head batch_id = ledger_chain_heads().batch_id ($id)" "$id" \
		ledger_chain_head_batch_id "bucket=$b"
	v=$(metric ledger_chain_head_age_seconds "bucket=$b")
	check "bucket $b: chain head age is a number >= 0 and <= now() - decided_at read after it ($v <= $age)" "got '$v'" \
		eval 'is_number "$v" && num_ge "$v" 0 && num_le "$v" "$age"'
done < <(psql_ -F ' ' -c "$heads_sql")
for b in $want_buckets; do
	echo "$b $(metric ledger_chain_head_batch_id "bucket=$b") $(metric ledger_chain_head_age_seconds "bucket=$b")"
done >"$T/heads.before"
sleep 1.5
scrape
while read -r b id age; do
	v=$(metric ledger_chain_head_age_seconds "bucket=$b")
	id2=$(metric ledger_chain_head_batch_id "bucket=$b")
	check "bucket $b: a scrape 1.5 s later shows the same head ($id), its age grown by >= 1 s ($age, then $v)" "head $id2" \
		eval 'num_eq "$id2" "$id" && num_ge "$v" "$(awk -v a="$age" "BEGIN { print a + 1 }")"'
done <"$T/heads.before"

echo "--- a paused worker, seen live"
# account 1 is in bucket 1 (of 2): pause its worker and deposit
pb=$(psql_ -c "SELECT bucket FROM ledger.event_log WHERE id = ${event_ids[0]}")
pw=$((pb % BUCKETS))
other=$(((pw + 1) % BUCKETS))
applied_before=$(metric ledger_worker_events_applied_total "worker=$pw")
head_before=$(metric ledger_chain_head_batch_id "bucket=$pb")
psql_ -c "SELECT ledger_pause($pw)" >/dev/null
id=$(psql_ -c "SELECT ledger_deposit(1, 5)")
sleep 1.2
scrape
expect_metric "worker $pw paused: ledger_worker_paused 1" 1 ledger_worker_paused "worker=$pw"
expect_metric "... its state label says paused" 1 ledger_worker_state_current "worker=$pw" "state=paused"
expect_metric "... its deposit is pending: ledger_worker_pending 1" 1 ledger_worker_pending "worker=$pw"
v=$(metric ledger_worker_lag_seconds "worker=$pw")
check "... and lag_seconds counts its age (>= 1 s: $v)" "" num_ge "$v" 1
expect_metric "... worker $other is not paused and has nothing pending" 0 ledger_worker_pending "worker=$other"
expect_metric "... the chain head of bucket $pb has not moved" "$head_before" ledger_chain_head_batch_id "bucket=$pb"
psql_ -c "SELECT ledger_resume($pw)" >/dev/null
s=$(psql_ -c "SELECT ledger_wait($id, 20000)")
check "resumed, the deposit is applied" "$s" [ "$s" = applied ]
settle
scrape
expect_metric "worker $pw resumed: paused 0" 0 ledger_worker_paused "worker=$pw"
expect_metric "... pending 0" 0 ledger_worker_pending "worker=$pw"
expect_metric "... lag_seconds 0" 0 ledger_worker_lag_seconds "worker=$pw"
expect_metric "... events_applied_total one more ($applied_before + 1)" $((applied_before + 1)) \
	ledger_worker_events_applied_total "worker=$pw"
head=$(psql_ -c "SELECT batch_id FROM ledger_chain_heads() WHERE bucket = $pb")
check "... the chain head of bucket $pb moved on ($head_before, now $head)" "" num_ge "$head" $((head_before + 1))
expect_metric "... and the exporter shows the new head ($head)" "$head" ledger_chain_head_batch_id "bucket=$pb"
v=$(metric ledger_chain_head_age_seconds "bucket=$pb")
check "... which is young (age $v < 10 s)" "" eval 'num_ge "$v" 0 && num_le "$v" 10'
expect_metric "the scrapes had no error" 0 pg_exporter_last_scrape_error
n=$(grep -c 'level=error' "$T/exporter.log")
check "the exporter logged no error" "$(grep 'level=error' "$T/exporter.log" | head -5)" [ "$n" = 0 ]

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
