# A transaction left open does not slow the workers down (1.6).
#
# A worker reads its bucket's new events by snapshot, as PgQ does: the
# events of the transactions that committed between its previous batch's
# snapshot and its current one's.  A transaction that stays open, holding an
# id, is in progress in every one of those snapshots.  Were the worker to
# read the log from the oldest transaction in progress (the snapshot's
# xmin), every batch would read again all that committed since that
# transaction began.  It reads from the previous snapshot's xmax instead,
# and probes for each transaction then in progress by itself.
#
# Here a client opens a transaction, enqueues a transfer in it and leaves it
# open, while another enqueues 40 rounds of 50 transfers, each round in its
# own transaction and waited for.  Checked:
#  (a) every round applies while the transaction stays open;
#  (b) the worker's reads of the log's batch index (idx_tup_read of
#      ledger.event_log_batch_idx) stay under twice the events it applied:
#      reading again from the open transaction on would read some 41,000
#      entries for these 2,000 events;
#  (c) the open transaction's own transfer applies once it commits, after
#      all the rounds, and the balances are what the transfers say;
#  (d) after a history of 20,000 transfers enqueued in one transaction and
#      an ANALYZE that counts two transactions in the log, the worker still reads only what is new,
#      also of the transactions it probes for: each round, another session
#      has a transfer in progress across a batch, committed after it.  The
#      log's indexes, all of them, are read less than twice per event
#      applied.  A planned query would read the log by whichever index the
#      statistics favour, and these say an equality on txid is half the
#      table: 1.6's first cut then read the whole history by id per probe.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $rounds = 40;
my $per_round = 50;
my $events = $rounds * $per_round;

my $node = PostgreSQL::Test::Cluster->new('open');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'ledger'
ledger.database = 'postgres'
ledger.buckets = 1
ledger.batch_size = 50
ledger.poll_interval = '100ms'
});
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION ledger;
SELECT ledger_open_account(1), ledger_open_account(2);
SELECT ledger_wait(ledger_deposit(1, 1000000), 30000);
SELECT ledger_wait(ledger_deposit(2, 1000), 30000);
});

# the transaction left open, with an event of its own
my $open = $node->background_psql('postgres');
my $held = $open->query_safe(
	"BEGIN; SELECT ledger_transfer(2, 1, 7);");
like($held, qr/^\d+$/, 'the open transaction enqueued a transfer');

my $reads_before = $node->safe_psql('postgres', q{
SELECT idx_tup_read FROM pg_stat_user_indexes
 WHERE indexrelname = 'event_log_batch_idx'});

my $applied = 0;
for my $round (1 .. $rounds)
{
	my $status = $node->safe_psql(
		'postgres', qq{
CREATE TEMP TABLE ids AS
SELECT ledger_transfer(1, 2, 1) AS id FROM generate_series(1, $per_round);
SELECT ledger_wait(max(id), 30000) FROM ids;
});
	$applied++ if $status eq 'applied';
}
is($applied, $rounds, "(a) all $rounds rounds applied while a transaction stayed open");
is( $node->safe_psql(
		'postgres', "SELECT count(*) FROM ledger.transactions WHERE event_id = $held"),
	'0', '(a) the open transaction\'s transfer is not applied before it commits');

# The worker reports its statistics at most once a second, when idle.
my $reads;
ok( $node->poll_query_until(
		'postgres', qq{
SELECT idx_tup_read - $reads_before >= $events
  FROM pg_stat_user_indexes WHERE indexrelname = 'event_log_batch_idx'}),
	'the worker\'s reads of the batch index are reported');
sleep 2;
$reads = $node->safe_psql('postgres', qq{
SELECT idx_tup_read - $reads_before FROM pg_stat_user_indexes
 WHERE indexrelname = 'event_log_batch_idx'});
note "batch index entries read for $events events: $reads";
cmp_ok($reads, '<', 2 * $events,
	'(b) the batches did not read again what committed since the open transaction began');

$open->query_safe('COMMIT');
$open->quit;
is($node->safe_psql('postgres', "SELECT ledger_wait($held, 30000)"),
	'applied', '(c) the open transaction\'s transfer applies once it commits');
is( $node->safe_psql(
		'postgres', 'SELECT ledger_balance(1), ledger_balance(2)'),
	(1000000 - $events + 7) . '|' . (1000 + $events - 7),
	'(c) the balances are what the transfers say');

$node->safe_psql(
	'postgres', q{
CREATE TEMP TABLE ids AS
SELECT ledger_transfer(1, 2, 1) AS id FROM generate_series(1, 20000);
SELECT ledger_wait(max(id), 60000) FROM ids;
});
# Two transactions of a million, as a history loaded in bulk, would give
# ANALYZE the same figure.
$node->safe_psql('postgres', q{
ALTER TABLE ledger.event_log ALTER COLUMN txid SET (n_distinct = 2);
ANALYZE ledger.event_log});
my $log_reads = q{
SELECT sum(idx_tup_read) FROM pg_stat_user_indexes
 WHERE relname = 'event_log' AND schemaname = 'ledger'};
sleep 2;
$reads_before = $node->safe_psql('postgres', $log_reads);
my $side = $node->background_psql('postgres');
for my $round (1 .. $rounds)
{
	$side->query_safe('BEGIN; SELECT ledger_transfer(2, 1, 1)');
	$node->safe_psql(
		'postgres', qq{
CREATE TEMP TABLE ids AS
SELECT ledger_transfer(2, 1, 1) AS id FROM generate_series(1, $per_round);
SELECT ledger_wait(max(id), 30000) FROM ids;
});
	$side->query_safe('COMMIT');
}
$side->quit;
my $more = $rounds * ($per_round + 1);
is( $node->safe_psql(
		'postgres', qq{
SELECT ledger_wait(max(id), 30000) FROM ledger.event_log WHERE kind = 't'}),
	'applied', '(d) every round applied');
ok( $node->poll_query_until(
		'postgres', "SELECT ($log_reads) - $reads_before >= $more"),
	'the worker\'s reads of the log are reported');
sleep 2;
$reads = $node->safe_psql('postgres', "SELECT ($log_reads) - $reads_before");
note "log index entries read for $more events after a bulk history: $reads";
cmp_ok($reads, '<', 2 * $more,
	'(d) after a bulk history and ANALYZE, the batches read only what is new');
is( $node->safe_psql(
		'postgres', 'SELECT ledger_balance(1), ledger_balance(2)'),
	(1000000 - $events + 7 - 20000 + $more) . '|' . (1000 + $events - 7 + 20000 - $more),
	'(d) the balances are what the transfers say');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ledger_verify()'),
	'0', 'ledger_verify() finds nothing');

$node->stop;
done_testing();
