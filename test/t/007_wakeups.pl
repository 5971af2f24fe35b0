# No wake-up is lost between the bucket workers (1.6).
#
# A worker reads a large delta over several batches, all under the snapshot
# of the first.  Credits the other bucket's worker logs for it meanwhile
# wake it up, but that batch's snapshot cannot see them; nor can a latch
# tell it, since a lock wait inside a batch resets the latch it was set on.
# So the worker must look again, with a fresh snapshot, after a delta read
# over several batches, and before sleeping whenever it was woken during a
# pass.  Otherwise the credits wait for the next poll.
#
# Here the poll interval is ten minutes, so a lost wake-up shows as an event
# still pending a minute later.  Three rounds, each one transaction of
# 10,000 transfers with batches of 100: four in five from one account of
# bucket 1 to payees of both buckets, one in five from accounts of bucket 0
# to payees of bucket 1.  So bucket 0's worker logs its credits for bucket 1
# early, while bucket 1's reads its long delta.  After each round, every
# transfer is applied (ledger_wait(), 60 s) and so is every credit (the
# queue empty within the test timeout, three minutes by default), and at the
# end the balances add up and ledger_verify() finds nothing.
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
ledger.buckets = 2
ledger.batch_size = 100
ledger.poll_interval = '10min'
});
$node->start;

my $transfers = 10000;

# accounts 1 .. 200: odd ones in bucket 1, even ones in bucket 0
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION ledger;
SELECT count(ledger_open_account(a)) FROM generate_series(1, 200) a;
SELECT count(ledger_deposit(a, 1000000)) FROM generate_series(1, 200) a;
});
is( $node->safe_psql(
		'postgres',
		'SELECT ledger_wait(max(event_id), 60000) FROM ledger.transactions'),
	'applied',
	'the deposits are applied');

for my $round (1 .. 3)
{
	my $last = $node->safe_psql(
		'postgres', qq{
SELECT max(id) FROM (
	SELECT unnest(ledger_transfer_many(array_agg(payer), array_agg(payee),
									   array_agg(1::bigint))) AS id
	  FROM (SELECT n,
				   CASE WHEN n % 5 = 0 THEN 2 * (1 + n % 100) ELSE 1 END AS payer,
				   CASE WHEN n % 5 = 0 THEN 2 * ((n * 7 + $round) % 100) + 1
						ELSE 2 + (n * 7 + $round) % 199 END AS payee
			  FROM generate_series(1, $transfers) n) p
	 GROUP BY n / 100) t});
	is($node->safe_psql('postgres', "SELECT ledger_wait($last, 60000)"),
		'applied', "round $round: the last transfer is applied");
	ok( $node->poll_query_until(
			'postgres', 'SELECT count(*) FROM ledger.queue', '0'),
		"round $round: every credit is posted, long before the next poll");
}

is( $node->safe_psql(
		'postgres',
		'SELECT sum(ledger_balance(id)) FROM ledger.accounts WHERE id > 0'),
	200 * 1000000, 'the transfers moved money, and made none');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ledger_verify()'),
	'0', 'ledger_verify() finds nothing');

$node->stop;
done_testing();
