#!/usr/bin/env bash
# The README's cluster setup, followed step by step: scripts/cluster.sh
# start 2 does its steps (two nodes and a proxy on this machine); then,
# through the proxy and logged in with passwords as the roles it made (the
# operator back_office, the client shop): accounts opened on both nodes,
# deposits, transfers across nodes each way, the credits landing on the
# payees' nodes, the balances, and ledger_verify_cluster() clean.  Finally
# scripts/cluster.sh stop.  Run as root on Debian 12 with the extension
# installed.  Prints PASS/FAIL per check and "N passed, M failed"; exits
# non-zero on any failure.
#
#   test/cluster-setup/run.sh
#
# LEDGER_CLUSTER_SETUP_DIR (default /tmp/ledger-cluster-setup-test) and
# LEDGER_CLUSTER_SETUP_PORT (default 55710: the proxy; the nodes 55711, 55712).
source "$(dirname "$0")/../../scripts/common.sh"
set +e

export LEDGER_TRY_DIR=${LEDGER_CLUSTER_SETUP_DIR:-/tmp/ledger-cluster-setup-test}
export LEDGER_TRY_PORT=${LEDGER_CLUSTER_SETUP_PORT:-55710}
CLUSTER=$TOP/scripts/cluster.sh
DIR=$LEDGER_TRY_DIR
OUT=$(mktemp)

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'PASS %s\n' "$1"; }
fail() {
	failed=$((failed + 1))
	printf 'FAIL %s\n' "$1"
	[ -n "${2-}" ] && printf '     %s\n' "$2"
	return 0
}
# check DESCRIPTION WANT GOT
check() { [ "$3" = "$2" ] && pass "$1" || fail "$1" "expected '$2', got '$3'"; }

cleanup() {
	bash "$CLUSTER" stop >/dev/null 2>&1
	rm -f "$OUT"
}
trap cleanup EXIT

summary() {
	echo
	echo "cluster setup: $passed passed, $failed failed"
	[ "$failed" -eq 0 ]
}

# A cluster left by an earlier run that was killed.
bash "$CLUSTER" stop >/dev/null 2>&1

log "scripts/cluster.sh start 2 (proxy on $LEDGER_TRY_PORT, in $DIR)"
if bash "$CLUSTER" start 2 >"$OUT" 2>&1; then
	pass "scripts/cluster.sh start 2"
else
	fail "scripts/cluster.sh start 2" "$(tail -20 "$OUT")"
	for f in "$DIR"/*/server.log; do [ -f "$f" ] && { echo "--- $f"; tail -20 "$f"; }; done
	summary
	exit 1
fi

# The psql command lines start printed for the client and the operator:
# the checks log in through them, as a user would.
SHOP=$(grep -o 'psql "host=[^"]* user=shop [^"]*"' "$OUT")
OFFICE=$(grep -o 'psql "host=[^"]* user=back_office [^"]*"' "$OUT")
[ -n "$SHOP" ] && [ -n "$OFFICE" ] && pass "start printed psql lines for shop and back_office" ||
	fail "start printed psql lines for shop and back_office" "$(tail -15 "$OUT")"
shop() { eval "$SHOP -X -q -At -w -v ON_ERROR_STOP=1 -c \"\$1\"" 2>&1; }
office() { eval "$OFFICE -X -q -At -w -v ON_ERROR_STOP=1 -c \"\$1\"" 2>&1; }
# issuer EVENT-ID: the node in the id's top bits (an error, as it came)
issuer() { [[ "$1" =~ ^[0-9]+$ ]] && echo $(($1 >> 48)) || echo "$1"; }
node() { as_pg psql -h "$DIR/node$1" -p $((LEDGER_TRY_PORT + $1)) -d ledger -X -q -At -c "$2" 2>&1; }

# wait_for DESCRIPTION WANT COMMAND...: polls COMMAND for up to 30 s
wait_for() {
	local desc=$1 want=$2 got
	shift 2
	for _ in $(seq 1 300); do
		got=$("$@")
		[ "$got" = "$want" ] && { pass "$desc"; return 0; }
		sleep 0.1
	done
	fail "$desc" "expected '$want', got '$got' after 30 s"
}

# Step 1 of the README: the database existed before the workers started.
n=$(cat "$DIR"/node*/server.log | grep -c 'database "ledger" does not exist')
check "no worker found its database missing (created before the restart)" 0 "$n"

# Four buckets: 0 and 1 on node 1, 2 and 3 on node 2.  Accounts 11 and 14
# are node 2's, 12 and 13 node 1's.
check "back_office opens accounts 11-14 through the proxy" "4" \
	"$(office "SELECT count(ledger_open_account(a)) FROM generate_series(11, 14) a")"
check "node 1 holds accounts 12 and 13" "12,13" \
	"$(node 1 "SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger.accounts WHERE id BETWEEN 11 AND 14")"
check "node 2 holds accounts 11 and 14" "11,14" \
	"$(node 2 "SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger.accounts WHERE id BETWEEN 11 AND 14")"
for i in 1 2; do
	wait_for "node $i's directory lists the other node's accounts (replication as ledger_repl)" 4 \
		node "$i" "SELECT count(*) FROM ledger.directory WHERE account_id BETWEEN 11 AND 14"
done

case $(shop "SELECT ledger_deposit(11, 1)") in
*"permission denied"*) pass "shop, a client, may not deposit" ;;
*) fail "shop, a client, may not deposit" "$(shop "SELECT ledger_deposit(11, 1)")" ;;
esac

d1=$(office "SELECT ledger_deposit(12, 100000)")
d2=$(office "SELECT ledger_deposit(11, 100000)")
check "deposits to 12 (node 1) and 11 (node 2) applied" "applied applied" \
	"$(office "SELECT ledger_wait($d1)") $(office "SELECT ledger_wait($d2)")"

# node 1 -> node 2, node 2 -> node 1, and node 2 -> node 2
t1=$(shop "SELECT ledger_transfer(12, 11, 3000, 'setup-test-1')")
t2=$(shop "SELECT ledger_transfer(11, 13, 1000, 'setup-test-2')")
t3=$(shop "SELECT ledger_transfer(11, 14, 500, 'setup-test-3')")
check "shop's transfers are issued by the payers' nodes (1, 2, 2)" "1 2 2" \
	"$(issuer "$t1") $(issuer "$t2") $(issuer "$t3")"
check "shop's transfers are applied (ledger_wait through the proxy)" "applied applied applied" \
	"$(shop "SELECT ledger_wait($t1)") $(shop "SELECT ledger_wait($t2)") $(shop "SELECT ledger_wait($t3)")"
check "a retry with the same key names the same event" "$t1" \
	"$(shop "SELECT ledger_transfer(12, 11, 3000, 'setup-test-1')")"

check "ledger_wait(..., until => 'credited') through the proxy" "credited credited" \
	"$(shop "SELECT ledger_wait($t1, 30000, until => 'credited')") $(shop "SELECT ledger_wait($t2, 30000, until => 'credited')")"

# the credits cross by logical replication, after the payers' batches, and
# are posted by the payees' workers in their next batches
wait_for "the credit from node 1 lands on account 11 (node 2)" 101500 shop "SELECT ledger_balance(11)"
wait_for "the credit from node 2 lands on account 13 (node 1)" 1000 shop "SELECT ledger_balance(13)"
check "balances of 11, 12, 13, 14" "101500 97000 1000 500" \
	"$(shop "SELECT string_agg(ledger_balance(a)::text, ' ' ORDER BY a) FROM generate_series(11, 14) a")"

check "ledger_verify_cluster() returns no rows" 0 "$(office "SELECT count(*) FROM ledger_verify_cluster()")"

bash "$CLUSTER" status >"$OUT" 2>&1 && [ "$(grep -c '^== node' "$OUT")" = 2 ] &&
	pass "scripts/cluster.sh status shows both nodes" || fail "scripts/cluster.sh status shows both nodes" "$(head -20 "$OUT")"

if bash "$CLUSTER" stop >"$OUT" 2>&1 && [ ! -e "$DIR" ]; then
	pass "scripts/cluster.sh stop stops the servers and removes $DIR"
else
	fail "scripts/cluster.sh stop stops the servers and removes $DIR" "$(cat "$OUT")"
fi

summary
