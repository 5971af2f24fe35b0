# No wake-up is lost (1.6).
#
# A committing enqueuer wakes the worker of its bucket by setting its
# latch.  But a worker that waits for a lock inside a batch sleeps on that
# same latch, and the lock manager resets it: a wake-up that comes then is
# gone.  And a worker reading a delta over several batches keeps the
# snapshot of its first, so its later batches cannot see what a wake-up
# announced.  So the workers count wake-ups, and look again before sleeping
# when the count moved during a pass, and always after a delta read over
# several batches.  Were either missing, an event would wait for the next
# poll: ten minutes here, so it shows as an event still pending after 60 s.
#
# Each round makes a wake-up come while the worker waits for a lock: a
# session holds ledger.transactions in SHARE mode, the worker blocks on the
# legs of a batch, a deposit commits (and wakes it), then the lock is let
# go.  Round 1: the blocked batch is the only one of its delta (the count
# must tell).  Round 2: it is the first of a delta of twenty batches (the
# look after the delta must tell).  Each time the deposit is applied.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('wakeups');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'ledger'
ledger.database = 'postgres'
ledger.buckets = 1
ledger.batch_size = 100
ledger.poll_interval = '10min'
});
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION ledger;
SELECT count(ledger_open_account(a)) FROM generate_series(1, 100) a;
});
my $funding = $node->safe_psql('postgres', 'SELECT ledger_deposit(1, 1000000)');
is($node->safe_psql('postgres', "SELECT ledger_wait($funding, 60000)"),
	'applied', 'a deposit is applied');

my %rounds = (1 => 10, 2 => 2000);
for my $round (1, 2)
{
	my $transfers = $rounds{$round};

	my $locker = $node->background_psql('postgres');
	$locker->query_safe(
		'BEGIN; LOCK TABLE ledger.transactions IN SHARE MODE;');

	# a delta of one batch, or of twenty, whose first batch blocks
	my $last = $node->safe_psql(
		'postgres', qq{
SELECT max(id) FROM unnest(ledger_transfer_many(
	array_fill(1::bigint, ARRAY[$transfers]),
	array(SELECT 2 + n % 99 FROM generate_series(1, $transfers) n),
	array_fill(1::bigint, ARRAY[$transfers]))) id});
	ok( $node->poll_query_until(
			'postgres', q{
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE a.backend_type = 'ledger bucket worker' AND NOT l.granted}, '1'),
		"round $round: the worker waits for the lock in its batch");

	# the wake-up comes while it waits
	my $deposit = $node->safe_psql('postgres', 'SELECT ledger_deposit(2, 7)');
	sleep 1;
	$locker->query_safe('COMMIT');
	$locker->quit;

	is($node->safe_psql('postgres', "SELECT ledger_wait($last, 60000)"),
		'applied', "round $round: the $transfers transfers are applied");
	is($node->safe_psql('postgres', "SELECT ledger_wait($deposit, 60000)"),
		'applied', "round $round: the deposit that woke the worker is applied");
}

is($node->safe_psql('postgres', 'SELECT count(*) FROM ledger_verify()'),
	'0', 'ledger_verify() finds nothing');

$node->stop;
done_testing();
