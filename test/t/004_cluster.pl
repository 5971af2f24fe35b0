# A ledger over two nodes behind a proxy: three servers on one machine.
#
# Node 1 owns the cluster's buckets 0 and 1 (account ids 0 and 1 mod 4),
# node 2 buckets 2 and 3; each node has two workers, both given accounts.
# The proxy database routes the API with ledger_proxy (PL/Proxy); the nodes
# carry credits to each other with logical replication.  pgbench drives
# transfers, disbursements, deposits, batches and holds (posted or voided)
# through the proxy, half of them across nodes, while each node in turn is
# killed with SIGKILL and restarted.  Every call whose answer reached the
# client appended its event ids to a file: those are
# acknowledged.  Once all queues are empty and every credit sent has been
# confirmed:
#  - every acknowledged event exists on its node (the top bits of its id),
#    once, applied or rejected;
#  - no account has two legs from one event, on either node, and each
#    applied event has all its legs: a transfer or a post two, a
#    disbursement three, a hold or a void none;
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
my $buckets_sql = "VALUES (0, 1), (1, 1), (2, 2), (3, 2)";

# A map under which a worker of a node gets no account is refused: node 1
# with buckets 0 and 2 of 4 would send every account to its worker 0.
$nodes[0]->safe_psql('postgres', qq(
CREATE EXTENSION ledger;
INSERT INTO ledger.cluster_nodes $nodes_sql;
INSERT INTO ledger.cluster_buckets VALUES (0, 1), (1, 2), (2, 1), (3, 2);
));
my ($rc, $out, $refused) = $nodes[0]->psql('postgres', 'SELECT ledger_cluster_init()');
like($refused, qr/the node map leaves workers \{1\} of node 1 without accounts/,
	'ledger_cluster_init() refuses a map that idles a worker');

# Made by hand all the same, such a map shows in ledger_stats, and in the
# log once, until it is mended.
wait_for(sub {
	$nodes[0]->safe_psql('postgres',
		"SELECT string_agg(worker || ':' || state, ',' ORDER BY worker) FROM ledger_stats")
	  eq '0:idle,1:serving no bucket of the node map';
}, 'ledger_stats shows the worker the map leaves idle');
sleep 3;
my $warnings = () = slurp_file($nodes[0]->logfile)
  =~ /ledger worker 1 serves no bucket of the node map/g;
is($warnings, 1, 'the log says so once');
$nodes[0]->safe_psql('postgres', qq(
TRUNCATE ledger.cluster_buckets;
INSERT INTO ledger.cluster_buckets $buckets_sql;
SELECT ledger_cluster_init();
));
wait_for(sub {
	$nodes[0]->safe_psql('postgres',
		"SELECT string_agg(worker || ':' || state, ',' ORDER BY worker) FROM ledger_stats")
	  eq '0:idle,1:idle';
}, 'a mended map puts the worker back to work');
like(slurp_file($nodes[0]->logfile),
	qr/ledger worker 1 serves buckets of the node map again/, 'and the log says so');

for my $node ($nodes[1])
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
	join(',', grep { $_ % 4 < 2 } 1 .. $naccounts),
	'node 1 holds the accounts of buckets 0 and 1');
is( $nodes[1]->safe_psql('postgres',
		"SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger.accounts WHERE id > 0"),
	join(',', grep { $_ % 4 >= 2 } 1 .. $naccounts),
	'node 2 holds the accounts of buckets 2 and 3');
my ($err) = ($nodes[0]->psql('postgres', 'SELECT ledger_open_account(1002)'))[2];
like($err, qr/belongs to node 2/, 'a node refuses an account of another node');

# each node sees the other's accounts in its directory
wait_for(sub {
	all_nodes("SELECT count(*) FROM ledger.directory") eq "$naccounts,$naccounts";
}, 'the directory reaches both nodes');

my @funding = split /\n/, $proxy->safe_psql('postgres',
	"SELECT ledger_deposit(a, 1000000) FROM generate_series(1, $naccounts) a");
my %acked = map { $_ => 1 } @funding;

is($proxy->safe_psql('postgres', "SELECT ledger_deposit(2, 1) >> 48"),
	'2', 'event ids carry their node');

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
\set op random(1, 12)
\if :op <= 5
SELECT ledger_transfer(:p, :q, :a, 'load-' || :phase || '-' || :key) AS ids \gset
\elif :op <= 7
SELECT ledger_disburse(:p, ARRAY[:q, :r]::bigint[], ARRAY[:a, :b]::bigint[]) AS ids \gset
\elif :op <= 8
SELECT ledger_deposit(:p, :a) AS ids \gset
\elif :op <= 10
SELECT array_to_string(ledger_transfer_many(ARRAY[:p, :q]::bigint[], ARRAY[:q, :r]::bigint[], ARRAY[:a, :b]::bigint[]), ' ') AS ids \gset
\elif :op <= 11
SELECT ledger_hold(:p, :q, :a) AS h \gset
SELECT :h || ' ' || ledger_post(:h) AS ids \gset
\else
SELECT ledger_hold(:p, :q, :a) AS h \gset
SELECT :h || ' ' || ledger_void(:h) AS ids \gset
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

wait_for(\&quiet, 'every queue drains and every credit sent is confirmed');
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
		my $want =
			($status eq 'r' || $kind eq 'h' || $kind eq 'v') ? 0
		  : $kind eq 's' ? 3
		  : 2;
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

# ------------------------------------- external accounts and the money

# every node numbers its own external accounts: -1 is a different account
# on each, and the proxy says so rather than answer for one of them
($rc, $out, $err) = $proxy->psql('postgres', 'SELECT ledger_balance(-1)');
like($err, qr/account -1 cannot be reached through the proxy/,
	'the proxy refuses an external account');
($rc, $out, $err) = $proxy->psql('postgres', 'SELECT ledger_history(0)');
like($err, qr/account 0 cannot be reached through the proxy/,
	'and any id up to zero');

# what the cluster's money adds up to, as a client of the ledger reads it
for my $server (@nodes, $proxy)
{
	$server->safe_psql('postgres', 'CREATE ROLE regress_reader LOGIN');
}
all_nodes('GRANT ledger_client TO regress_reader');
wait_for(\&quiet, 'the retried transfer is applied and credited');
my $legs_sql = "SELECT coalesce(sum(amount) FILTER (WHERE account_id < 0), 0)
					 || ',' || coalesce(sum(amount) FILTER (WHERE account_id > 0), 0)
				  FROM ledger.transactions";
my ($ext1, $cust1) = split /,/, $nodes[0]->safe_psql('postgres', $legs_sql);
my ($ext2, $cust2) = split /,/, $nodes[1]->safe_psql('postgres', $legs_sql);
is( $proxy->safe_psql('postgres',
		'SELECT currency, external, customers, in_flight FROM ledger_cluster_money()',
		extra_params => [ '-U', 'regress_reader' ]),
	'XXX|' . ($ext1 + $ext2) . '|' . ($cust1 + $cust2) . '|0',
	'ledger_cluster_money(): the external and the customers\' money of both nodes');
cmp_ok($ext1 + $ext2, '<', 0, 'money came in from outside');
is($ext1 + $ext2 + $cust1 + $cust2, 0, 'and the customers hold all of it');

# --------------------------------------------- waiting for a credit to land

# node 2 stops receiving from node 1: a transfer from 1 (node 1) to 2
# (node 2) is applied on the payer's node, and not credited until it does
$nodes[1]->safe_psql('postgres', 'ALTER SUBSCRIPTION ledger_from_1 DISABLE');
my $x = $proxy->safe_psql('postgres', 'SELECT ledger_transfer(1, 2, 7)',
	extra_params => [ '-U', 'regress_reader' ]);
like($x, qr/^\d+$/, 'a client of the ledger transfers through the proxy');
is($proxy->safe_psql('postgres', "SELECT ledger_wait($x, 30000)"),
	'applied', 'a cross-node transfer is applied on the payer\'s node');
is($proxy->safe_psql('postgres', "SELECT ledger_wait($x, 300, 'credited')"),
	'applied', 'and not credited while the payee\'s node cannot receive it');
is($nodes[1]->safe_psql('postgres',
		"SELECT count(*) FROM ledger.event_log WHERE credit_of = $x"),
	'0', 'the payee\'s node has not got it');
$nodes[1]->safe_psql('postgres', 'ALTER SUBSCRIPTION ledger_from_1 ENABLE');
is( $proxy->safe_psql('postgres',
		"SELECT ledger_wait($x, 60000, until => 'credited')",
		extra_params => [ '-U', 'regress_reader' ]),
	'credited', 'ledger_wait(until => credited) returns once the credit landed');
is($nodes[1]->safe_psql('postgres',
		"SELECT count(*) FROM ledger.event_log WHERE credit_of = $x"),
	'1', 'the payee\'s node holds the credit, once');
is($proxy->safe_psql('postgres', "SELECT ledger_event_status($x)"),
	'applied', 'the event\'s status is still applied');

# ----------------------------------- the audit of many received credits

# 3,000 transfers from node 2's accounts to node 1's: node 1 receives
# 3,000 credits.  Its audit reads the legs a bounded number of times over,
# not once per credit received (a scan per credit made it quadratic).
my $received_sql = 'SELECT count(*) FROM ledger.transit WHERE target_node = 1 AND source_node = 2';
my $received = $nodes[0]->safe_psql('postgres', $received_sql);
$proxy->safe_psql('postgres', q{
SELECT ledger_transfer_many(array_agg(2 + 4 * (i % 4)::bigint),
							array_agg(1 + 4 * (i % 4)::bigint), array_agg(1::bigint))
  FROM generate_series(1, 3000) i});
wait_for(sub {
	$nodes[0]->safe_psql('postgres', $received_sql) == $received + 3000
	  && $nodes[0]->safe_psql('postgres', 'SELECT count(*) FROM ledger.queue') eq '0';
}, 'node 1 has received and applied 3,000 credits');
my $nlegs = $nodes[0]->safe_psql('postgres', 'SELECT count(*) FROM ledger.transactions');
my ($problems, $read) = split /\|/, $nodes[0]->safe_psql('postgres', q{
BEGIN;
SELECT count(*) FROM ledger_verify() \gset
SELECT :count, seq_tup_read + coalesce(idx_tup_fetch, 0)
  FROM pg_stat_xact_user_tables WHERE relid = 'ledger.transactions'::regclass;
COMMIT;});
is($problems, '0', 'ledger_verify() on node 1 finds nothing');
cmp_ok($read, '<=', 20 * $nlegs,
	"its audit read the $nlegs legs a bounded number of times ($read rows)");

done_testing();

# ---------------------------------------------------------------- helpers

# Quiet: no queue entries, no credit sent and unconfirmed, on both nodes.
sub quiet
{
	return all_nodes("SELECT (SELECT count(*) FROM ledger.queue)
							 + (SELECT count(*) FROM ledger.transit t
								 WHERE t.source_node = ledger.node_id()
								   AND NOT EXISTS (SELECT FROM ledger.transit_acks a
													WHERE a.source_node = t.source_node
													  AND a.id = t.id))")
	  eq '0,0';
}

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

