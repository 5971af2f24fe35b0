# Linked transfers (1.9) through a crash between the buckets' decisions:
# nothing half applied.
#
# A linked group's transfers are decided by their payers' buckets, each in
# two steps (src/linked.c): it votes (checks its payer and sets the amount
# aside, a row of ledger.linked_votes), then, once every transfer of the
# group has voted, pays, or, once one was rejected, gives the amount back
# and rejects.  The server is killed between those steps, with pauses
# (ledger_pause) holding one bucket back:
#
#  1. bucket 1 paused; groups spanning buckets 0 and 1 (some that can be
#     paid, one whose bucket-1 payer is short), and one group of bucket 0
#     alone; bucket 0 votes for all its transfers (their amounts set aside:
#     ledger_available() drops, no leg is posted); kill -9 of the
#     postmaster.  After the restart the pause is gone (a pause lasts until
#     the server restarts) and bucket 1 decides.
#  2. bucket 1 paused, groups enqueued, bucket 0 votes; then bucket 0
#     paused and bucket 1 resumed: bucket 1 votes, and, the last to vote,
#     pays at once, or rejects its short payer's transfer; bucket 0 has
#     neither paid nor given back its amounts; an immediate shutdown.
#     After the restart bucket 0 settles.
#
# After each restart, once every transfer is decided: each group is applied
# as a whole or rejected as a whole, the one that was expected; the legs are
# exactly those of the applied transfers; the rejected transfers have the
# reasons (the short payer's insufficient_funds, the others "linked_rejected
# (element N: insufficient_funds)"); ledger_available() equals
# ledger_balance() for every account (nothing left set aside); the balances
# are those the applied transfers give; and ledger_verify() finds nothing.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use LedgerCrash;

my $node = PostgreSQL::Test::Cluster->new('linked_crash');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'ledger'
ledger.database = 'postgres'
ledger.buckets = 2
ledger.poll_interval = '100ms'
restart_after_crash = on
log_line_prefix = '%m [%p] '
});
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub wait_for_workers
{
	my ($name) = @_;

	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity"
			  . " WHERE backend_type = 'ledger bucket worker'",
			'2'),
		"$name: both bucket workers run");
	return;
}

# Each group: [payer, payee, amount] per transfer, and whether it is to be
# applied; with the ids it got once enqueued.
sub enqueue_groups
{
	my (@groups) = @_;

	foreach my $g (@groups)
	{
		my @t = @{ $g->{transfers} };
		my $from = join(',', map { $_->[0] } @t);
		my $to   = join(',', map { $_->[1] } @t);
		my $amt  = join(',', map { $_->[2] } @t);
		$g->{id} = sql(
			"SELECT ledger_transfer_linked('{$from}', '{$to}', '{$amt}', 'g-$g->{name}')");
		$g->{elements} = [
			split(/\n/,
				sql("SELECT id FROM ledger.event_log WHERE link_of = $g->{id} ORDER BY id"))
		];
		is(scalar(@{ $g->{elements} }), scalar(@t),
			"group $g->{name}: one event per transfer");
	}
	return;
}

# The elements of the groups whose payer is in the bucket.
sub elements_of_bucket
{
	my ($bucket, @groups) = @_;
	my @ids;

	foreach my $g (@groups)
	{
		my $i = 0;
		foreach my $t (@{ $g->{transfers} })
		{
			push @ids, $g->{elements}[$i] if $t->[0] % 2 == $bucket;
			$i++;
		}
	}
	return @ids;
}

sub id_list { return join(',', @_) || 'NULL'; }

# Wait until each of the events has voted or was rejected.
sub wait_voted
{
	my ($name, @ids) = @_;
	my $ids = id_list(@ids);

	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) = " . scalar(@ids) . " FROM unnest('{$ids}'::bigint[]) x(id)"
			  . " WHERE EXISTS (SELECT FROM ledger.linked_votes v WHERE v.event_id = x.id)"
			  . "    OR EXISTS (SELECT FROM ledger.outcomes o WHERE o.event_id = x.id"
			  . "                AND o.status = 'r')"),
		$name);
	return;
}

# The accounts' balances in Perl: the deposits and the applied groups.
my %balance;

sub check_groups
{
	my ($name, @groups) = @_;
	my @all = map { @{ $_->{elements} } } @groups;
	my $all = id_list(@all);

	is( sql(
			"SELECT count(*) FROM unnest('{$all}'::bigint[]) x(id)"
			  . " WHERE ledger_wait(x.id, 60000) = 'pending'"),
		'0',
		"$name: every transfer of the groups is decided");

	foreach my $g (@groups)
	{
		my $want = $g->{applied} ? 'applied' : 'rejected';
		my $ids  = id_list(@{ $g->{elements} });

		is( sql(
				"SELECT string_agg(DISTINCT ledger_event_status(x.id), ',')"
				  . " FROM unnest('{$ids}'::bigint[]) x(id)"),
			$want,
			"$name: group $g->{name} is $want as a whole");

		# the legs are exactly those of the applied transfers
		my @want_legs;
		if ($g->{applied})
		{
			my $i = 0;
			foreach my $t (@{ $g->{transfers} })
			{
				my $e = $g->{elements}[$i++];
				push @want_legs, "$e|$t->[0]|-$t->[2]", "$e|$t->[1]|$t->[2]";
				$balance{ $t->[0] } -= $t->[2];
				$balance{ $t->[1] } += $t->[2];
			}
		}
		is( sql(
				"SELECT string_agg(event_id || '|' || account_id || '|' || amount, ' '"
				  . "                   ORDER BY event_id, amount, account_id)"
				  . " FROM ledger.transactions WHERE event_id = ANY ('{$ids}')"),
			join(' ',
				sort {
					my @x = split(/\|/, $a);
					my @y = split(/\|/, $b);
					$x[0] <=> $y[0] || $x[2] <=> $y[2] || $x[1] <=> $y[1]
				} @want_legs),
			"$name: group $g->{name}: the legs of its applied transfers, once each");

		next if $g->{applied};
		my @reasons;
		my $n = 1;
		foreach my $t (@{ $g->{transfers} })
		{
			push @reasons,
			  $n == $g->{short}
			  ? 'insufficient_funds'
			  : "linked_rejected (element $g->{short}: insufficient_funds)";
			$n++;
		}
		is( sql(
				"SELECT string_agg(x.reason, ' / ' ORDER BY e.id)"
				  . " FROM unnest('{$ids}'::bigint[]) e(id), ledger_event(e.id) x"),
			join(' / ', @reasons),
			"$name: group $g->{name}: the reasons of its rejected transfers");
	}

	my @accounts = sort { $a <=> $b } keys %balance;
	my $accts = id_list(@accounts);
	is( sql(
			"SELECT string_agg(a || ':' || ledger_balance(a), ' ' ORDER BY a)"
			  . " FROM unnest('{$accts}'::bigint[]) a"),
		join(' ', map { "$_:$balance{$_}" } @accounts),
		"$name: the balances are those the applied transfers give");
	is( sql(
			"SELECT count(*) FROM ledger.accounts a"
			  . " WHERE ledger_available(a.id) <> ledger_balance(a.id)"),
		'0',
		"$name: available = balance for every account: nothing left set aside");
	is(sql('SELECT count(*) FROM ledger.queue'), '0', "$name: nothing is queued");
	my $problems = sql('SELECT * FROM ledger_verify()');
	is($problems, '', "$name: ledger_verify() finds nothing");
	return;
}

sql('CREATE EXTENSION ledger');
# payers 1-6 and 11-16, 5 and 15 short (bucket 1); payees 7, 8, 17, 18
sql('SELECT count(ledger_open_account(a)) FROM generate_series(1, 18) a');
my $funding = sql(
	"SELECT string_agg(ledger_deposit(a, CASE WHEN a IN (5, 15) THEN 50 ELSE 1000 END)::text, ',')"
	  . " FROM unnest('{1,2,3,4,5,6,11,12,13,14,15,16}'::bigint[]) a");
is( sql(
		"SELECT string_agg(DISTINCT ledger_wait(id, 30000), ',')"
		  . " FROM unnest('{$funding}'::bigint[]) id"),
	'applied',
	'the payers are funded');
$balance{$_} = 1000 foreach (1, 2, 3, 4, 6, 11, 12, 13, 14, 16);
$balance{$_} = 50   foreach (5, 15);
$balance{$_} = 0    foreach (7, 8, 17, 18);
wait_for_workers('start');

# 1. A crash after bucket 0 voted, bucket 1 paused.
my @phase1 = (
	{ name => 'a', applied => 1, transfers => [ [ 2, 7, 100 ], [ 1, 8, 100 ] ] },
	{
		name      => 'b',
		applied   => 1,
		transfers => [ [ 4, 7, 200 ], [ 3, 8, 300 ], [ 6, 8, 50 ] ]
	},
	{
		name      => 'c',
		applied   => 0,
		short     => 2,
		transfers => [ [ 6, 7, 100 ], [ 5, 8, 500 ] ]
	},
	{ name => 'd', applied => 1, transfers => [ [ 2, 8, 50 ], [ 1, 7, 60 ] ] },
	# bucket 0 alone
	{ name => 'e', applied => 1, transfers => [ [ 4, 8, 10 ], [ 6, 8, 20 ] ] },
);
sql('SELECT ledger_pause(1)');
enqueue_groups(@phase1);
my @voters = elements_of_bucket(0, @phase1);
wait_voted('phase 1: bucket 0 voted for its transfers', @voters);
is( sql(
		"SELECT string_agg(ledger_wait(id, 30000), ',' ORDER BY id) FROM unnest('{"
		  . id_list(@{ $phase1[4]{elements} }) . "}'::bigint[]) id"),
	'applied,applied',
	'phase 1: the group of bucket 0 alone is applied');
# what bucket 0 set aside for the groups of both buckets, not paid yet
is( sql(
		"SELECT string_agg(a || ':' || ledger_balance(a) || '/' || ledger_available(a), ' ' ORDER BY a)"
		  . " FROM unnest('{2,4,6}'::bigint[]) a"),
	'2:1000/850 4:990/790 6:980/830',
	'phase 1: bucket 0 set the amounts of its spanning groups aside, paid its own group');
my @spanning = map { @{ $_->{elements} } } @phase1[ 0 .. 3 ];
is( sql(
		"SELECT count(*) FROM ledger.transactions WHERE event_id = ANY ('{"
		  . id_list(@spanning) . "}')"),
	'0',
	'phase 1: no leg of a spanning group is posted before the crash');

my @pids = server_pids($node);
$node->kill9;
wait_for_exit(@pids);
$node->start;
wait_for_workers('phase 1 restart');
is( sql(q{SELECT string_agg(worker || ':' || paused, ' ' ORDER BY worker) FROM ledger_stats}),
	'0:false 1:false',
	'phase 1: the pause did not survive the restart');
sql('SELECT ledger_resume(1)');
check_groups('phase 1', @phase1);

# 2. A crash after bucket 1 voted (and paid, or rejected) and before bucket 0
# settled.
my @phase2 = (
	{ name => 'f', applied => 1, transfers => [ [ 12, 17, 100 ], [ 11, 18, 100 ] ] },
	{
		name      => 'g',
		applied   => 1,
		transfers => [ [ 14, 17, 70 ], [ 13, 18, 30 ], [ 12, 18, 5 ] ]
	},
	{
		name      => 'h',
		applied   => 0,
		short     => 2,
		transfers => [ [ 14, 17, 100 ], [ 15, 18, 500 ] ]
	},
);
sql('SELECT ledger_pause(1)');
enqueue_groups(@phase2);
wait_voted('phase 2: bucket 0 voted for its transfers', elements_of_bucket(0, @phase2));
sql('SELECT ledger_pause(0)');
# a batch of bucket 0 begun before the pause has committed by now
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'paused' FROM ledger_stats WHERE worker = 0"),
	'phase 2: bucket 0 is paused');
sql('SELECT ledger_resume(1)');
wait_voted('phase 2: bucket 1 voted or rejected', elements_of_bucket(1, @phase2));
is( sql(
		"SELECT string_agg(a || ':' || ledger_balance(a) || '/' || ledger_available(a), ' ' ORDER BY a)"
		  . " FROM unnest('{12,14}'::bigint[]) a"),
	'12:1000/895 14:1000/830',
	'phase 2: bucket 0 has neither paid nor given back the amounts it set aside');
is( sql(
		"SELECT string_agg(e.account_id || ':' || (SELECT count(*) FROM ledger.transactions t"
		  . "                                        WHERE t.event_id = e.id), ' ' ORDER BY e.id)"
		  . " FROM ledger.event_log e WHERE e.id = ANY ('{"
		  . id_list(map { @{ $_->{elements} } } @phase2) . "}')"),
	'12:0 11:1 14:0 13:1 12:0 14:0 15:0',
	'phase 2: bucket 1 paid its transfers of the groups that can be (the payer\'s leg), bucket 0 not yet');

$node->stop('immediate');
$node->start;
wait_for_workers('phase 2 restart');
sql('SELECT ledger_resume(0), ledger_resume(1)');
check_groups('phase 2', @phase2);

# the log: no worker error
my @errors = grep { /ERROR|PANIC/ && !/terminating connection/ } split(/\n/, slurp_file($node->logfile));
is(scalar(@errors), 0, 'no error in the server log') or diag(join("\n", @errors[ 0 .. ($#errors < 9 ? $#errors : 9) ]));

done_testing();
