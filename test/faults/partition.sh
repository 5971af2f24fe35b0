#!/usr/bin/env bash
# Faults beyond kill -9: the network between the nodes of a cluster cut for
# 30 s under load, then restored.
#
# Two nodes, each a PostgreSQL server in a network namespace of its own
# (10.77.1.2 and 10.77.2.2, each joined to this host by a veth pair; the
# host forwards between them), and a proxy on this host.  Node 1 owns the
# cluster's buckets 0 and 1, node 2 buckets 2 and 3.  Clients call the
# proxy, each call with an idempotency key of its own: transfers across
# the nodes both ways and within a node, disbursements to a payee on each
# node, deposits, withdrawals, holds across the nodes posted or voided.
# Half the clients pay from either node, the other half from node 1 only,
# so that some go on during the cut.  A call that fails is tried again with
# the same key until it gets an
# id.  Fifteen seconds in, node 2's link goes down for 30 s: the proxy's
# calls to node 2 must fail cleanly (a connection error or the proxy's
# query timeout, not a hang), node 1 goes on debiting its payers for node
# 2's payees, and their credits wait in node 1's outbox.  Once the link is
# back, with no other step: the credits land, each once; every call got its
# id; and the audit holds:
#  - every acknowledged event exists once, on the node its id names,
#    applied or rejected, and its key names it; every kind was applied;
#  - no account has two legs of one event, on either node;
#  - every credit one node sent the other received once, and confirmed;
#  - ledger_verify_cluster() finds nothing; ledger_cluster_money() sums to
#    zero with nothing in flight.
#
# Run as root on Debian 12 with the extension installed (it makes network
# namespaces).  Prints PASS/FAIL per check and "partition: N passed, M
# failed"; exits non-zero on any failure.  About two minutes.
#
#   test/faults/partition.sh
#
# LEDGER_FAULTS_DIR (default /tmp/ledger-faults/partition) and
# LEDGER_FAULTS_PORT (default 55736: the proxy; node i on the next ports).
source "$(dirname "$0")/../../scripts/common.sh"
set +e

ROOT=${LEDGER_FAULTS_DIR:-/tmp/ledger-faults/partition}
PORT=${LEDGER_FAULTS_PORT:-55736}
NACCOUNTS=40
NCLIENTS=4
BEFORE_CUT=15       # seconds of load before the cut
CUT_SECONDS=30
AFTER_CUT=15        # seconds of load after the link is back
NS=(lfp1 lfp2)      # the nodes' network namespaces

need_packages postgresql-15-plproxy iproute2

passed=0
failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
info() { echo "info $*"; }
# expect WHAT GOT WANTED
expect() { if [ "$2" = "$3" ]; then pass "$1"; else fail "$1 (got '$2', wanted '$3')"; fi; }

node_port() { echo $((PORT + $1)); }
node_addr() { echo "10.77.$1.2"; }
# psql on a node's socket (unix sockets do not belong to a network namespace)
node_sql() {
	as_pg psql -h "$ROOT/node$1" -p "$(node_port "$1")" -U postgres -d postgres \
		-X -q -At -v ON_ERROR_STOP=1 "${@:2}"
}
proxy_sql() {
	as_pg psql -h "$ROOT/proxy" -p "$PORT" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1 "$@"
}

cleanup() {
	local i
	for pid in "${CLIENTS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null; done
	for i in 1 2; do
		ip link set "lfh$i" up 2>/dev/null
		stop_server "$ROOT/node$i"
	done
	stop_server "$ROOT/proxy"
	for i in 1 2; do
		ip netns del "${NS[$((i - 1))]}" 2>/dev/null
		ip link del "lfh$i" 2>/dev/null
	done
	[ -n "${FORWARD:-}" ] && sysctl -qw net.ipv4.ip_forward="$FORWARD"
	return 0
}
trap cleanup EXIT

# The network: namespace i holds node i at 10.77.i.2, its veth's other end
# on this host is lfhi at 10.77.i.1, its default route; the host forwards.
net_up() {
	local i ns
	FORWARD=$(sysctl -n net.ipv4.ip_forward)
	sysctl -qw net.ipv4.ip_forward=1
	for i in 1 2; do
		ns=${NS[$((i - 1))]}
		ip netns del "$ns" 2>/dev/null
		ip link del "lfh$i" 2>/dev/null
		ip netns add "$ns" &&
			ip link add "lfh$i" type veth peer name "lfe$i" &&
			ip link set "lfe$i" netns "$ns" &&
			ip addr add "10.77.$i.1/24" dev "lfh$i" &&
			ip link set "lfh$i" up &&
			ip netns exec "$ns" ip addr add "$(node_addr "$i")/24" dev "lfe$i" &&
			ip netns exec "$ns" ip link set "lfe$i" up &&
			ip netns exec "$ns" ip link set lo up &&
			ip netns exec "$ns" ip route add default via "10.77.$i.1" || return 1
	done
}

# node I: a server in namespace I.  The replication connections notice a
# dead peer within seconds, and retry as often.
node_start() {
	local i=$1 dir=$ROOT/node$1
	rm -rf "$dir"
	mkdir -p "$dir"
	chown "$PGUSER_OS" "$dir"
	as_pg initdb -D "$dir/data" -A trust -U postgres >/dev/null
	cat >>"$dir/data/postgresql.conf" <<-EOF
		port = $(node_port "$i")
		listen_addresses = '$(node_addr "$i")'
		unix_socket_directories = '$dir'
		shared_preload_libraries = 'ledger'
		ledger.database = 'postgres'
		ledger.node_id = $i
		ledger.buckets = 2
		ledger.poll_interval = '100ms'
		wal_level = logical
		max_worker_processes = 16
		wal_sender_timeout = '10s'
		wal_receiver_timeout = '10s'
		wal_retrieve_retry_interval = '1s'
	EOF
	echo "host all all 10.77.0.0/16 trust" >>"$dir/data/pg_hba.conf"
	ip netns exec "${NS[$((i - 1))]}" runuser -u "$PGUSER_OS" -- \
		pg_ctl -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

conninfo() { echo "host=$(node_addr "$1") port=$(node_port "$1") dbname=postgres connect_timeout=3"; }
MAP_NODES="VALUES (1, '$(conninfo 1)'), (2, '$(conninfo 2)')"
MAP_BUCKETS="VALUES (0, 1), (1, 1), (2, 2), (3, 2)"

setup() {
	local i j
	net_up || return 1
	for i in 1 2; do node_start "$i" || return 1; done
	for i in 1 2; do
		node_sql "$i" -c "CREATE EXTENSION ledger" \
			-c "INSERT INTO ledger.cluster_nodes $MAP_NODES" \
			-c "INSERT INTO ledger.cluster_buckets $MAP_BUCKETS" \
			-c "SELECT ledger_cluster_init()" >/dev/null || return 1
	done
	for i in 1 2; do
		j=$((3 - i))
		node_sql "$i" -c "CREATE SUBSCRIPTION ledger_from_$j CONNECTION '$(conninfo "$j")'
						  PUBLICATION ledger_cluster WITH (slot_name = 'ledger_${j}_to_$i')" \
			2>/dev/null || return 1
	done
	start_server "$ROOT/proxy" "$PORT" || return 1
	# a call to a node cut off fails after 10 s rather than when TCP gives up
	proxy_sql -c "CREATE EXTENSION ledger_proxy CASCADE" \
		-c "INSERT INTO ledger_proxy.nodes $MAP_NODES" \
		-c "INSERT INTO ledger_proxy.buckets $MAP_BUCKETS" \
		-c "INSERT INTO ledger_proxy.config VALUES ('query_timeout', '10')" >/dev/null || return 1
	proxy_sql -c "SELECT count(ledger_open_account(a)) FROM generate_series(1, $NACCOUNTS) a" \
		-c "SELECT count(ledger_deposit(a, 1000000, 'fund-' || a)) FROM generate_series(1, $NACCOUNTS) a" \
		>/dev/null || return 1
	for _ in $(seq 1 300); do
		[ "$(node_sql 1 -c "SELECT count(*) FROM ledger.directory")" = "$NACCOUNTS" ] &&
			[ "$(node_sql 2 -c "SELECT count(*) FROM ledger.directory")" = "$NACCOUNTS" ] && return 0
		sleep 0.1
	done
	return 1
}

# An account of node N (1 or 2), from 4 to NACCOUNTS - 1: ids 0 and 1 mod 4
# are node 1's, 2 and 3 node 2's.
account_of() { echo $(((RANDOM % (NACCOUNTS / 4 - 1) + 1) * 4 + ($1 - 1) * 2 + RANDOM % 2)); }

# call C KEY SQL: SQL through the proxy, tried again with the same KEY
# until it returns an id; "id key" goes to acked-C and each failed try's
# error to errors-C.  Prints the id.
call() {
	local c=$1 key=$2 sql=$3 id
	echo "$key" >>"$ROOT/keys-$c"
	for _ in $(seq 1 600); do
		id=$(timeout 30 psql -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -X -q -At \
			-c "$sql" 2>>"$ROOT/errors-$c")
		if [[ "$id" =~ ^[0-9]+$ ]]; then
			echo "$id $key" >>"$ROOT/acked-$c"
			echo "$id"
			return 0
		fi
		sleep 0.5
	done
	return 1
}

# another account of the node of account P
neighbour() { echo $(($1 + 4 > NACCOUNTS ? $1 - 4 : $1 + 4)); }

# client C END: calls of every kind until END (epoch seconds), each with a
# key of its own; odd clients pay from node 1 only
client() {
	local c=$1 end=$2 n=0 p q r a id key node other
	while [ "$(date +%s)" -lt "$end" ]; do
		n=$((n + 1))
		key="c$c-$n"
		node=$((c % 2 == 1 ? 1 : RANDOM % 2 + 1))
		other=$((3 - node))
		p=$(account_of "$node")
		a=$((RANDOM % 50 + 1))
		case $((RANDOM % 8)) in
		0 | 1 | 2) q=$(account_of "$other")
			call "$c" "$key" "SELECT ledger_transfer($p, $q, $a, '$key')" >/dev/null ;;
		3) q=$(neighbour "$p")
			call "$c" "$key" "SELECT ledger_transfer($p, $q, $a, '$key')" >/dev/null ;;
		4) q=$(account_of "$other")
			r=$(neighbour "$p")
			call "$c" "$key" "SELECT ledger_disburse($p, ARRAY[$q, $r]::bigint[], ARRAY[7, 3]::bigint[], '$key')" >/dev/null ;;
		5) call "$c" "$key" "SELECT ledger_deposit($p, $a, '$key')" >/dev/null ;;
		6) call "$c" "$key" "SELECT ledger_withdraw($p, $a, '$key')" >/dev/null ;;
		7) q=$(account_of "$other")
			id=$(call "$c" "$key-h" "SELECT ledger_hold($p, $q, $a, NULL, '$key-h')") &&
				if [ $((RANDOM % 2)) = 0 ]; then
					call "$c" "$key-p" "SELECT ledger_post($id, NULL, '$key-p')" >/dev/null
				else
					call "$c" "$key-v" "SELECT ledger_void($id, '$key-v')" >/dev/null
				fi ;;
		esac
	done
}

# quiet: no events pending, no credit sent and unconfirmed, on both nodes
quiet() {
	local i left
	for _ in $(seq 1 1200); do
		left=0
		for i in 1 2; do
			left=$((left + $(node_sql "$i" -c "
				SELECT (SELECT count(*) FROM ledger.queue)
					   + (SELECT count(*) FROM ledger.transit t
						   WHERE t.source_node = ledger.node_id()
							 AND NOT EXISTS (SELECT FROM ledger.transit_acks a
											  WHERE a.source_node = t.source_node
												AND a.id = t.id))")))
		done
		[ "$left" = 0 ] && return 0
		sleep 0.1
	done
	return 1
}

unconfirmed() {
	node_sql 1 -c "SELECT count(*) FROM ledger.transit t
					WHERE t.source_node = 1 AND t.target_node = 2
					  AND NOT EXISTS (SELECT FROM ledger.transit_acks a
									   WHERE a.source_node = t.source_node AND a.id = t.id)"
}

rm -rf "$ROOT"
mkdir -p "$ROOT"
chown "$PGUSER_OS" "$ROOT"
if ! setup; then
	fail "setting up two nodes in their namespaces and a proxy"
	for f in "$ROOT"/node*/server.log "$ROOT"/proxy/server.log; do [ -f "$f" ] && tail -5 "$f"; done
	echo "partition: $passed passed, $failed failed"
	exit 1
fi
pass "two nodes in network namespaces of their own, a proxy, $NACCOUNTS accounts funded"

START=$(date +%s)
END=$((START + BEFORE_CUT + CUT_SECONDS + AFTER_CUT))
CLIENTS=()
for c in $(seq 1 "$NCLIENTS"); do
	: >"$ROOT/acked-$c"
	: >"$ROOT/keys-$c"
	: >"$ROOT/errors-$c"
	client "$c" "$END" &
	CLIENTS+=($!)
done

sleep "$BEFORE_CUT"
acked_before=$(cat "$ROOT"/acked-* | wc -l)
errors_before=$(cat "$ROOT"/errors-* | grep -c ERROR)
ip link set lfh2 down
info "the link of node 2 is down ($acked_before calls acknowledged before)"
sleep "$CUT_SECONDS"
waiting=$(unconfirmed)
errors_cut=$(($(cat "$ROOT"/errors-* | grep -c ERROR) - errors_before))
acked_cut=$(($(cat "$ROOT"/acked-* | wc -l) - acked_before))
ip link set lfh2 up
info "the link is back: $acked_cut calls acknowledged during the cut, $errors_cut failed tries"

[ "$errors_cut" -gt 0 ] && pass "calls to node 2 failed while it was cut off" ||
	fail "no call failed during the cut: was node 2 cut off?"
[ "$acked_cut" -gt 0 ] && pass "calls paid by node 1 went on during the cut" ||
	fail "nothing was acknowledged during the cut"
[ "$waiting" -gt 0 ] && pass "node 1's credits for node 2 waited in its outbox ($waiting at the end of the cut)" ||
	fail "no credit waited in node 1's outbox at the end of the cut"
other_errors=$(cat "$ROOT"/errors-* | grep ERROR |
	grep -v -E "could not connect|timeout|connection|Network is unreachable|No route to host|server closed" | sort | uniq -c)
[ -z "$other_errors" ] && pass "every failed call failed on the connection or the proxy's timeout" ||
	fail "calls failed otherwise: $other_errors"

for pid in "${CLIENTS[@]}"; do wait "$pid"; done
CLIENTS=()
expect "every call got its id in the end (retried with its key)" \
	"$(cat "$ROOT"/acked-* | wc -l)" "$(cat "$ROOT"/keys-* | wc -l)"

if quiet; then
	pass "every queue drains and every credit sent is confirmed, with no step taken"
else
	fail "the nodes did not drain within two minutes"
fi
node_sql 1 -c "SELECT ledger.move_acked()" >/dev/null
node_sql 2 -c "SELECT ledger.move_acked()" >/dev/null

# ----------------------------------------------------------------- audit

cat "$ROOT"/acked-* >"$ROOT/acked"
chown "$PGUSER_OS" "$ROOT/acked"
for i in 1 2; do
	node_sql "$i" -c "CREATE TABLE acked (id bigint, key text)" \
		-c "\\copy acked FROM '$ROOT/acked' WITH (DELIMITER ' ')" >/dev/null
done
for i in 1 2; do
	expect "node $i: every event acknowledged for it exists once, applied or rejected, under its key" \
		"$(node_sql "$i" -c "
			SELECT count(*) FILTER (WHERE n.n IS DISTINCT FROM 1)
				   + count(*) FILTER (WHERE k.event_id IS DISTINCT FROM a.id)
			  FROM acked a
			  LEFT JOIN (SELECT e.id, count(*) AS n FROM ledger.events e
						  WHERE e.status IN ('a', 'r') GROUP BY e.id) n ON n.id = a.id
			  LEFT JOIN ledger.idempotency k ON k.key = a.key
			 WHERE a.id >> 48 = $i")" "0"
done
kinds=$( (node_sql 1 -c "SELECT DISTINCT (ledger_event(id)).kind FROM acked WHERE id >> 48 = 1 AND ledger_event_status(id) = 'applied'"
	node_sql 2 -c "SELECT DISTINCT (ledger_event(id)).kind FROM acked WHERE id >> 48 = 2 AND ledger_event_status(id) = 'applied'") |
	sort -u | tr '\n' ' ')
expect "the load applied every kind of event" "$kinds" "deposit disburse hold post transfer void withdraw "
expect "no key was given two events" \
	"$(node_sql 1 -c "SELECT count(*) FROM (SELECT key FROM acked GROUP BY key HAVING count(DISTINCT id) > 1) d")" "0"

# legs over both nodes: one per account and event
node_sql 1 -c "SELECT event_id, account_id FROM ledger.transactions" >"$ROOT/legs"
node_sql 2 -c "SELECT event_id, account_id FROM ledger.transactions" >>"$ROOT/legs"
expect "no account has two legs of one event, on either node" \
	"$(sort "$ROOT/legs" | uniq -d | wc -l)" "0"

for i in 1 2; do
	j=$((3 - i))
	expect "every credit node $i sent was received once by node $j, and confirmed" \
		"$(node_sql "$j" -c "SELECT count(*), coalesce(sum(amount), 0) FROM ledger.transit WHERE source_node = $i")" \
		"$(node_sql "$i" -c "SELECT count(*), coalesce(sum(amount), 0) FROM ledger.transit_acked")"
done
expect "ledger_verify_cluster() finds nothing" \
	"$(proxy_sql -c "SELECT count(*) FROM ledger_verify_cluster()")" "0"
expect "ledger_cluster_money(): nothing in flight, and the money sums to zero" \
	"$(proxy_sql -c "SELECT in_flight || ' ' || (external + customers + in_flight) FROM ledger_cluster_money()")" "0 0"
info "$(wc -l <"$ROOT/acked") calls acknowledged, $(cat "$ROOT"/errors-* | grep -c ERROR) failed tries retried"

echo "partition: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
