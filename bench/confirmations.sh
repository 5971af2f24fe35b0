#!/usr/bin/env bash
# What a confirmation of a cross-node credit costs the paying node (its
# replication apply worker runs ledger.move_acked()), beside 1.3's form of
# the same function, on a node that keeps 200,000 credits it received (a
# node keeps every credit it received in ledger.transit, for good).  500
# confirmations each, twice, alternating.  Run as root with the extension
# installed.
#
#   bench/confirmations.sh
source "$(dirname "$0")/../scripts/common.sh"
D=${LEDGER_BENCH_DIR:-/tmp/ledger-bench-confirmations}; start_server $D 55765; trap "stop_server $D" EXIT
q() { as_pg psql -h $D -p 55765 -U postgres -d postgres -X -q -At -v ON_ERROR_STOP=1 "$@"; }
q -c "CREATE EXTENSION ledger"
q <<'SQL'
CREATE FUNCTION ledger.move_acked_13() RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS
$$
	WITH moved AS (
		DELETE FROM ledger.transit t USING ledger.transit_acks a
		 WHERE t.source_node = a.source_node AND t.id = a.id
		RETURNING t.*
	), kept AS (
		INSERT INTO ledger.transit_acked
		SELECT m.source_node, m.id, m.target_node, m.event_id, m.payer, m.currency,
			   m.to_accounts, m.amounts, m.amount, m.created_at, pg_catalog.now()
		  FROM moved m
		RETURNING source_node, id
	), done AS (
		DELETE FROM ledger.transit_acks a USING kept k
		 WHERE a.source_node = k.source_node AND a.id = k.id
		RETURNING 1
	)
	SELECT count(*) FROM done
$$;
-- 200,000 credits received from node 2, kept for good
INSERT INTO ledger.transit SELECT 2, i, 1, i, 2, 'XXX', '{1}', '{1}', 1, now() FROM generate_series(1, 200000) i;
ANALYZE ledger.transit;
SQL
for f in move_acked_13 move_acked move_acked_13 move_acked; do
q <<SQL
\timing on
DO \$\$
DECLARE t0 timestamptz := clock_timestamp(); base bigint := (SELECT coalesce(max(id), 0) FROM ledger.transit_acked);
BEGIN
  FOR i IN 1 .. 500 LOOP
    INSERT INTO ledger.transit VALUES (1, base + i, 2, base + i, 1, 'XXX', '{2}', '{1}', 1, now());
    INSERT INTO ledger.transit_acks VALUES (1, base + i);
    PERFORM ledger.$f();
  END LOOP;
  RAISE NOTICE '$f: % ms per confirmation', round(extract(epoch FROM clock_timestamp() - t0) * 1000 / 500, 3);
END
\$\$;
SQL
done
