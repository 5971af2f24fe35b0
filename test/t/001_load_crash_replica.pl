# The ledger under a load of concurrent enqueuers, through everything that
# can happen to a server: settings reloaded, a worker terminated, a worker
# killed (crash recovery), the postmaster killed, an immediate shutdown in
# the middle of a large batch, and DROP EXTENSION / CREATE EXTENSION, with a
# streaming standby following the primary all along; at last the primary
# killed under load, and the standby, synchronous by then, promoted.
#
# The load is pgbench running a script that makes deposits, withdrawals,
# transfers within and across buckets (some with idempotency keys, some
# through ledger_transfer_many), disbursements, holds posted or voided, and
# transactions enqueueing two events.  After a call's transaction commits, the script appends the
# event ids it got to a file: those enqueues are acknowledged.  After each
# phase, once the queue has drained:
#  - every acknowledged event exists, applied or rejected, exactly once;
#  - no event has legs twice: one leg per account and event, and as many
#    legs as the event's kind needs (none if rejected);
#  - events that nobody acknowledged are only those whose commit was in
#    flight when the server crashed (at most two per client and crash);
#  - ledger_verify() finds nothing, all balances sum to zero, and no
#    account that may not go negative ever did.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use LedgerCrash;
use IPC::Run;
use Time::HiRes qw(usleep);

my $naccounts = 20;    # accounts 1 .. 20, both buckets; 20 may go negative
my $nclients  = 4;
my $tmp       = PostgreSQL::Test::Utils::tempdir;

# event id => 1, for every acknowledged enqueue of the current ledger
my %acked;
# how many events may exist unacknowledged: commits in flight at crashes
my $may_be_unacked = 0;

# the load: every kind of event, shared with the chaos runner
my $script = "$FindBin::RealBin/../lib/load.sql";

# Start pgbench in the background: $transactions per client, or until the
# server goes away.
sub start_load
{
	my ($node, $phase, $transactions) = @_;
	my $load = {
		ackfile => "$tmp/acks-$phase",
		log     => "$tmp/pgbench-$phase.log",
	};

	$load->{handle} = IPC::Run::start(
		[
			'pgbench', '-n',
			'-h', $node->host,
			'-p', $node->port,
			'-c', $nclients,
			'-j', 2,
			'-t', $transactions,
			'-f', $script,
			'-D', "accounts=$naccounts",
			'-D', "phase=$phase",
			'-D', "ackfile=$load->{ackfile}",
			'postgres'
		],
		'>', $load->{log}, '2>&1');
	return $load;
}

# Wait for pgbench to end; true if every client ran all its transactions.
sub finish_load
{
	my ($load) = @_;
	my $ok = eval { $load->{handle}->finish };

	note "pgbench:\n" . slurp_file($load->{log}) unless $ok;
	return $ok;
}

sub acknowledged_ids
{
	my ($load) = @_;

	return () unless -e $load->{ackfile};
	return grep { $_ ne '' } split(/\s+/, slurp_file($load->{ackfile}));
}

sub wait_for_acks
{
	my ($load, $count) = @_;

	for (my $i = 0; $i < 10 * $PostgreSQL::Test::Utils::timeout_default; $i++)
	{
		return if scalar(acknowledged_ids($load)) >= $count;
		usleep(100_000);
	}
	die "pgbench did not acknowledge $count enqueues:\n"
	  . slurp_file($load->{log});
}

# Remember the ids pgbench acknowledged; returns how many.
sub collect_acks
{
	my ($load) = @_;
	my @ids = acknowledged_ids($load);

	foreach my $id (@ids)
	{
		die "bad event id \"$id\" in $load->{ackfile}" unless $id =~ /^\d+$/;
		$acked{$id} = 1;
	}
	return scalar(@ids);
}

# Enqueue from SQL returning event ids separated by spaces: acknowledged once
# safe_psql returns.
sub enqueue_acked
{
	my ($node, $sql) = @_;

	$acked{$_} = 1 foreach (split(/\s+/, $node->safe_psql('postgres', $sql)));
	return;
}

sub open_and_fund_accounts
{
	my ($node) = @_;

	$node->safe_psql('postgres',
		"SELECT count(ledger_open_account(a, a = $naccounts))"
		  . " FROM generate_series(1, $naccounts) a");
	enqueue_acked($node,
		"SELECT string_agg(ledger_deposit(a, 2000)::text, ' ')"
		  . " FROM generate_series(1, $naccounts) a");
	return;
}

sub worker_query
{
	my ($worker) = @_;

	return "SELECT pid FROM pg_stat_activity"
	  . " WHERE backend_type = 'ledger bucket worker'"
	  . " AND application_name = 'ledger bucket worker $worker'";
}

sub wait_for_workers
{
	my ($node, $name) = @_;

	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity"
			  . " WHERE backend_type = 'ledger bucket worker'"
			  . " AND application_name LIKE 'ledger bucket worker _'",
			'2'),
		"$name: both bucket workers run");
	return;
}

# The checks every phase ends with: test/lib/audit.sql, and the count of
# events nobody acknowledged.
my $audit = slurp_file("$FindBin::RealBin/../lib/audit.sql");

sub check_ledger
{
	my ($node, $name) = @_;
	my $ids = join(',', sort { $a <=> $b } keys %acked);

	ok( $node->poll_query_until(
			'postgres', 'SELECT NOT EXISTS (SELECT 1 FROM ledger.queue)'),
		"$name: the queue drains");

	my $result = $node->safe_psql(
		'postgres', qq{
CREATE TEMP TABLE acked AS SELECT unnest('{$ids}'::bigint[]) AS id;
$audit
});
	is( $result, join("\n",
			'acknowledged events missing|0',
			'events recorded twice|0',
			'events neither applied nor rejected|0',
			'rejections for no known reason|0',
			'accounts with two legs of one event|0',
			'events with the wrong number of legs|0',
			'ledger_verify() problems|0',
			'sum of all balances|0',
			'overdrawn legs|0'),
		"$name: every acknowledged event settled once, the books balance");

	my ($events, $unacked) = split(
		/\|/,
		$node->safe_psql(
			'postgres', qq{
SELECT count(*), count(*) FILTER (WHERE NOT (id = ANY ('{$ids}'::bigint[])))
  FROM ledger.events}));
	note "$name: $events events, "
	  . scalar(keys %acked)
	  . " acknowledged, $unacked not acknowledged";
	cmp_ok($unacked, '<=', $may_be_unacked,
		"$name: unacknowledged events are at most the commits in flight at crashes"
	);
	return;
}

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'ledger'
ledger.database = 'postgres'
ledger.buckets = 2
ledger.poll_interval = '100ms'
ledger.breakpoint_interval = 50
restart_after_crash = on
max_connections = 40
shared_buffers = '32MB'
log_statement = 'none'
});
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION ledger');
open_and_fund_accounts($primary);
wait_for_workers($primary, 'start');

$primary->backup('backup');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->start;

my ($load, $log_offset);

# Settings changed and reloaded under load.
$load = start_load($primary, 1, 300);
wait_for_acks($load, 200);
$primary->safe_psql(
	'postgres', q{
ALTER SYSTEM SET ledger.batch_size = 3;
ALTER SYSTEM SET ledger.poll_interval = '5ms';
SELECT pg_reload_conf();
});
wait_for_acks($load, 500);
$primary->safe_psql(
	'postgres', q{
ALTER SYSTEM SET ledger.batch_size = 1000;
ALTER SYSTEM SET ledger.poll_interval = '2s';
SELECT pg_reload_conf();
});
ok(finish_load($load), 'reload: pgbench ran all its transactions');
collect_acks($load);
check_ledger($primary, 'reload');

# The new batch size takes effect: ten deposits committed together, five per
# bucket, are applied in batches of at most two.  Events of one batch share
# its transaction's timestamp.
$primary->safe_psql(
	'postgres', q{
ALTER SYSTEM SET ledger.batch_size = 2;
ALTER SYSTEM RESET ledger.poll_interval;
SELECT pg_reload_conf();
});
my $largest_batch;
for (my $try = 0; $try < 50; $try++)
{
	my $ids = $primary->safe_psql('postgres',
		'SELECT array_agg(ledger_deposit(a, 1)) FROM generate_series(1, 10) a');
	$acked{$_} = 1 foreach ($ids =~ /(\d+)/g);
	$largest_batch = $primary->safe_psql(
		'postgres', qq{
SELECT count(*) FILTER (WHERE ledger_wait(id, 60000) = 'pending') FROM unnest('$ids'::bigint[]) id;
SELECT max(n) FROM (SELECT count(*) AS n FROM ledger.events
					 WHERE id = ANY ('$ids'::bigint[]) GROUP BY applied_at) b});
	last if $largest_batch eq "0\n2";
}
is($largest_batch, "0\n2", 'reload: ledger.batch_size = 2 took effect');
$primary->safe_psql(
	'postgres', q{
ALTER SYSTEM RESET ledger.batch_size;
SELECT pg_reload_conf();
});

# SIGTERM of a bucket worker: it exits, and the postmaster starts it again
# after bgw_restart_time, without a crash.
$log_offset = -s $primary->logfile;
$load       = start_load($primary, 2, 300);
wait_for_acks($load, 200);
my $worker_pid = $primary->safe_psql('postgres', worker_query(0));
ok(kill('TERM', $worker_pid), 'sigterm: worker 0 signalled');
ok( $primary->poll_query_until(
		'postgres',
		'SELECT count(*) FROM (' . worker_query(0) . " AND pid <> $worker_pid) w",
		'1'),
	'sigterm: worker 0 comes back');
ok(finish_load($load), 'sigterm: pgbench ran all its transactions');
collect_acks($load);
check_ledger($primary, 'sigterm');
$primary->log_check(
	'sigterm', $log_offset,
	log_like =>
	  [qr/terminating background worker "ledger bucket worker" due to administrator command/],
	log_unlike => [qr/terminated by signal|reinitializing/]);

# kill -9 of a bucket worker: the postmaster reinitializes everything,
# killing the clients too; committed events survive and are applied once.
$log_offset = -s $primary->logfile;
$load       = start_load($primary, 3, 100000);
wait_for_acks($load, 200);
$worker_pid = $primary->safe_psql('postgres', worker_query(1));
ok(kill('KILL', $worker_pid), 'worker kill -9: worker 1 killed');
finish_load($load);
$may_be_unacked += 2 * $nclients;
ok($primary->poll_query_until('postgres', 'SELECT 1', '1'),
	'worker kill -9: the server is back');
$primary->log_check(
	'worker kill -9', $log_offset,
	log_like => [
		qr/background worker "ledger bucket worker" \(PID $worker_pid\) was terminated by signal 9/,
		qr/all server processes terminated; reinitializing/
	]);
wait_for_workers($primary, 'worker kill -9');
collect_acks($load);
check_ledger($primary, 'worker kill -9');

# kill -9 of the postmaster.
$load = start_load($primary, 4, 100000);
wait_for_acks($load, 200);
my @pids = server_pids($primary);
$primary->kill9;
finish_load($load);
$may_be_unacked += 2 * $nclients;
wait_for_exit(@pids);
$primary->start;
wait_for_workers($primary, 'postmaster kill -9');
collect_acks($load);
check_ledger($primary, 'postmaster kill -9');

# Immediate shutdown in the middle of a large batch: 40000 transfers (within
# and across buckets) and a disbursement to 1000 new accounts (its arrays are
# TOASTed) committed at once, under load, applied 100000 at a time.
$primary->safe_psql(
	'postgres', q{
ALTER SYSTEM SET ledger.batch_size = 100000;
SELECT pg_reload_conf();
});
$load = start_load($primary, 5, 100000);
wait_for_acks($load, 100);
my $big = $primary->safe_psql(
	'postgres', qq{
SELECT array_to_string(ledger_transfer_many(array_agg(1 + a % $naccounts),
											array_agg(1 + (a + 1 + a / 7 % 2) % $naccounts),
											array_agg(1::bigint)), ' ')
  FROM generate_series(1, 40000) a;
SELECT count(ledger_open_account(a)) FROM generate_series(1001, 2000) a;
SELECT ledger_disburse($naccounts, array_agg(a), array_agg(a::bigint))
  FROM generate_series(1001, 2000) a;
SELECT clock_timestamp();
});
my ($big_ids, $opened, $disbursement, $committed_at) = split(/\n/, $big);
$acked{$_} = 1 foreach (split(/ /, $big_ids), $disbursement);
# wait, looking every millisecond, until a worker applies a batch it started
# after the big commit: one that holds the big batch's events of its bucket
$primary->safe_psql(
	'postgres', qq{
DO \$\$
BEGIN
	FOR i IN 1 .. 60000 LOOP
		PERFORM pg_stat_clear_snapshot();
		EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity
						   WHERE backend_type = 'ledger bucket worker'
							 AND query LIKE 'applying a batch%'
							 AND query_start > '$committed_at');
		PERFORM pg_sleep(0.001);
	END LOOP;
END
\$\$});
$primary->stop('immediate');
finish_load($load);
$may_be_unacked += 2 * $nclients;
$primary->start;
note 'immediate shutdown: entries still queued at restart: '
  . $primary->safe_psql('postgres', 'SELECT count(*) FROM ledger.queue');
wait_for_workers($primary, 'immediate shutdown');
collect_acks($load);
check_ledger($primary, 'immediate shutdown');
$primary->safe_psql(
	'postgres', q{
ALTER SYSTEM RESET ledger.batch_size;
SELECT pg_reload_conf();
});

# The standby, which followed all of that, has the same books.
sub check_standby
{
	my ($name) = @_;
	my $books = q{
SELECT string_agg(id || '=' || ledger_balance(id), ' ' ORDER BY id) FROM ledger.accounts;
SELECT count(*), sum(amount), max(id) FROM ledger.transactions;
SELECT count(*), count(*) FILTER (WHERE status = 'a') FROM ledger.events;
SELECT count(*) FROM ledger.queue;
};

	$primary->wait_for_catchup($standby);
	my $expected = $primary->safe_psql('postgres', $books);
	is($standby->safe_psql('postgres', $books),
		$expected, "$name: the standby has the same balances, legs and events");
	is($standby->safe_psql('postgres', 'SELECT count(*) FROM ledger_verify()'),
		'0', "$name: ledger_verify() is clean on the standby");
	is( $standby->safe_psql(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'ledger bucket worker'"
		),
		'0',
		"$name: no bucket worker runs on the standby");
	return;
}
check_standby('standby');

# DROP EXTENSION while the workers run and clients enqueue: the clients fail
# (the functions are gone), nothing crashes, and after CREATE EXTENSION the
# workers apply the new ledger's events.
$log_offset = -s $primary->logfile;
$load       = start_load($primary, 6, 100000);
wait_for_acks($load, 200);
my ($drop_ok, $drop_stderr);
for (my $try = 0; $try < 5; $try++)
{
	my $ret = $primary->psql('postgres', 'DROP EXTENSION ledger',
		stderr => \$drop_stderr);
	$drop_ok = $ret == 0;
	last if $drop_ok;
	diag "DROP EXTENSION failed: $drop_stderr";
}
ok($drop_ok, 'drop: DROP EXTENSION succeeds under load');
ok(!finish_load($load), 'drop: the clients fail once the functions are gone');
$primary->safe_psql('postgres', 'CREATE EXTENSION ledger');
%acked          = ();
$may_be_unacked = 0;
open_and_fund_accounts($primary);
$load = start_load($primary, 7, 200);
ok(finish_load($load), 'create: pgbench ran all its transactions');
collect_acks($load);
check_ledger($primary, 'create');
$primary->log_check('drop and create', $log_offset,
	log_unlike => [qr/terminated by signal|reinitializing|PANIC/]);
wait_for_workers($primary, 'create');
check_standby('standby after create');

# Failover to a synchronous standby.  The primary acknowledges a commit
# only once the standby has flushed it, so nothing acknowledged is lost when
# the primary dies under load; the standby, promoted, starts the workers by
# itself (the log's transaction ids run on from the primary's) and the load
# goes on against it.
$primary->append_conf('postgresql.conf', "synchronous_standby_names = '*'");
$primary->reload;
ok( $primary->poll_query_until(
		'postgres', "SELECT sync_state FROM pg_stat_replication", 'sync'),
	'failover: the standby is synchronous');
$load = start_load($primary, 8, 100000);
wait_for_acks($load, 300);
@pids = server_pids($primary);
$primary->kill9;
finish_load($load);
$may_be_unacked += 2 * $nclients;
wait_for_exit(@pids);
collect_acks($load);
$standby->promote;
wait_for_workers($standby, 'failover');
$load = start_load($standby, 9, 200);
ok(finish_load($load), 'failover: pgbench ran all its transactions on the new primary');
collect_acks($load);
check_ledger($standby, 'failover');

$standby->stop;
done_testing();
