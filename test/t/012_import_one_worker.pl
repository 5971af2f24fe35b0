# An import whose buckets one worker serves (1.9).
#
# ledger_import() logs a transfer between buckets with its credit, in the
# payee's bucket (src/import.c).  A worker may serve more than one bucket:
# those left from a larger setting of ledger.buckets.  Then it owns payer
# and payee alike, and must still leave the payee's leg to the credit
# logged for it, or the payee would be paid twice.
#
# Accounts are opened with ledger.buckets = 2 (ids mod 2 give their
# buckets), the server is restarted with ledger.buckets = 1, so that one
# worker serves buckets 0 and 1, and a history is imported: deposits, a
# transfer from bucket 1 to bucket 0 and one back, a withdrawal that needs
# the first transfer, and a transfer beyond its payer's balance (rejected:
# its credit is dropped).  Checked: every event decided, as expected; each
# payee credited once, at the row's time; balances as of the times; the
# queue empty; ledger_verify() clean.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('import_one_worker');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'ledger'
ledger.database = 'postgres'
ledger.buckets = 2
ledger.poll_interval = '100ms'
});
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql('CREATE EXTENSION ledger');
is(sql('SELECT count(ledger_open_account(a)) FROM generate_series(1, 4) a'),
	'4', 'accounts 1-4 opened over two buckets');
is(sql(q{SELECT string_agg(id || ':' || bucket, ',' ORDER BY id) FROM ledger.accounts WHERE id > 0}),
	'1:1,2:0,3:1,4:0', 'ids mod 2 give the buckets');

$node->append_conf('postgresql.conf', 'ledger.buckets = 1');
$node->restart;
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'ledger bucket worker'",
		'1'),
	'one worker serves both buckets');

my ($first, $last) = split(
	/\|/,
	sql(q{
SELECT first_event || '|' || last_event FROM ledger_import(
	ARRAY['deposit', 'deposit', 'transfer', 'withdraw', 'transfer', 'transfer'],
	ARRAY[NULL, NULL, 1, 2, 2, 3]::bigint[],
	ARRAY[1, 4, 2, NULL, 3, 4]::bigint[],
	ARRAY[1000, 10, 300, 250, 20, 5000]::bigint[],
	ARRAY['2021-01-01', '2021-01-02', '2021-02-01', '2021-02-02', '2021-03-01',
		  '2021-03-02']::timestamptz[])}));
is( sql(qq{
SELECT string_agg(ledger_wait(id, 30000), ',' ORDER BY id) FROM ledger.event_log
 WHERE id BETWEEN $first AND $last AND credit_of IS NULL}),
	'applied,applied,applied,applied,applied,rejected',
	'every imported event is decided; the transfer beyond its balance is rejected');
is(sql('SELECT count(*) FROM ledger.queue'), '0', 'nothing is left queued');

is( sql(q{
SELECT string_agg(t.account_id || ':' || t.amount || '@' || to_char(t.created_at AT TIME ZONE 'UTC', 'MM-DD'),
				  ',' ORDER BY t.account_id, t.id)
  FROM ledger.transactions t WHERE t.account_id > 0}),
	'1:1000@01-01,1:-300@02-01,2:300@02-01,2:-250@02-02,2:-20@03-01,3:20@03-01,4:10@01-02',
	'each payee is credited once, at the time of its row');
is( sql(q{
SELECT ledger_balance(1) || ',' || ledger_balance(2) || ',' || ledger_balance(3) || ','
	   || ledger_balance(4) || ',' || ledger_balance(2, '2021-02-01 12:00')}),
	'700,30,20,10,300',
	'balances now and as of a time');
is(sql('SELECT count(*) FROM ledger_verify()'), '0', 'ledger_verify() finds nothing');

$node->stop;
done_testing();
