#!/usr/bin/env bash
# A cluster of ledger nodes behind a proxy, on this machine, to try it out:
# each node and the proxy is a throwaway PostgreSQL server of its own.  It
# does the README's "Setting it up" steps of "A cluster of nodes", in their
# order and with the SQL they show; only the addresses differ (all servers
# listen on 127.0.0.1, each on its own port).  Run as root on Debian 12 with
# the extension installed (scripts/test.sh or make install).
#
#   scripts/cluster.sh start [N]   N nodes (default 2, at most 16) and a proxy;
#                                  prints how to connect
#   scripts/cluster.sh status      per node: ledger_stats, ledger_node_totals
#   scripts/cluster.sh stop        stops the servers, removes their directory
#
# LEDGER_TRY_DIR (default /tmp/ledger-try) holds a directory per server
# (proxy, node1, node2, ...: data, server.log, socket) and the password file;
# LEDGER_TRY_PORT (default 55700) is the proxy's port, node i listens on
# LEDGER_TRY_PORT + i.
source "$(dirname "$0")/common.sh"

DIR=$(realpath -m "${LEDGER_TRY_DIR:-/tmp/ledger-try}")
BASE_PORT=${LEDGER_TRY_PORT:-55700}
DB=ledger             # ledger.database on the nodes; the proxy's database too
WORKERS=2             # ledger.buckets: bucket workers per node
MARK=$DIR/.ledger-cluster
PGPASS=$DIR/pgpass

# the servers' tools run as postgres, which may not enter the caller's
# working directory
cd /

progress() { printf '[cluster.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { progress "$*"; exit 1; }

node_port() { echo $((BASE_PORT + $1)); }

# The node map's connection string of node I.  The passwords are in a
# password file: the README's ~postgres/.pgpass would be shared with every
# other server of the OS user postgres on this machine, so this one is
# named by passfile= instead.
node_conninfo() { echo "host=127.0.0.1 port=$(node_port "$1") dbname=$DB passfile=$PGPASS"; }

# admin NAME PORT DB [psql args...]: psql as the servers' superuser, on the
# server's own socket (peer authentication); SQL from stdin without -c.
admin() {
	local name=$1 port=$2 db=$3
	shift 3
	PGOPTIONS="-c client_min_messages=warning" \
		as_pg psql -h "$DIR/$name" -p "$port" -d "$db" -X -q -At -v ON_ERROR_STOP=1 "$@"
}
node_admin() { admin "node$1" "$(node_port "$1")" "$DB" "${@:2}"; }

# as_role ROLE [psql args...]: psql through the proxy as ROLE, logging in
# with its password, as a client would.
as_role() {
	psql "host=127.0.0.1 port=$BASE_PORT dbname=$DB user=$1 passfile=$PGPASS" \
		-X -q -At -w -v ON_ERROR_STOP=1 "${@:2}"
}

new_password() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# The cluster's buckets, one "bucket node" line each.  A node's new account
# goes to its local bucket (id mod ledger.buckets), so all of a node's
# workers are used only if, for each worker w, the node owns a cluster bucket
# s with s = w (mod gcd(2^k, ledger.buckets)).  Node i owns the consecutive
# buckets (i-1)*L .. i*L-1 (L = ledger.buckets), which meets that; 2^k is
# the smallest power of two >= N*L, and the buckets left over go one each to
# nodes 1, 2, ... in turn.
bucket_map() {
	local n=$1 total=1 b
	while [ "$total" -lt $((n * WORKERS)) ]; do total=$((total * 2)); done
	for ((b = 0; b < total; b++)); do
		if [ "$b" -lt $((n * WORKERS)) ]; then
			echo "$b $((b / WORKERS + 1))"
		else
			echo "$b $(((b - n * WORKERS) % n + 1))"
		fi
	done
}

# server_init NAME PORT: a fresh server (initdb) listening on 127.0.0.1:PORT
# and a socket in its directory; its pg_hba.conf lets in the superuser on
# that socket alone, until the README's lines are added.
server_init() {
	local name=$1 port=$2
	mkdir -p "$DIR/$name"
	chown "$PGUSER_OS" "$DIR/$name"
	as_pg initdb -D "$DIR/$name/data" -U postgres --auth-local=peer --auth-host=reject >/dev/null
	{
		echo "port = $port"
		echo "listen_addresses = '127.0.0.1'"
		echo "unix_socket_directories = '$DIR/$name'"
	} >>"$DIR/$name/data/postgresql.conf"
	echo "local all postgres peer" >"$DIR/$name/data/pg_hba.conf"
	as_pg pg_ctl -D "$DIR/$name/data" -l "$DIR/$name/server.log" -w -t 60 start >/dev/null
}

server_restart() {
	as_pg pg_ctl -D "$DIR/$1/data" -l "$DIR/$1/server.log" -w -t 60 -m fast restart >/dev/null
}

server_reload() { as_pg pg_ctl -D "$DIR/$1/data" reload >/dev/null; }

# ------------------------------------------------------------- the steps

start() {
	local n=${1:-2} i m b node role
	[[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 16 ] || die "N must be 1 to 16"
	[ -e "$MARK" ] && die "a cluster is already in $DIR: scripts/cluster.sh stop first"
	[ -f "$PGBIN/../lib/ledger.so" ] || die "the extension is not installed: make install (or scripts/test.sh) first"
	need_packages postgresql-15-plproxy

	mkdir -p "$DIR"
	chown "$PGUSER_OS" "$DIR"
	echo "$n" >"$MARK"
	trap start_failed EXIT

	local repl_pw shop_pw office_pw
	repl_pw=$(new_password)
	shop_pw=$(new_password)
	office_pw=$(new_password)

	local nodes_sql=""
	BUCKETS_SQL=""
	for i in $(seq 1 "$n"); do
		nodes_sql+="${nodes_sql:+, }($i, '$(node_conninfo "$i")')"
	done
	while read -r b node; do
		BUCKETS_SQL+="${BUCKETS_SQL:+, }($b, $node)"
	done < <(bucket_map "$n")

	progress "PostgreSQL servers: the proxy on port $BASE_PORT, nodes on $((BASE_PORT + 1))-$((BASE_PORT + n)) (in $DIR)"
	server_init proxy "$BASE_PORT"
	for i in $(seq 1 "$n"); do server_init "node$i" "$(node_port "$i")"; done

	# Step 1: the database the workers serve exists before they start:
	# until it does, each worker logs FATAL and is restarted.
	progress "step 1: CREATE DATABASE $DB on each node"
	for i in $(seq 1 "$n"); do
		admin "node$i" "$(node_port "$i")" postgres -c "CREATE DATABASE $DB"
	done

	# Step 2: the settings, then a restart (shared_preload_libraries,
	# ledger.*, wal_level and the process limits take effect only then).
	# Each node subscribes to the n-1 others, and during the initial copy
	# each subscription runs up to 2 table sync workers, each with a slot
	# and a WAL sender on the node it copies from.
	local repl_workers=$((n - 1 + 2 * (n - 1) + 2))
	[ "$repl_workers" -lt 4 ] && repl_workers=4
	local slots=$((3 * (n - 1) + 2))
	[ "$slots" -lt 10 ] && slots=10
	progress "step 2: postgresql.conf of each node, and a restart"
	for i in $(seq 1 "$n"); do
		cat >>"$DIR/node$i/data/postgresql.conf" <<CONF
shared_preload_libraries = 'ledger'
ledger.database = '$DB'
ledger.node_id = $i
ledger.buckets = $WORKERS
wal_level = logical
max_logical_replication_workers = $repl_workers
max_worker_processes = $((WORKERS + repl_workers + 1 + 8))
max_replication_slots = $slots
max_wal_senders = $slots
max_slot_wal_keep_size = 1GB
CONF
		server_restart "node$i"
	done

	# Step 3: the extension, and the node map, the same on every node.
	progress "step 3: CREATE EXTENSION ledger, the node map, ledger_cluster_init() on each node"
	for i in $(seq 1 "$n"); do
		node_admin "$i" <<SQL
CREATE EXTENSION ledger;
INSERT INTO ledger.cluster_nodes (node_id, conninfo) VALUES $nodes_sql;
INSERT INTO ledger.cluster_buckets (bucket, node_id) VALUES $BUCKETS_SQL;
SELECT ledger_cluster_init();
SQL
	done >/dev/null

	# Step 4: the roles.  The subscriptions log in to the other nodes as
	# ledger_repl: a logical replication connection needs REPLICATION, and
	# the initial copy reads the published tables.  The proxy logs in to
	# the nodes as its caller: each client role exists on every node, with
	# the same password.
	progress "step 4: roles ledger_repl, shop (ledger_client) and back_office (ledger_operator) on each node"
	for i in $(seq 1 "$n"); do
		node_admin "$i" <<SQL
CREATE ROLE ledger_repl LOGIN REPLICATION PASSWORD '$repl_pw';
GRANT USAGE ON SCHEMA ledger TO ledger_repl;
GRANT SELECT ON ledger.directory, ledger.transit TO ledger_repl;
CREATE ROLE shop LOGIN PASSWORD '$shop_pw' IN ROLE ledger_client;
CREATE ROLE back_office LOGIN PASSWORD '$office_pw' IN ROLE ledger_operator;
SQL
	done

	# Step 5: pg_hba.conf: the other nodes' subscriptions, and the proxy,
	# each from its address (here all 127.0.0.1).  A logical replication
	# connection names its database: it is matched by the database column,
	# not by "replication" (that is for physical replication).
	progress "step 5: pg_hba.conf of each node, and a reload"
	for i in $(seq 1 "$n"); do
		cat >>"$DIR/node$i/data/pg_hba.conf" <<HBA
host $DB ledger_repl 127.0.0.1/32 scram-sha-256
host $DB +ledger_client 127.0.0.1/32 scram-sha-256
HBA
		server_reload "node$i"
	done

	# Step 6: the passwords the servers use to connect: the subscriptions'
	# (ledger_repl) and the proxy's (each client role), one line per node.
	progress "step 6: the password file ($PGPASS)"
	: >"$PGPASS"
	for i in $(seq 1 "$n"); do
		for role in "ledger_repl:$repl_pw" "shop:$shop_pw" "back_office:$office_pw"; do
			echo "127.0.0.1:$(node_port "$i"):$DB:$role" >>"$PGPASS"
		done
	done
	chown "$PGUSER_OS" "$PGPASS"
	chmod 600 "$PGPASS"

	# Step 7: each node subscribes to every other node's publication.  The
	# slot is made on the publishing node, named by default after the
	# subscription: nodes 1 and 2 would both ask node 3 for a slot
	# "ledger_from_3", so each slot is named for its pair of nodes.
	progress "step 7: CREATE SUBSCRIPTION on each node for every other node"
	for i in $(seq 1 "$n"); do
		for m in $(seq 1 "$n"); do
			[ "$m" = "$i" ] && continue
			node_admin "$i" <<SQL
CREATE SUBSCRIPTION ledger_from_$m
	CONNECTION '$(node_conninfo "$m") user=ledger_repl'
	PUBLICATION ledger_cluster WITH (slot_name = 'ledger_${m}_to_$i');
SQL
		done
	done

	# Step 8: the proxy, with the same map, its own login for each client
	# role (same password) and pg_hba.conf for the clients.  A group role
	# named as the nodes' lets pg_hba.conf name the clients as one.
	progress "step 8: the proxy: CREATE EXTENSION ledger_proxy CASCADE, the map, the roles"
	admin proxy "$BASE_PORT" postgres -c "CREATE DATABASE $DB"
	admin proxy "$BASE_PORT" "$DB" <<SQL
CREATE EXTENSION ledger_proxy CASCADE;
INSERT INTO ledger_proxy.nodes (node_id, conninfo) VALUES $nodes_sql;
INSERT INTO ledger_proxy.buckets (bucket, node_id) VALUES $BUCKETS_SQL;
CREATE ROLE ledger_client NOLOGIN;
CREATE ROLE shop LOGIN PASSWORD '$shop_pw' IN ROLE ledger_client;
CREATE ROLE back_office LOGIN PASSWORD '$office_pw' IN ROLE ledger_client;
SQL
	echo "host $DB +ledger_client 127.0.0.1/32 scram-sha-256" >>"$DIR/proxy/data/pg_hba.conf"
	server_reload proxy
	# the clients' own logins, to the proxy: this try-out's clients (psql
	# as root, below and in the lines printed) read the same file
	echo "127.0.0.1:$BASE_PORT:$DB:shop:$shop_pw" >>"$PGPASS"
	echo "127.0.0.1:$BASE_PORT:$DB:back_office:$office_pw" >>"$PGPASS"

	demo "$n"
	trap - EXIT
	connect_lines "$n"
}

# What is left of a start that failed stays for a look.
start_failed() {
	progress "start failed: the servers' logs are $DIR/*/server.log; scripts/cluster.sh stop stops them and removes $DIR"
}

# Accounts 1..2n opened and funded by back_office, a transfer between two
# nodes by shop, all through the proxy; the balances once the credit landed.
demo() {
	local n=$1 accounts=$(($1 * 2)) i id status
	progress "trying it: accounts 1-$accounts opened and funded (back_office), a transfer 1 -> 2 (shop), through the proxy"
	as_role back_office -c "SELECT count(ledger_open_account(a)) FROM generate_series(1, $accounts) a" >/dev/null
	# a node accepts a payee of another node once the directory row of
	# the payee's account has arrived by replication
	for i in $(seq 1 "$n"); do
		wait_until "the directory of node $i lists the $accounts accounts" \
			"[ \"\$(node_admin $i -c 'SELECT count(*) FROM ledger.directory')\" = $accounts ]"
	done
	as_role back_office -c "SELECT count(ledger_deposit(a, 10000)) FROM generate_series(1, $accounts) a" >/dev/null
	id=$(as_role shop -c "SELECT ledger_transfer(1, 2, 2500, 'try-1')")
	status=$(as_role shop -c "SELECT ledger_wait($id, 10000, until => 'credited')")
	progress "ledger_transfer(1, 2, 2500): event $id of node $((id >> 48)), ledger_wait(..., until => 'credited'): $status"
	# the payee's worker posts a credit in its next batch after it landed
	wait_until "the credit posted on account 2" \
		"[ \"\$(as_role shop -c 'SELECT ledger_balance(2)')\" = 12500 ]"
	as_role shop -P format=aligned -P tuples_only=off -P footer=off -c "
		SELECT a AS account, b.node_id AS node, ledger_balance(a) AS balance
		  FROM generate_series(1, $accounts) a
		  JOIN (VALUES $BUCKETS_SQL) b (bucket, node_id)
			ON b.bucket = a % (SELECT count(*) FROM (VALUES $BUCKETS_SQL) n)
		 ORDER BY a" >&2
}

# wait_until WHAT COMMAND: up to 30 s
wait_until() {
	local what=$1 check=$2
	for _ in $(seq 1 300); do
		eval "$check" && return 0
		sleep 0.1
	done
	die "timed out waiting: $what"
}

connect_lines() {
	local n=$1 i
	cat <<EOF

A ledger cluster is running in $DIR: a proxy and $n node(s).
Through the proxy, as a client (ledger_client) or an operator (ledger_operator):
  psql "host=127.0.0.1 port=$BASE_PORT dbname=$DB user=shop passfile=$PGPASS"
  psql "host=127.0.0.1 port=$BASE_PORT dbname=$DB user=back_office passfile=$PGPASS"
Each node, as its superuser:
EOF
	for i in $(seq 1 "$n"); do
		echo "  runuser -u $PGUSER_OS -- psql -h $DIR/node$i -p $(node_port "$i") -d $DB    # node $i"
	done
	cat <<EOF
The proxy, as its superuser:
  runuser -u $PGUSER_OS -- psql -h $DIR/proxy -p $BASE_PORT -d $DB
Then: scripts/cluster.sh status; scripts/cluster.sh stop
EOF
}

status() {
	local name port
	[ -e "$MARK" ] || die "no cluster in $DIR"
	for name in $(cd "$DIR" && ls -d node* 2>/dev/null | sort -V); do
		port=$(node_port "${name#node}")
		echo "== $name (port $port)"
		if ! as_pg pg_ctl -D "$DIR/$name/data" status >/dev/null 2>&1; then
			echo "not running"
			continue
		fi
		admin "$name" "$port" "$DB" -P format=aligned -P footer=off -P tuples_only=off -c "
			SELECT worker, state, events_applied, events_rejected, credits_applied, pending, lag
			  FROM ledger_stats ORDER BY worker" -c "
			SELECT * FROM ledger_node_totals()" -c "
			SELECT subname AS subscription, received_lsn, latest_end_time
			  FROM pg_stat_subscription WHERE relid IS NULL ORDER BY subname"
	done
}

stop() {
	local pid
	[ -d "$DIR" ] || return 0
	# remove only what start made
	[ -e "$MARK" ] || die "$DIR was not made by scripts/cluster.sh: not removing it"
	for pid in "$DIR"/*/data/postmaster.pid; do
		[ -f "$pid" ] || continue
		as_pg pg_ctl -D "$(dirname "$pid")" -m fast -w -t 60 stop >/dev/null ||
			as_pg pg_ctl -D "$(dirname "$pid")" -m immediate -w stop >/dev/null || true
	done
	rm -rf "$DIR"
	progress "stopped; $DIR removed"
}

case "${1:-}" in
start) start "${2:-2}" ;;
status) status ;;
stop) stop ;;
*)
	sed -n '2,/^source/p' "$TOP/scripts/cluster.sh" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
	;;
esac
