# ledger: PGXS build
MODULE_big = ledger
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c))
EXTENSION = ledger ledger_proxy
DATA = ledger--1.0.sql ledger--1.0--1.1.sql ledger--1.1--1.2.sql \
	ledger--1.2--1.3.sql ledger--1.3--1.4.sql ledger--1.4--1.5.sql ledger--1.5--1.6.sql ledger--1.6--1.7.sql \
	ledger--1.7--1.8.sql ledger--1.8--1.9.sql \
	ledger_proxy--1.0.sql ledger_proxy--1.0--1.1.sql ledger_proxy--1.1--1.2.sql
# the library's version is the extension's default one
LEDGER_VERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" ledger.control)
PG_CPPFLAGS = -Iinclude -DLEDGER_VERSION='"$(LEDGER_VERSION)"'
PG_CFLAGS = -Werror -Wall -Wmissing-prototypes

# Every suite starts its own server with test/ledger.conf (pg_regress and
# isolation) or its own clusters (TAP); none needs a running server.
override CONTRIB_TESTDB = ledger_regress
override ISOLATION_TESTDB = ledger_regress

REGRESS = upgrade api errors rejections buckets breakpoints verify security trust operations \
	holds limits currencies metadata asof import chain closing linked
REGRESS_OPTS = --inputdir=test --outputdir=test \
	--temp-config=test/ledger.conf --temp-instance=test/tmp_check

ISOLATION = idempotency_race out_of_order_commit rollback_enqueue \
	drain_one_account consistent_reads hold_races_debits post_races_expiry \
	guard_concurrent order_in_transaction linked_races_debits linked_second_payer_short close_races_transfer
ISOLATION_OPTS = --inputdir=test --outputdir=output_iso \
	--temp-config=test/ledger.conf --temp-instance=test/tmp_check_iso

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

$(OBJS): $(wildcard include/*.h)
# the library's version is compiled in (LEDGER_VERSION)
src/schema.o src/schema.bc src/worker.o src/worker.bc: ledger.control

# One target per suite, so that scripts/test.sh can run and report each.
.PHONY: installcheck-regress installcheck-isolation installcheck-tap
installcheck-regress:
	$(pg_regress_installcheck) $(REGRESS_OPTS) $(REGRESS)
installcheck-isolation:
	$(pg_isolation_regress_installcheck) $(ISOLATION_OPTS) $(ISOLATION)
installcheck-tap:
	$(prove_installcheck)

# A Debian package of the extension: make deb, then dpkg -i the file it names.
DEB_VERSION = $(LEDGER_VERSION)-1
DEB_ARCH = $(shell dpkg --print-architecture)
DEB_FILE = postgresql-15-ledger_$(DEB_VERSION)_$(DEB_ARCH).deb
.PHONY: deb
deb: all
	rm -rf build/deb
	$(MAKE) install DESTDIR=$(CURDIR)/build/deb
	mkdir -p build/deb/DEBIAN build/deb/usr/share/doc/postgresql-15-ledger
	cp README.md build/deb/usr/share/doc/postgresql-15-ledger/
	printf '%s\n' \
		'Package: postgresql-15-ledger' \
		'Version: $(DEB_VERSION)' \
		'Architecture: $(DEB_ARCH)' \
		'Maintainer: The ledger developers <ledger@localhost>' \
		'Depends: postgresql-15, postgresql-15-plproxy' \
		'Section: database' \
		'Priority: optional' \
		'Description: high-throughput money ledger for PostgreSQL 15' \
		' Events enqueued with plain SQL, applied in batches by per-bucket' \
		' background workers into immutable double-entry legs.' \
		> build/deb/DEBIAN/control
	dpkg-deb --root-owner-group --build build/deb build/$(DEB_FILE)
	@echo "built build/$(DEB_FILE)"
