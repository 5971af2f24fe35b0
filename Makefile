# ledger: PGXS build
MODULE_big = ledger
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c))
EXTENSION = ledger
DATA = ledger--1.0.sql
PG_CPPFLAGS = -Iinclude
PG_CFLAGS = -Werror -Wall -Wmissing-prototypes

REGRESS = api errors apply buckets breakpoints verify
REGRESS_OPTS = --inputdir=test --outputdir=test \
	--temp-config=test/ledger.conf --temp-instance=test/tmp_check \
	--dbname=ledger_regress

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
