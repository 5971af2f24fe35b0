#!/usr/bin/env bash
# Run every test suite of the ledger extension on this machine: installs the
# build dependencies, builds the extension's Debian package and installs it,
# then runs the suites, each against servers it starts itself.  The suites
# run against the installed package, so they test it too.
# Run as root on Debian 12.
source "$(dirname "$0")/common.sh"

build_dependencies
build_and_install_package
export LEDGER_INSTALLED=1
give_tree_to_postgres

passed=0
failed=0
failures=()

suite() {
	local name=$1
	shift
	log "suite: $name"
	if "$@"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		failures+=("$name")
		return 1
	fi
}

show_diffs() {
	for f in "$TOP"/test/regression.diffs "$TOP"/output_iso/regression.diffs; do
		[ -s "$f" ] && { echo "--- $f"; head -200 "$f"; }
	done
	return 1
}

suite "pg_regress" as_pg make -C "$TOP" -s installcheck-regress || show_diffs || true
suite "bench (quick)" bash "$TOP/bench/run.sh" --quick || true
suite "cluster bench (quick)" bash "$TOP/bench/cluster.sh" --quick || true
suite "cluster setup" bash "$TOP/test/cluster-setup/run.sh" || true
suite "faults: disk full" bash "$TOP/test/faults/disk_full.sh" || true
suite "faults: partition" bash "$TOP/test/faults/partition.sh" || true
suite "chaos (seed 347, 60 s)" bash "$TOP/test/chaos/run.sh" --seed 347 --seconds 60 || true
suite "http" bash "$TOP/test/http/run.sh" || true
suite "import (100k)" bash "$TOP/bench/import.sh" --events 100000 || true
suite "exporter" bash "$TOP/test/exporter/run.sh" || true
suite "isolation" as_pg make -C "$TOP" -s installcheck-isolation || show_diffs || true
suite "tap" as_pg make -C "$TOP" -s installcheck-tap || true

echo
echo "suites: ${passed} passed, ${failed} failed${failures:+ (${failures[*]})}"
[ "$failed" -eq 0 ]
