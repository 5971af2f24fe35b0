# ledger: PGXS build
MODULE_big = ledger
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c))
EXTENSION = ledger
DATA = ledger--1.0.sql ledger--1.0--1.1.sql
PG_CPPFLAGS = -Iinclude
PG_CFLAGS = -Werror -Wall -Wmissing-prototypes

# Every suite starts its own server with test/ledger.conf (pg_regress and
# isolation) or its own clusters (TAP); none needs a running server.
override CONTRIB_TESTDB = ledger_regress
override ISOLATION_TESTDB = ledger_regress

REGRESS = upgrade api errors rejections buckets breakpoints verify security operations
REGRESS_OPTS = --inputdir=test --outputdir=test \
	--temp-config=test/ledger.conf --temp-instance=test/tmp_check

ISOLATION = idempotency_race out_of_order_commit rollback_enqueue \
	drain_one_account consistent_reads
ISOLATION_OPTS = --inputdir=test --outputdir=output_iso \
	--temp-config=test/ledger.conf --temp-instance=test/tmp_check_iso

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# One target per suite, so that scripts/test.sh can run and report each.
.PHONY: installcheck-regress installcheck-isolation installcheck-tap
installcheck-regress:
	$(pg_regress_installcheck) $(REGRESS_OPTS) $(REGRESS)
installcheck-isolation:
	$(pg_isolation_regress_installcheck) $(ISOLATION_OPTS) $(ISOLATION)
installcheck-tap:
	$(prove_installcheck)
