# pg_dump / pg_restore of a database using the ledger.
#
# A source server holds a ledger with a history: accounts (some that may go
# negative), deposits, transfers within and across buckets, disbursements,
# ledger_transfer_many, rejections for insufficient funds and for the supply
# bound, idempotency keys, breakpoints, a cross-bucket credit queued in the
# payee's bucket (its worker was paused), and events still pending: they
# were enqueued after the server was restarted with ledger.database pointing
# elsewhere, so nothing applies them.  The database is dumped with
# pg_dump -Fc and restored three times:
#  - into a database its workers do not serve: every table of the ledger,
#    the queue included, and both sequences are exactly the source's;
#    balances are equal and ledger_verify() is clean;
#  - in one transaction, into the database its workers serve
#    (ledger.database), while they run: the restored history is intact, the
#    pending events and the queued credit get applied, ledger_verify() stays
#    clean, and the ledger carries on: a new transfer is applied, an old
#    idempotency key still returns its old event and enqueues nothing, and
#    new ids continue above the old ones;
#  - in one transaction, into a physical copy of the source taken before
#    its ledger existed (the same cluster, but with fewer transaction ids
#    given out than the dump's batches saw): the workers take the ledger
#    over, the pending events are applied, and so is a new transfer.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $bigint_max = '9223372036854775807';
my $tmp        = PostgreSQL::Test::Utils::tempdir;
my $dumpfile   = "$tmp/shop.dump";

# The tables of the ledger and the order their rows are compared in.
my @tables = (
	[ 'accounts',     'id' ],
	[ 'events',       'id' ],
	[ 'transactions', 'account_id, id' ],
	[ 'breakpoints',  'account_id, last_txn_id' ],
	[ 'idempotency',  'key' ],
	[ 'queue',        'bucket, seq' ]);

sub new_node
{
	my ($name, $database, %params) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init(%params);
	$node->append_conf(
		'postgresql.conf', qq{
shared_preload_libraries = 'ledger'
ledger.database = '$database'
ledger.buckets = 2
ledger.poll_interval = '100ms'
ledger.breakpoint_interval = 3
});
	$node->start;
	return $node;
}

# Row count and md5 of a table's rows in order, optionally only some rows.
sub table_digest
{
	my ($node, $db, $table, $order, $where) = @_;

	$where = $where ? "WHERE $where" : '';
	return $node->safe_psql(
		$db, qq{
SET TIME ZONE 'UTC';
SELECT count(*) || ' rows, md5 '
	   || md5(COALESCE(string_agg(t::text, E'\\n' ORDER BY $order), ''))
  FROM ledger.$table t $where});
}

sub sequences
{
	my ($node, $db) = @_;

	return $node->safe_psql(
		$db, q{
SELECT 'event_id_seq', last_value, is_called FROM ledger.event_id_seq
UNION ALL
SELECT 'transaction_id_seq', last_value, is_called FROM ledger.transaction_id_seq});
}

sub balances
{
	my ($node, $db) = @_;

	return $node->safe_psql($db,
		"SELECT string_agg(id || '=' || ledger_balance(id), ' ' ORDER BY id) FROM ledger.accounts"
	);
}

# Wait until the queue's entries, in order, as kind and bucket, are these
# ('' when empty).
sub wait_for_queue
{
	my ($node, $db, $entries, $name) = @_;

	ok( $node->poll_query_until(
			$db,
			"SELECT COALESCE(string_agg(kind::text || bucket, ',' ORDER BY bucket, seq), '') FROM ledger.queue",
			$entries),
		$name);
	return;
}

# ledger_verify() is clean, and the balances sum to zero but for the money
# in flight: credits queued for their payees' buckets.
sub check_verify
{
	my ($node, $db, $in_flight, $name) = @_;

	is($node->safe_psql($db, 'SELECT * FROM ledger_verify()'),
		'', "$name: ledger_verify() finds nothing");
	is( $node->safe_psql(
			$db, q{
SELECT (SELECT COALESCE(sum(ledger_balance(id)), 0) FROM ledger.accounts),
	   (SELECT COALESCE(sum(amount), 0) FROM ledger.queue WHERE kind = 'c')}),
		-$in_flight . "|$in_flight",
		"$name: the balances sum to zero, but for $in_flight in flight");
	return;
}

# Balances as a hash, from the string balances() returns.
sub balance_hash
{
	my ($text) = @_;

	return map { split(/=/, $_, 2) } split(/ /, $text);
}

sub balance_string
{
	my (%balance) = @_;

	return join(' ', map { "$_=$balance{$_}" } sort { $a <=> $b } keys %balance);
}

### The source ledger.

my $source = new_node('source', 'shop', allows_streaming => 1);
# a physical copy of the cluster from before the ledger, for the last part
$source->backup('early');
# transaction ids the copy will not have given out when the dump is restored
$source->safe_psql('postgres',
	'DO $$ BEGIN FOR i IN 1 .. 300 LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$'
);
$source->safe_psql('postgres', 'CREATE DATABASE shop');
$source->safe_psql('shop', 'CREATE EXTENSION ledger');

# Accounts 1 .. 8 may not go negative, 9 and 10 may.  Odd accounts are in
# bucket 1, even ones in bucket 0.  Each step waits for the queue to drain,
# so that every outcome is known in advance.
$source->safe_psql(
	'shop', q{
SELECT count(ledger_open_account(a, a >= 9)) FROM generate_series(1, 10) a;
SELECT count(ledger_deposit(a, 10000, 'dep-' || a)) FROM generate_series(1, 6) a;
SELECT ledger_withdraw(9, 500);
});
wait_for_queue($source, 'shop', '', 'source: the deposits are applied');

$source->safe_psql(
	'shop', q{
SELECT ledger_transfer(1, 3, 1500, 't-1');
SELECT ledger_transfer(2, 3, 700);
SELECT ledger_transfer(4, 5, 250);
SELECT ledger_transfer(6, 4, 300);
SELECT ledger_disburse(2, '{4,5,6}', '{100,200,300}', 'disb-1');
SELECT ledger_transfer_many('{1,3,5}', '{2,4,6}', '{10,20,30}', '{tm-1,NULL,tm-3}');
SELECT ledger_withdraw(8, 1);
SELECT ledger_transfer(6, 1, 1000000);
SELECT ledger_disburse(5, '{1,2}', '{5000,6000}');
SELECT ledger_transfer(10, 1, 42);
SELECT count(ledger_transfer(1 + a % 2, 2 - a % 2, 5)) FROM generate_series(1, 12) a;
});
wait_for_queue($source, 'shop', '',
	'source: transfers, disbursements and rejections are applied');

# Deposits near the largest bigint pass the supply bound of bucket 1 and
# are rejected; a transfer to the account is not.
$source->safe_psql(
	'shop', qq{
SELECT ledger_withdraw(9, 1000000);
SELECT ledger_deposit(7, $bigint_max - 100);
SELECT ledger_deposit(9, $bigint_max);
SELECT ledger_transfer(3, 7, 200);
});
wait_for_queue($source, 'shop', '', 'source: the large deposits are decided');

is( $source->safe_psql(
		'shop', q{
SELECT string_agg(kind::text || ':' || status::text || ':' || COALESCE(reason, '-'), ' ' ORDER BY id)
  FROM ledger.events WHERE status = 'r'}),
	'w:r:insufficient_funds t:r:insufficient_funds s:r:insufficient_funds d:r:supply_limit d:r:supply_limit',
	'source: the expected events are rejected');

# A transfer from bucket 0 to account 7 while bucket 1 is paused: the debit
# is posted, the credit waits in bucket 1's queue.
$source->safe_psql('shop', 'SELECT ledger_pause(1)');
my $held = $source->safe_psql('shop', 'SELECT ledger_transfer(2, 7, 150)');
wait_for_queue($source, 'shop', 'c1',
	'source: the credit to account 7 waits in bucket 1');

# Events still pending at the dump: the workers now serve another database.
$source->append_conf('postgresql.conf', "ledger.database = 'postgres'");
$source->restart;
my @pending = split(
	/\n/,
	$source->safe_psql(
		'shop', q{
SELECT ledger_deposit(8, 5000, 'pend-1');
SELECT ledger_transfer(3, 4, 123);
SELECT ledger_disburse(5, '{1,6}', '{11,22}', 'pend-disb');
SELECT ledger_withdraw(1, 50);
SELECT (ledger_transfer_many('{6}', '{2}', '{7}'))[1];
}));
is( $source->safe_psql(
		'shop',
		"SELECT string_agg(ledger_event_status(id), ' ') FROM unnest('{$held,"
		  . join(',', @pending)
		  . "}'::bigint[]) id"),
	'pending pending pending pending pending pending',
	'source: the queued credit and the new events are pending');
check_verify($source, 'shop', 150, 'source');

my %source_digest =
  map { $_->[0] => table_digest($source, 'shop', $_->[0], $_->[1]) } @tables;
my $source_sequences = sequences($source, 'shop');
my $source_balances  = balances($source, 'shop');
my ($max_event, $max_leg, $max_key_event) = split(
	/\|/,
	$source->safe_psql(
		'shop', q{
SELECT (SELECT max(id) FROM ledger.events), (SELECT max(id) FROM ledger.transactions),
	   (SELECT event_id FROM ledger.idempotency WHERE key = 'dep-1')}));
cmp_ok($source->safe_psql('shop', 'SELECT count(*) FROM ledger.breakpoints'),
	'>', 0, 'source: the history has breakpoints');
note "source: $source_balances";

$source->command_ok([ 'pg_dump', '-Fc', '-d', 'shop', '-f', $dumpfile ],
	'pg_dump -Fc of the ledger database');
$source->stop;

### Restored where no worker applies anything: an exact copy.

my $target = new_node('target', 'restored');
$target->safe_psql('postgres', 'CREATE DATABASE staging');
$target->command_ok([ 'pg_restore', '-d', 'staging', $dumpfile ],
	'pg_restore into a database the workers do not serve');

foreach my $t (@tables)
{
	is(table_digest($target, 'staging', $t->[0], $t->[1]),
		$source_digest{ $t->[0] },
		"copy: ledger.$t->[0] has the source's rows");
}
is(sequences($target, 'staging'), $source_sequences,
	'copy: the sequences are where the source left them');
is(balances($target, 'staging'), $source_balances, 'copy: balances are equal');
check_verify($target, 'staging', 150, 'copy');
is($target->safe_psql('staging', "SELECT ledger_event_status($held)"),
	'pending', 'copy: the queued credit is still pending');

### Restored into the database the workers serve, while they run.

$target->safe_psql('postgres', 'CREATE DATABASE restored');
ok( $target->poll_query_until(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'ledger bucket worker' AND datname = 'restored'",
		'2'),
	'restored: both bucket workers are connected to the new database');
# In one transaction, so that the workers see the ledger whole or not at
# all.  A restore in several transactions (plain pg_restore commits each
# step; --section, -j) lets a worker see the extension before its data: it
# creates the external accounts the COPY of ledger.accounts then collides
# with, and applies queued events against a history not yet restored.
$target->command_ok(
	[ 'pg_restore', '--single-transaction', '-d', 'restored', $dumpfile ],
	'pg_restore into the database the workers serve');

# The workers apply the pending events and the queued credit.
wait_for_queue($target, 'restored', '',
	'restored: the pending events and the credit are applied');
is( $target->safe_psql(
		'restored',
		"SELECT string_agg(ledger_event_status(id), ' ') FROM unnest('{$held,"
		  . join(',', @pending)
		  . "}'::bigint[]) id"),
	'applied applied applied applied applied applied',
	'restored: every pending event was applied');

# The restored history is intact: the source's rows are all there, as they
# were; what the workers wrote since has higher ids.
my %restored_only = (
	events       => "id <= $max_event",
	transactions => "id <= $max_leg",
	breakpoints  => "last_txn_id <= $max_leg");
foreach my $t (@tables)
{
	next if $t->[0] eq 'queue';
	is( table_digest(
			$target, 'restored', $t->[0], $t->[1], $restored_only{ $t->[0] }),
		$source_digest{ $t->[0] },
		"restored: ledger.$t->[0] holds the source's rows unchanged");
}
is( $target->safe_psql(
		'restored', qq{
SELECT count(*) FILTER (WHERE e.id <= $max_event), count(*)
  FROM ledger.events e WHERE e.id = ANY ('{@{[ join(',', @pending) ]}}'::bigint[])}),
	'0|5',
	'restored: the pending events were recorded under their own ids');

my %expected = balance_hash($source_balances);
$expected{8} += 5000;
$expected{-1} -= 5000;
$expected{3}  -= 123;
$expected{4}  += 123;
$expected{5}  -= 33;
$expected{1}  += 11;
$expected{6}  += 22;
$expected{1}  -= 50;
$expected{-2} += 50;
$expected{6}  -= 7;
$expected{2}  += 7;
$expected{7}  += 150;
is(balances($target, 'restored'),
	balance_string(%expected),
	'restored: balances are the source\'s plus the pending events and the credit');
check_verify($target, 'restored', 0, 'restored');

# The restored ledger carries on.
my ($events_before, $queued_before) = split(
	/\|/,
	$target->safe_psql(
		'restored',
		'SELECT (SELECT count(*) FROM ledger.events), (SELECT count(*) FROM ledger.queue)'
	));
my ($again, $again_many) = split(
	/\n/,
	$target->safe_psql(
		'restored', q{
SELECT ledger_deposit(1, 10000, 'dep-1');
SELECT (ledger_transfer_many('{1}', '{2}', '{10}', '{tm-1}'))[1];
}));
is($again, $max_key_event,
	'restored: an old idempotency key returns its old event');
is( $target->safe_psql(
		'restored',
		"SELECT event_id FROM ledger.idempotency WHERE key = 'tm-1'"),
	$again_many,
	'restored: an old key in ledger_transfer_many returns its old event');
is( $target->safe_psql(
		'restored',
		'SELECT (SELECT count(*) FROM ledger.events), (SELECT count(*) FROM ledger.queue)'
	),
	"$events_before|$queued_before",
	'restored: an old idempotency key enqueues nothing');

my $new = $target->safe_psql('restored', 'SELECT ledger_transfer(1, 2, 5)');
is($target->safe_psql('restored', "SELECT ledger_wait($new, 60000)"),
	'applied', 'restored: a new transfer is applied');
cmp_ok($new, '>', $pending[-1],
	'restored: new event ids continue above the old ones');
is( $target->safe_psql(
		'restored',
		"SELECT min(id) > $max_leg FROM ledger.transactions WHERE event_id = $new"),
	't', 'restored: new leg ids continue above the old ones');
$expected{1} -= 5;
$expected{2} += 5;
is(balances($target, 'restored'),
	balance_string(%expected), 'restored: the transfer moved the money');
check_verify($target, 'restored', 0, 'restored, at the end');

$target->stop;

### Restored into an earlier physical copy of the source cluster itself.
# The same system identifier, but its transaction ids lag behind the ones
# the dump's batches saw: taken at their word, the pending events (and any
# event enqueued there) would stay out of every batch until the copy caught
# up.  The workers take the ledger over as one from another cluster.

my $copy = PostgreSQL::Test::Cluster->new('copy');
$copy->init_from_backup($source, 'early');
$copy->append_conf('postgresql.conf', "ledger.database = 'later'");
$copy->start;
$copy->safe_psql('postgres', 'CREATE DATABASE later');
ok( $copy->poll_query_until(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity"
		  . " WHERE backend_type = 'ledger bucket worker' AND datname = 'later'",
		'2'),
	'copy of before: both bucket workers are connected to the new database');
my $copy_xmax = $copy->safe_psql('later',
	'SELECT pg_snapshot_xmax(pg_current_snapshot())');
$copy->command_ok(
	[ 'pg_restore', '--single-transaction', '-d', 'later', $dumpfile ],
	'copy of before: pg_restore into the database the workers serve');
cmp_ok($copy->safe_psql('later', 'SELECT max(cur_xmax)::text::bigint FROM ledger.batches'),
	'>', $copy_xmax,
	'copy of before: the restored batches saw transaction ids the copy had not given out');
wait_for_queue($copy, 'later', '',
	'copy of before: the pending events and the credit are applied');
is( $copy->safe_psql(
		'later',
		"SELECT string_agg(ledger_event_status(id), ' ') FROM unnest('{$held,"
		  . join(',', @pending)
		  . "}'::bigint[]) id"),
	'applied applied applied applied applied applied',
	'copy of before: every pending event was applied');
ok( $copy->log_contains('taking over a ledger restored from another cluster'),
	'copy of before: the workers took the ledger over');
$new = $copy->safe_psql('later', 'SELECT ledger_transfer(1, 2, 5)');
is($copy->safe_psql('later', "SELECT ledger_wait($new, 60000)"),
	'applied', 'copy of before: a new transfer is applied');
is(balances($copy, 'later'), balance_string(%expected),
	'copy of before: balances are the source\'s plus the pending events and the transfers');
check_verify($copy, 'later', 0, 'copy of before');

$copy->stop;
done_testing();
