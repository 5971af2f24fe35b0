# A ledger over two nodes behind a proxy: three servers on one machine.
#
# Node 1 owns the cluster's buckets 0 and 2 (even account ids), node 2
# buckets 1 and 3 (odd ids).  The proxy database routes the API with
# ledger_proxy (PL/Proxy); the nodes carry credits to each other with
# logical replication.  pgbench drives transfers, disbursements, deposits
# and batches through the proxy, half of them across nodes, while each node
# in turn is killed with SIGKILL and restarted.  Every call whose answer
# reached the client appended its event ids to a file: those are
# acknowledged.  Once all queues are empty and every credit sent has been
# confirmed:
#  - every acknowledged event exists on its node (the top bits of its id),
#    once, applied or rejected;
#  - no account has two legs from one event, on either node, and each
#    applied event has all its legs: a transfer two, a disbursement three;
#  - every credit sent was received once, and confirmed;
#  - ledger_verify() on each node and ledger_verify_cluster() on the proxy
#    find nothing, and the balances of both nodes sum to zero;
#  - an idempotency key retried through the proxy after the crashes names
#    the same event.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use LedgerCrash;

my $naccounts = 16;
my $nclients  = 4;
my $tmp       = PostgreSQL::Test::Utils::tempdir;

my @nodes;
for my $n (1, 2)
{
	my $node = PostgreSQL::Test::Cluster->new("node$n");
	$node->init(allows_streaming => 'logical');
	$node->append_conf('postgresql.conf', qq(
shared_preload_libraries = 'ledger'
ledger.database = 'postgres'
ledger.buckets = 2
ledger.poll_interval = 100ms
ledger.node_id = $n
max_worker_processes = 16
max_replication_slots = 8
max_wal_senders = 8
wal_retrieve_retry_interval = 200ms
));
	$node->start;
	push @nodes, $node;
}
my $proxy = PostgreSQL::Test::Cluster->new('proxy');
$proxy->init;
$proxy->start;

# The node map, the same everywhere.
my @conninfo =
  map { 'host=' . $_->host . ' port=' . $_->port . ' dbname=postgres' } @nodes;
my $nodes_sql =
  "VALUES (1, '$conninfo[0]'), (2, '$conninfo[1]')";
my $buckets_sql = "VALUES (0, 1), (1, 2), (2, 1), (3, 2)";

for my $node (@nodes)
{
	$node->safe_psql('postgres', qq(
CREATE EXTENSION ledger;
INSERT INTO ledger.cluster_nodes $nodes_sql;
INSERT INTO ledger.cluster_buckets $buckets_sql;
SELECT ledger_cluster_init();
));
}
for my $i (0, 1)
{
	my $other = 1 - $i;
	$nodes[$i]->safe_psql('postgres',
		"CREATE SUBSCRIPTION ledger_from_"
		  . ($other + 1)
		  . " CONNECTION '$conninfo[$other]' PUBLICATION ledger_cluster");
}
$proxy->safe_psql('postgres', qq(
CREATE EXTENSION ledger_proxy CASCADE;
INSERT INTO ledger_proxy.nodes $nodes_sql;
INSERT INTO ledger_proxy.buckets $buckets_sql;
));

# Accounts through the proxy, each on the node of its bucket; funded.
$proxy->safe_psql('postgres',
	"SELECT count(ledger_open_account(a)) FROM generate_series(1, $naccounts) a");
is( $nodes[0]->safe_psql('postgres',
		"SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger.accounts WHERE id > 0"),
	join(',', grep { $_ % 2 == 0 } 1 .. $naccounts),
	'node 1 holds the even accounts');
is( $nodes[1]->safe_psql('postgres',
		"SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger.accounts WHERE id > 0"),
	join(',', grep { $_ % 2 == 1 } 1 .. $naccounts),
	'node 2 holds the odd accounts');
my ($err) = ($nodes[0]->psql('postgres', 'SELECT ledger_open_account(1001)'))[2];
like($err, qr/belongs to node 2/, 'a node refuses an account of another node');

# each node sees the other's accounts in its directory
wait_for(sub {
	all_nodes("SELECT count(*) FROM ledger.directory") eq "$naccounts,$naccounts";
}, 'the directory reaches both nodes');

my @funding = split /\n/, $proxy->safe_psql('postgres',
	"SELECT ledger_deposit(a, 1000000) FROM generate_series(1, $naccounts) a");
my %acked = map { $_ => 1 } @funding;

is($proxy->safe_psql('postgres', "SELECT ledger_deposit(2, 1) >> 48"),
	'1', 'event ids carry their node');

# --------------------------------------------------------------- the load

my $script = "$tmp/load.sql";
append_to_file($script, <<'EOS');
\set p random(1, :accounts)
\set k random(0, :accounts - 3)
\set q 1 + (:p + :k) % :accounts
\set r 1 + (:p + :k + 1) % :accounts
\set a random(1, 500)
\set b random(1, 500)
\set key random(1, 1000000000)
\set op random(1, 10)
\if :op <= 5
SELECT ledger_transfer(:p, :q, :a, 'load-' || :phase || '-' || :key) AS ids \gset
\elif :op <= 7
SELECT ledger_disburse(:p, ARRAY[:q, :r]::bigint[], ARRAY[:a, :b]::bigint[]) AS ids \gset
\elif :op <= 8
SELECT ledger_deposit(:p, :a) AS ids \gset
\else
SELECT array_to_string(ledger_transfer_many(ARRAY[:p, :q]::bigint[], ARRAY[:q, :r]::bigint[], ARRAY[:a, :b]::bigint[]), ' ') AS ids \gset
\endif
\shell echo :ids >> :ackfile
EOS

my $ackfile = "$tmp/acked.txt";
append_to_file($ackfile, '');

sub start_load
{
	my ($phase, $transactions) = @_;
	my @cmd = (
		'pgbench', '-n', '-c', $nclients, '-j', 2, '-t', $transactions,
		'-f', $script, '-D', "accounts=$naccounts", '-D', "phase=$phase",
		'-D', "ackfile=$ackfile",
		'-h', $proxy->host, '-p', $proxy->port, 'postgres');
	my ($out, $errout) = ('', '');
	my $h = IPC::Run::start(\@cmd, '>', \$out, '2>', \$errout);
	return { h => $h, out => \$out, err => \$errout };
}

sub finish_load
{
	my ($load) = @_;
	# clients cut off by a killed node stop early: that is expected
	$load->{h}->finish;
}

# one phase per node killed, and a last one with no fault
for my $victim (0, 1, undef)
{
	my $phase = defined $victim ? $victim + 1 : 9;
	my $load = start_load($phase, 400);
	if (defined $victim)
	{
		sleep 2;
		my @pids = server_pids($nodes[$victim]);
		$nodes[$victim]->kill9;
		wait_for_exit(@pids);
		$nodes[$victim]->start;
	}
	finish_load($load);
	note "phase $phase: " . ${ $load->{out} } =~ s/\n/ /gr;
}

# ------------------------------------------------------------ the checks

for my $id (split /\s+/, slurp_file($ackfile))
{
	$acked{$id} = 1 if $id =~ /^\d+$/;
}
cmp_ok(scalar(keys %acked), '>', 500, 'the load was acknowledged many events');

# quiet: no queue entries, no credit sent and unconfirmed, on both nodes
wait_for(sub {
	all_nodes("SELECT (SELECT count(*) FROM ledger.queue)
					  + (SELECT count(*) FROM ledger.transit t
						  WHERE t.source_node = ledger.node_id()
							AND NOT EXISTS (SELECT FROM ledger.transit_acks a
											 WHERE a.source_node = t.source_node
											   AND a.id = t.id))")
	  eq '0,0';
}, 'every queue drains and every credit sent is confirmed');
# confirmations that arrived before their rows were visible are kept, and
# their rows moved by the next confirmation; move the last ones now
all_nodes("SELECT ledger.move_acked()");

my %found;
my $twice = 0;
for my $i (0, 1)
{
	for my $row (split /\n/, $nodes[$i]->safe_psql('postgres',
		"SELECT id, count(*) OVER (PARTITION BY id) FROM ledger.events"))
	{
		my ($id, $n) = split /\|/, $row;
		$twice++ if $n != 1;
		$found{$id} = $i + 1;
	}
}
is($twice, 0, 'no event was recorded twice');
my @missing = grep { !exists $found{$_} } keys %acked;
is(scalar(@missing), 0, 'every acknowledged event exists')
  or diag("missing: @missing[0 .. ($#missing < 9 ? $#missing : 9)]");
my @misplaced = grep { exists $found{$_} && $found{$_} != ($_ >> 48) } keys %acked;
is(scalar(@misplaced), 0, 'every event is on the node its id names');

# legs, over both nodes: one per account and event, and as many as needed
my %legs;
for my $node (@nodes)
{
	for my $row (split /\n/, $node->safe_psql('postgres',
		"SELECT event_id, account_id, count(*) FROM ledger.transactions GROUP BY 1, 2"))
	{
		my ($event, $account, $n) = split /\|/, $row;
		$legs{$event}{$account} += $n;
	}
}
my $double_legs = 0;
for my $event (keys %legs)
{
	$double_legs += grep { $_ != 1 } values %{ $legs{$event} };
}
is($double_legs, 0, 'no account has two legs from one event');

my $short = 0;
for my $i (0, 1)
{
	for my $row (split /\n/, $nodes[$i]->safe_psql('postgres',
		"SELECT id, kind, status FROM ledger.events"))
	{
		my ($id, $kind, $status) = split /\|/, $row;
		my $want = $status eq 'r' ? 0 : $kind eq 's' ? 3 : 2;
		my $have = exists $legs{$id} ? scalar(keys %{ $legs{$id} }) : 0;
		$short++ if $have != $want;
	}
}
is($short, 0, 'every applied event has all its legs, on whichever node');

for my $i (0, 1)
{
	my $j = 1 - $i;
	my $from = $i + 1;
	my $sent = $nodes[$i]->safe_psql('postgres',
		"SELECT count(*), coalesce(sum(amount), 0) FROM ledger.transit_acked");
	my $received = $nodes[$j]->safe_psql('postgres',
		"SELECT count(*), coalesce(sum(amount), 0) FROM ledger.transit
		  WHERE source_node = $from");
	is($received, $sent, "every credit node $from sent was received once, and confirmed");
}

is( all_nodes("SELECT count(*) FROM ledger_verify()"),
	'0,0', 'ledger_verify() finds nothing on either node');
is($proxy->safe_psql('postgres', "SELECT count(*) FROM ledger_verify_cluster()"),
	'0', 'ledger_verify_cluster() finds nothing');
is($proxy->safe_psql('postgres',
		"SELECT sum(legs) FROM ledger_cluster_totals()"),
	'0', 'the balances of both nodes sum to zero');

my $id1 = $proxy->safe_psql('postgres', "SELECT ledger_transfer(3, 4, 5, 'retry-me')");
$nodes[1]->restart;
my $id2 = $proxy->safe_psql('postgres', "SELECT ledger_transfer(3, 4, 5, 'retry-me')");
is($id2, $id1, 'a retry through the proxy with the same key names the same event');

done_testing();

# ---------------------------------------------------------------- helpers

# The results of a query on both nodes, joined by commas.
sub all_nodes
{
	my ($sql) = @_;
	return join(',', map { $_->safe_psql('postgres', $sql) } @nodes);
}

sub wait_for
{
	my ($check, $what) = @_;
	for (1 .. 600)
	{
		if ($check->())
		{
			pass($what);
			return;
		}
		usleep(100_000);
	}
	fail($what);
}

