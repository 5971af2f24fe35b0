#!/usr/bin/env bash
# The HTTP endpoint, bench/http/ledger-http, against a real PostgreSQL with
# the extension, driven with curl: every route's status and JSON, idempotency,
# transfers really applied, bad and hostile requests, pipelining, grouping of
# concurrent transfers around a bad one, PostgreSQL going away and coming
# back, and draining on SIGTERM.  Builds what it needs; run as root on
# Debian 12.  Prints each check and "N passed, M failed"; exits non-zero on
# any failure.
#
#   test/http/run.sh
#
# PostgreSQL listens on 55610, ledger-http on 55611.
source "$(dirname "$0")/../../scripts/common.sh"
set +e

PGPORT=55610
HTTP_PORT=55611
H="http://127.0.0.1:$HTTP_PORT"
DIR=${LEDGER_HTTP_TEST_DIR:-/tmp/ledger-http-test}
T="$DIR/work"
BIN="$TOP/bench/http/ledger-http"
CONNINFO="host=127.0.0.1 port=$PGPORT dbname=postgres user=postgres"
HTTP_PID=

passed=0
failed=0

ok() { passed=$((passed + 1)); printf 'ok     %s\n' "$1"; }
not_ok() {
	failed=$((failed + 1))
	printf 'FAILED %s\n' "$1"
	[ -n "${2-}" ] && printf '       %s\n' "$2"
	return 0
}

cleanup() {
	[ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null && wait "$HTTP_PID" 2>/dev/null
	exec 4>&- 2>/dev/null
	stop_server "$DIR"
}
trap cleanup EXIT

psql_() { as_pg psql -h 127.0.0.1 -p "$PGPORT" -U postgres -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }

# start_http [flags...]: ledger-http on $HTTP_PORT, logging to $T/http.log,
# once its database connections are ready.
start_http() {
	"$BIN" --port "$HTTP_PORT" --conninfo "$CONNINFO" --pool 2 --test-accounts 10 \
		--timeout-ms 1000 "$@" >>"$T/http.log" 2>&1 &
	HTTP_PID=$!
	for _ in $(seq 1 100); do
		[ "$(curl -s -o /dev/null -w '%{http_code}' "$H/accounts/1/balance")" = 200 ] && return 0
		sleep 0.1
	done
	echo "ledger-http did not come up:"
	cat "$T/http.log"
	exit 1
}

# stop_http: SIGTERM, and the exit code in STOP_RC.
stop_http() {
	kill -TERM "$HTTP_PID"
	wait "$HTTP_PID"
	STOP_RC=$?
	HTTP_PID=
}

# call METHOD PATH [BODY]: sets STATUS, BODY and HEADERS.
call() {
	local args=(-s -m 20 -o "$T/body" -D "$T/headers" -w '%{http_code}' -X "$1")
	[ $# -ge 3 ] && args+=(--data-binary "$3")
	STATUS=$(curl "${args[@]}" "$H$2")
	BODY=$(cat "$T/body" 2>/dev/null)
	HEADERS=$(cat "$T/headers" 2>/dev/null)
}

# expect DESCRIPTION STATUS [JQ-FILTER]: the last call's status, and a jq
# filter that must hold on its body.
expect() {
	local desc=$1 want=$2 filter=${3:-true}
	if [ "$STATUS" = "$want" ] && jq -e "$filter" >/dev/null 2>&1 <<<"$BODY"; then
		ok "$desc"
	else
		not_ok "$desc" "expected $want and $filter; got $STATUS $BODY"
	fi
}

# event_settled ID: poll GET /events/ID until it is no longer pending.
event_settled() {
	for _ in $(seq 1 200); do
		call GET "/events/$1"
		[ "$STATUS" = 200 ] && [ "$(jq -r .status <<<"$BODY")" != pending ] && return 0
		sleep 0.05
	done
	return 1
}

balance_is() {
	local account=$1 want=$2
	call GET "/accounts/$account/balance"
	expect "balance of account $account is $want" 200 ".account == $account and .balance == $want"
}

# raw REQUEST-BYTES: send bytes on one connection, print all that comes back
# until the server closes it.
raw() {
	exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT"
	printf '%b' "$1" >&3
	timeout 20 cat <&3
	exec 3<&-
}

statuses() { grep -a -o '^HTTP/1.1 [0-9]*' | awk '{print $2}' | tr '\n' ' ' | sed 's/ $//'; }

open_fds() { ls "/proc/$HTTP_PID/fd" | wc -l; }

log "installing what the test needs"
need_packages libuv1-dev libjansson-dev libpq-dev libhttp-parser-dev pkg-config curl jq \
	postgresql-15 postgresql-server-dev-15 build-essential
owner=$(stat -c %U "$TOP")
build_and_install
log "building ledger-http"
make -C "$TOP/bench/http" -s clean
make -C "$TOP/bench/http" -s || exit 1
# scripts/test.sh hands the tree to postgres for the suites: keep it so
[ "$owner" = "$PGUSER_OS" ] && give_tree_to_postgres

log "starting PostgreSQL on port $PGPORT"
start_server "$DIR" "$PGPORT" "ledger.buckets = 2" || exit 1
mkdir -p "$T"
: >"$T/http.log"
psql_ >/dev/null <<'SQL' || exit 1
CREATE EXTENSION ledger;
SELECT count(ledger_open_account(a)) FROM generate_series(1, 10) a;
SELECT max(ledger_deposit(a, 1000)) AS last_deposit FROM generate_series(1, 10) a \gset
SELECT ledger_wait(:last_deposit);
SQL

log "ledger-http on port $HTTP_PORT"
start_http
baseline_fds=$(open_fds)

echo "--- routes"
call POST /deposit '{"account":1,"amount":500}'
expect "POST /deposit: 202 with an event id" 202 '.event_id | type == "number"'
id=$(jq .event_id <<<"$BODY")
event_settled "$id"
expect "GET /events/N: the deposit is applied" 200 \
	".event_id == $id and .status == \"applied\" and .reason == null and .kind == \"deposit\" and .account == 1 and .amount == 500"
balance_is 1 1500

call POST /transfer '{"from":1,"to":2,"amount":100,"idempotency_key":"http-test-1"}'
expect "POST /transfer: 202 with an event id" 202 '.event_id | type == "number"'
transfer_id=$(jq .event_id <<<"$BODY")
call POST /transfer '{"from":1,"to":2,"amount":100,"idempotency_key":"http-test-1"}'
expect "POST /transfer again with the same idempotency key: the same event" 202 ".event_id == $transfer_id"
event_settled "$transfer_id"
expect "the transfer is applied" 200 \
	".status == \"applied\" and .kind == \"transfer\" and .account == 1 and .to == [2] and .amounts == [100]"
balance_is 1 1400
balance_is 2 1100

call POST /withdraw '{"account":2,"amount":50,"idempotency_key":null}'
expect "POST /withdraw: 202" 202 '.event_id | type == "number"'
event_settled "$(jq .event_id <<<"$BODY")"
expect "the withdrawal is applied" 200 '.status == "applied" and .kind == "withdraw"'
balance_is 2 1050

call POST /disburse '{"from":1,"to":[2,3],"amounts":[10,20],"idempotency_key":"http-test-2"}'
expect "POST /disburse: 202" 202 '.event_id | type == "number"'
event_settled "$(jq .event_id <<<"$BODY")"
expect "the disbursement is applied" 200 \
	'.status == "applied" and .kind == "disburse" and .to == [2,3] and .amounts == [10,20] and .amount == 30'
balance_is 1 1370
balance_is 3 1020

call POST /withdraw '{"account":4,"amount":999999}'
expect "POST /withdraw of more than the balance: accepted" 202
event_settled "$(jq .event_id <<<"$BODY")"
expect "... then rejected, with its reason" 200 '.status == "rejected" and .reason == "insufficient_funds"'
balance_is 4 1000

call POST /transfer/test
expect "POST /transfer/test: 202" 202 '.event_id | type == "number"'
event_settled "$(jq .event_id <<<"$BODY")"
expect "the test transfer moved 1 between two distinct test accounts" 200 \
	'.status == "applied" and .amount == 1 and .account >= 1 and .account <= 10 and .to[0] >= 1 and .to[0] <= 10 and .to[0] != .account'

call GET /events/999999999
expect "GET /events/N of no event: 404" 404 '.error | type == "string"'
call GET /accounts/99999/balance
expect "GET /accounts/N/balance of no account: 404" 404 '.error | type == "string"'

echo "--- bad requests"
call POST /transfer '{"from":1,"to":2,'
expect "malformed JSON: 400" 400 '.error | startswith("malformed JSON")'
call POST /transfer '[1,2,3]'
expect "a body that is not an object: 400" 400 '.error | type == "string"'
call POST /transfer '{"from":1,"to":2}'
expect "missing field: 400 naming it" 400 '.error | contains("amount")'
call POST /transfer '{"from":"1","to":2,"amount":5}'
expect "wrong type: 400 naming the field" 400 '.error | contains("from")'
call POST /transfer '{"from":1,"to":2,"amount":1.5}'
expect "a fractional amount: 400" 400 '.error | contains("amount")'
call POST /transfer '{"from":1,"to":2,"amount":-5}'
expect "negative amount: 400 with SQLSTATE 22023" 400 '.sqlstate == "22023" and (.error | type == "string")'
call POST /transfer '{"from":1,"to":99999,"amount":5}'
expect "unknown account: 404 with SQLSTATE 23503" 404 '.sqlstate == "23503"'
call POST /deposit '{"account":99999,"amount":5}'
expect "deposit to an unknown account: 404 with SQLSTATE 23503" 404 '.sqlstate == "23503"'
call POST /transfer '{"from":3,"to":3,"amount":5}'
expect "transfer to oneself: 400" 400 '.sqlstate == "22023"'
call POST /transfer "{\"from\":1,\"to\":2,\"amount\":1,\"idempotency_key\":\"$(printf 'k%.0s' $(seq 1 300))\"}"
expect "idempotency key too long: 400 with SQLSTATE 22001" 400 '.sqlstate == "22001"'
call POST /disburse '{"from":1,"to":[2,2],"amounts":[1,1]}'
expect "disbursement paying one account twice: 400" 400 '.sqlstate == "22023"'
payees=$(seq -s, 2 1002)
ones=$(printf '1,%.0s' $(seq 2 1002))
call POST /disburse "{\"from\":1,\"to\":[$payees],\"amounts\":[${ones%,}]}"
expect "disbursement to more than ledger.max_payees (1000): 422 with SQLSTATE 54000" 422 '.sqlstate == "54000"'
call POST /disburse '{"from":1,"to":[2,"x"],"amounts":[1,1]}'
expect "disbursement with a non-integer payee: 400" 400 '.error | contains("to")'
head -c 70000 /dev/zero | tr '\0' ' ' >"$T/big.json"
call POST /transfer "@$T/big.json"
expect "oversized body (70 KB, limit 64 KiB): 413" 413 '.error | type == "string"'
grep -qi '^connection: close' <<<"$HEADERS" && ok "... and the connection is closed" ||
	not_ok "... and the connection is closed" "$HEADERS"
STATUS=$(curl -s -m 20 -o "$T/body" -w '%{http_code}' -H "X-Filler: $(head -c 10000 /dev/zero | tr '\0' a)" "$H/accounts/1/balance")
BODY=$(cat "$T/body")
expect "oversized headers (10 KB, limit 8 KiB): 431" 431 '.error | type == "string"'
call GET /nowhere
expect "unknown route: 404" 404 '.error == "not found"'
call GET /events/abc
expect "GET /events/abc: 404" 404
call GET /transfer
expect "GET /transfer: 405" 405 '.error | type == "string"'
grep -qi '^allow: POST' <<<"$HEADERS" && ok "... with Allow: POST" || not_ok "... with Allow: POST" "$HEADERS"
call DELETE /events/1
expect "DELETE /events/1: 405" 405
grep -qi '^allow: GET' <<<"$HEADERS" && ok "... with Allow: GET" || not_ok "... with Allow: GET" "$HEADERS"

out=$(raw 'NOT HTTP AT ALL\r\n\r\n')
[ "$(statuses <<<"$out")" = 400 ] && ok "garbage instead of HTTP: 400, then closed" ||
	not_ok "garbage instead of HTTP: 400, then closed" "$out"

out=$(raw 'POST /transfer HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{"from":1,')
[ "$(statuses <<<"$out")" = 408 ] && ok "a client that stops mid-body: 408 after --timeout-ms, then closed" ||
	not_ok "a client that stops mid-body: 408 after --timeout-ms, then closed" "$out"

out=$(raw 'GET /accounts/1/bal')
[ "$(statuses <<<"$out")" = 408 ] && ok "a client that stops mid-headers: 408, then closed" ||
	not_ok "a client that stops mid-headers: 408, then closed" "$out"

echo "--- keep-alive and pipelining"
out=$(raw 'GET /accounts/1/balance HTTP/1.0\r\n\r\n')
[ "$(statuses <<<"$out")" = 200 ] && grep -qi '^connection: close' <<<"$out" &&
	ok "HTTP/1.0 without keep-alive: answered, then closed" ||
	not_ok "HTTP/1.0 without keep-alive: answered, then closed" "$out"
n=$(curl -s -o /dev/null -o /dev/null -w '%{num_connects}\n' "$H/accounts/1/balance" "$H/accounts/2/balance" | tr '\n' ' ')
[ "$n" = "1 0 " ] && ok "two requests from curl share one keep-alive connection" ||
	not_ok "two requests from curl share one keep-alive connection" "connects: $n"

call GET /accounts/5/balance
before5=$(jq .balance <<<"$BODY")
call GET /accounts/6/balance
before6=$(jq .balance <<<"$BODY")
b='{"from":5,"to":6,"amount":7}'
out=$(raw "GET /accounts/5/balance HTTP/1.1\r\nHost: x\r\n\r\nPOST /transfer HTTP/1.1\r\nHost: x\r\nContent-Length: ${#b}\r\n\r\n${b}GET /transfer HTTP/1.1\r\nHost: x\r\n\r\nGET /accounts/5/balance HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
s=$(statuses <<<"$out")
[ "$s" = "200 202 405 200" ] && ok "four pipelined requests on one connection: answered in order ($s)" ||
	not_ok "four pipelined requests on one connection: answered in order" "$out"
grep -aq "\"balance\":$before5}" <<<"$out" && grep -aq '"event_id":' <<<"$out" &&
	ok "... with their own bodies" || not_ok "... with their own bodies" "$out"
id=$(grep -ao '"event_id":[0-9]*' <<<"$out" | cut -d: -f2)
event_settled "$id"
balance_is 5 $((before5 - 7))
balance_is 6 $((before6 + 7))

# every client connection opened above is closed again
for _ in $(seq 1 100); do
	[ "$(open_fds)" -le "$baseline_fds" ] && break
	sleep 0.05
done
[ "$(open_fds)" -le "$baseline_fds" ] && ok "no client connection left open ($(open_fds) fds, as at start)" ||
	not_ok "no client connection left open" "$(open_fds) fds open, $baseline_fds at start"
kill -0 "$HTTP_PID" && ok "still running after all that" || not_ok "still running after all that"

echo "--- concurrent requests sharing idempotency keys"
# 40 requests at once, 4 for each of 10 keys: transfers grouped in any order
# on any connection, each key must still make exactly one event.
pids=()
for k in $(seq 1 10); do
	for r in 1 2 3 4; do
		curl -s -m 30 -o "$T/idem.$k.$r.body" -w '%{http_code}' -X POST "$H/transfer" \
			--data-binary "{\"from\":7,\"to\":8,\"amount\":1,\"idempotency_key\":\"concurrent-$k\"}" \
			>"$T/idem.$k.$r.status" &
		pids+=($!)
	done
done
wait "${pids[@]}"
s=$(cat "$T"/idem.*.status | tr -d '\n' | sed 's/202//g')
[ -z "$s" ] && ok "40 concurrent transfers: all 202" || not_ok "40 concurrent transfers: all 202" "$(cat "$T"/idem.*.status)"
bad=0
for k in $(seq 1 10); do
	[ "$(cat "$T"/idem.$k.*.body | jq .event_id | sort -u | wc -l)" = 1 ] || bad=$((bad + 1))
done
n=$(cat "$T"/idem.*.body | jq .event_id | sort -u | wc -l)
[ "$bad" = 0 ] && [ "$n" = 10 ] && ok "... one event per key, ten in all" ||
	not_ok "... one event per key, ten in all" "$bad keys with several events, $n events"

echo "--- PostgreSQL going away and coming back"
stop_server "$DIR"
call POST /transfer '{"from":1,"to":2,"amount":1}'
expect "PostgreSQL stopped: POST /transfer gives 503" 503 '.error | type == "string"'
call GET /accounts/1/balance
expect "PostgreSQL stopped: GET /accounts/1/balance gives 503" 503 '.error | type == "string"'
as_pg pg_ctl -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start >/dev/null
for _ in $(seq 1 100); do
	call GET /accounts/1/balance
	[ "$STATUS" = 200 ] && break
	sleep 0.1
done
expect "PostgreSQL back: ledger-http reconnects by itself" 200 '.account == 1 and (.balance | type == "number")'
call POST /transfer '{"from":1,"to":2,"amount":1}'
expect "... and takes transfers again" 202
event_settled "$(jq .event_id <<<"$BODY")"
expect "... which are applied" 200 '.status == "applied"'
for _ in $(seq 1 100); do
	n=$(psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ledger-http'")
	[ "$n" = 2 ] && break
	sleep 0.1
done
[ "$n" = 2 ] && ok "exactly --pool 2 database connections after the outage" ||
	not_ok "exactly --pool 2 database connections after the outage" "$n"

echo "--- SIGTERM drains"
# Hold ledger.queue locked so that a transfer is in flight, in PostgreSQL,
# when SIGTERM comes: it must still get its answer, and the exit be clean.
mkfifo "$T/locker"
psql_ <"$T/locker" >/dev/null &
locker=$!
exec 4>"$T/locker"
echo "BEGIN; LOCK TABLE ledger.queue IN ACCESS EXCLUSIVE MODE;" >&4
for _ in $(seq 1 100); do
	[ "$(psql_ -c "SELECT count(*) FROM pg_locks WHERE relation = 'ledger.queue'::regclass AND mode = 'AccessExclusiveLock' AND granted")" = 1 ] && break
	sleep 0.05
done
curl -s -m 30 -o "$T/drain.body" -w '%{http_code}' -X POST "$H/transfer" \
	--data-binary '{"from":7,"to":8,"amount":3}' >"$T/drain.status" &
client=$!
for _ in $(seq 1 200); do
	[ "$(psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ledger-http' AND wait_event_type = 'Lock'")" = 1 ] && break
	sleep 0.05
done
kill -TERM "$HTTP_PID"
echo "COMMIT;" >&4
exec 4>&-
wait "$locker"
wait "$client"
STATUS=$(cat "$T/drain.status")
BODY=$(cat "$T/drain.body")
expect "a transfer in flight at SIGTERM still gets its 202" 202 '.event_id | type == "number"'
wait "$HTTP_PID"
rc=$?
HTTP_PID=
[ "$rc" = 0 ] && ok "ledger-http exits 0 after SIGTERM" || not_ok "ledger-http exits 0 after SIGTERM" "exit code $rc"
grep -q "SIGTERM received: draining" "$T/http.log" && ok "... saying it drained" || not_ok "... saying it drained"

echo "--- a group of concurrent transfers with bad ones"
# A group forms when 5 transfers are waiting (the wait is long on purpose):
# the bad ones must be answered with their errors, the others committed.
start_http --group-max 5 --group-wait-us 10000000
i=0
clients=()
for body in '{"from":9,"to":10,"amount":1}' '{"from":10,"to":99999,"amount":1}' \
	'{"from":8,"to":9,"amount":1}' '{"from":7,"to":8,"amount":-1}' '{"from":6,"to":7,"amount":1}'; do
	i=$((i + 1))
	curl -s -m 30 -o "$T/group.$i.body" -w '%{http_code}' -X POST "$H/transfer" \
		--data-binary "$body" >"$T/group.$i.status" &
	clients+=($!)
done
wait "${clients[@]}"
s=$(for i in 1 2 3 4 5; do cat "$T/group.$i.status"; echo -n " "; done)
[ "$s" = "202 404 202 400 202 " ] && ok "five transfers in one group, two bad: 202 404 202 400 202" ||
	not_ok "five transfers in one group, two bad: 202 404 202 400 202" "$s"
STATUS=$(cat "$T/group.2.status") BODY=$(cat "$T/group.2.body")
expect "... the unknown account's error" 404 '.sqlstate == "23503"'
STATUS=$(cat "$T/group.4.status") BODY=$(cat "$T/group.4.body")
expect "... the negative amount's error" 400 '.sqlstate == "22023"'
n=$(grep -c "a group of 5 transfers failed on transfer" "$T/http.log")
[ "$n" = 1 ] && ok "... they were one group, sent again without the bad one" ||
	not_ok "... they were one group, sent again without the bad one" "$(tail -5 "$T/http.log")"
for i in 1 3 5; do
	event_settled "$(jq .event_id "$T/group.$i.body")"
	expect "... good transfer $i applied" 200 '.status == "applied"'
done
stop_http
[ "$STOP_RC" = 0 ] && ok "ledger-http exits 0 after SIGTERM, idle" || not_ok "ledger-http exits 0 after SIGTERM, idle" "exit code $STOP_RC"

n=$(psql_ -c "SELECT count(*) FROM ledger_verify()")
[ "$n" = 0 ] && ok "ledger_verify() finds nothing wrong" || not_ok "ledger_verify() finds nothing wrong" "$n problems"

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
