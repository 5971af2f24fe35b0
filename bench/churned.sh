#!/usr/bin/env bash
# Enqueue on a churned queue, build against build.  Each configuration in
# turn, ROUNDS times: a fresh durable server (2 buckets), 1,000,000 events
# loaded into the queue and drained by the workers, then pgbench runs of
# DURATION s of single-row INSERT (the baseline), ledger_transfer at 8 and 32
# clients, ledger_deposit at 32 and ledger_transfer_many (100 per call) at 8.
# Prints the median of each figure per configuration.  A checkpoint after
# the drain keeps its writes out of the figures.  Alternating the
# configurations spreads the machine's own drift over all of them.
#
#   bench/churned.sh [--rounds N] [--duration S] LABEL=PGBIN[,setting=value...] ...
#
# e.g., a build of 1.1 installed with DESTDIR=/opt/pgb11 against the
# installed one, with and without the spam guard:
#   bench/churned.sh 1.1=/opt/pgb11/usr/lib/postgresql/15/bin \
#       1.4=/usr/lib/postgresql/15/bin \
#       1.4+guard=/usr/lib/postgresql/15/bin,ledger.max_pending_per_account=10000
#
# Run as root on Debian 12, with the extension installed in each PGBIN's
# tree.  Writes bench/results/churned.txt.
source "$(dirname "$0")/../scripts/common.sh"

ROUNDS=3
DURATION=8
while [ $# -gt 0 ]; do
	case $1 in
		--rounds) ROUNDS=$2; shift 2 ;;
		--duration) DURATION=$2; shift 2 ;;
		*) break ;;
	esac
done
[ $# -ge 1 ] || { sed -n '2,19p' "$0" >&2; exit 2; }

ACCOUNTS=10000
EVENTS=1000000
DIR=${LEDGER_CHURNED_DIR:-/tmp/ledger-churned}
PORT=${LEDGER_CHURNED_PORT:-55690}
WL=$TOP/bench/workloads
OUT=$TOP/bench/results/churned.txt
RAW=$(mktemp)
progress() { printf '[churned %s] %s\n' "$(date +%T)" "$*" >&2; }

cleanup() {
	stop_server "$DIR"
	rm -f "$RAW"
	return 0
}
trap cleanup EXIT

# pgbench WORKLOAD CLIENTS [extra options...]: transactions per second
bench() {
	as_pg "$PGBIN/pgbench" -h "$DIR" -p "$PORT" -U postgres -n -M prepared \
		-c "$2" -j 2 -T "$DURATION" -D naccounts=$ACCOUNTS -D buckets=2 \
		"${@:3}" -f "$WL/$1.sql" postgres 2>&1 |
		awk '/^tps/ { printf "%.0f", $3 }'
}

measure() {
	local label=$1 settings=() conf
	IFS=, read -r -a conf <<<"$2"
	PGBIN=${conf[0]}
	PATH="$PGBIN:$PATH"
	for s in "${conf[@]:1}"; do settings+=("$s"); done
	start_server "$DIR" "$PORT" "fsync = on" "synchronous_commit = on" \
		"shared_buffers = 1GB" "max_wal_size = 4GB" "ledger.buckets = 2" \
		"max_connections = 200" "${settings[@]}"
	local q=(as_pg "$PGBIN/psql" -h "$DIR" -p "$PORT" -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1)
	"${q[@]}" -v naccounts=$ACCOUNTS -f "$TOP/bench/setup.sql" >/dev/null
	"${q[@]}" -v mix=uniform -v n=$EVENTS -v naccounts=$ACCOUNTS \
		-f "$TOP/bench/apply_load.sql" >/dev/null
	for _ in $(seq 1 600); do
		[ "$("${q[@]}" -c 'SELECT count(*) FROM ledger.queue')" = 0 ] && break
		sleep 1
	done
	# the drain's dirty pages written now, not during the first figures
	"${q[@]}" -c "CHECKPOINT"
	progress "$label: $EVENTS events drained"
	{
		printf '%s\tINSERT, 32 clients\t%s\n' "$label" "$(bench insert 32)"
		printf '%s\tledger_transfer, 8 clients\t%s\n' "$label" "$(bench transfer 8)"
		printf '%s\tledger_transfer, 32 clients\t%s\n' "$label" "$(bench transfer 32)"
		printf '%s\tledger_deposit, 32 clients\t%s\n' "$label" "$(bench deposit 32)"
		printf '%s\tledger_transfer_many, 8 clients (transfers)\t%s\n' "$label" \
			"$(($(bench transfer_many 8 -D batch=100) * 100))"
	} | tee -a "$RAW" >&2
	stop_server "$DIR"
}

for round in $(seq 1 "$ROUNDS"); do
	for config in "$@"; do
		progress "round $round of $ROUNDS: ${config%%=*}"
		measure "${config%%=*}" "${config#*=}"
	done
done

mkdir -p "$(dirname "$OUT")"
{
	echo "enqueue on a queue just drained of $EVENTS events: median of $ROUNDS runs of $DURATION s, per second"
	echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
	awk -F'\t' '
		{ key = $2 SUBSEP $1; v[key] = v[key] " " $3
		  if (!($2 in seen)) { seen[$2] = 1; rows[++nrows] = $2 }
		  if (!($1 in cseen)) { cseen[$1] = 1; cols[++ncols] = $1 } }
		function median(list,   a, n, i, j, t) {
			n = split(list, a, " ")
			for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
				if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
			return a[int((n + 1) / 2)]
		}
		END {
			printf "%-45s", "figure"
			for (c = 1; c <= ncols; c++) printf "  %12s", cols[c]
			printf "\n"
			for (r = 1; r <= nrows; r++) {
				printf "%-45s", rows[r]
				for (c = 1; c <= ncols; c++) printf "  %12s", median(v[rows[r] SUBSEP cols[c]])
				printf "\n"
			}
		}' "$RAW"
} | tee "$OUT"
