# Liveness with credits that cannot be posted (1.5).
#
# A ledger created at 1.5 bounds what each bucket owes, so no credit can
# overflow its payee.  A ledger that had balances near the bigint edge before
# 1.5 still can: such a credit stays queued, its event pending and its money
# in flight, until the payee's balance leaves room for it.  This test makes
# that history by hand, as superuser: account 2 (bucket 0) gets a deposit of
# 2^63 - 1 - 100 from its bucket's external account, written straight into
# ledger.event_log and ledger.transactions with running balances that agree
# (ledger_verify() finds nothing but the chain of 1.9, which names the two
# legs no batch wrote: the tampering it exists to show), and the server is
# restarted so that the
# workers load the accounts afresh.  Then 500 one-unit transfers to account 2
# from bucket 1, with ledger.batch_size = 10: 100 are posted, and 400 credits,
# 40 batches' worth, are held back.  Checked:
#  (a) the server log has exactly one "is held back" WARNING per held credit,
#      however many passes of the worker read it again;
#  (b) the bucket-0 worker does not spin: over 5 s of wall time its CPU time
#      (utime + stime, /proc/<pid>/stat) grows by less than 0.5 s;
#  (c) other events of bucket 0 are applied meanwhile: a withdrawal, a
#      transfer within the bucket, transfers from and to bucket 1, and a
#      withdrawal from account 2 itself, which leaves room for 50 of the
#      held credits: they are posted, the other 350 stay held;
#  (d) ledger_health('0') lists every held credit, with the overflow reason;
#  (e) ledger_verify() counts them as money in flight and reports nothing.
# Then a restart with the held credits queued: each is reported once more,
# and an event of bucket 0 queued behind them should not wait for the worker
# to read past them all.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use POSIX qw(sysconf _SC_CLK_TCK);
use Time::HiRes qw(time sleep);

my $bigint_max = '9223372036854775807';
my $room       = 100;                      # what account 2 can still take
my $edge       = '9223372036854775707';    # $bigint_max - $room
my $transfers  = 500;
my $held       = $transfers - $room;
my $x          = 2;                        # the payee at the edge, bucket 0
my @payers     = (1, 3, 5, 7, 9);          # bucket 1
my ($c, $d) = (4, 6);                      # bucket 0, unrelated to account 2

my $node = PostgreSQL::Test::Cluster->new('liveness');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'ledger'
ledger.database = 'postgres'
ledger.buckets = 2
ledger.poll_interval = '100ms'
ledger.batch_size = 10
});
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub wait_applied
{
	my ($ids, $name) = @_;
	is( sql("SELECT string_agg(DISTINCT ledger_wait(id, 60000), ',')"
			  . " FROM unnest('{$ids}'::bigint[]) id"),
		'applied', $name);
	return;
}

sub held_warnings
{
	my @lines = grep { /WARNING:  ledger: credit of event \d+ to account $x is held back/ }
	  split(/\n/, slurp_file($node->logfile));
	my %events = map { /credit of event (\d+)/; ($1 => 1) } @lines;
	return (scalar(@lines), scalar(keys %events));
}

sub worker_cpu_seconds
{
	my ($pid) = @_;
	my $stat = slurp_file("/proc/$pid/stat");
	# the fields after "(comm)": state is the first, utime the 12th, stime the 13th
	$stat =~ s/^.*\)\s+//s;
	my @f = split(/\s+/, $stat);
	return ($f[11] + $f[12]) / sysconf(_SC_CLK_TCK);
}

sql('CREATE EXTENSION ledger');
sql(    'SELECT count(ledger_open_account(a)) FROM unnest(ARRAY['
	  . join(',', $x, @payers, $c, $d)
	  . ']::bigint[]) a');

# Fund the payers (bucket 1) by deposits, and C and D (bucket 0) by transfers
# from bucket 1, so that bucket 0's external account has no legs yet.
my $funding = sql(
	"SELECT string_agg(ledger_deposit(p, 2000)::text, ',')"
	  . " FROM unnest(ARRAY[@{[join(',', @payers)]}]::bigint[]) p");
wait_applied($funding, 'the payers are funded');
$funding = sql(
	"SELECT ledger_transfer($payers[4], $c, 500) || ',' || ledger_transfer($payers[4], $d, 500)");
wait_applied($funding, 'C and D are funded');
is( sql('SELECT ledger_balance(-1) = 0 AND NOT EXISTS (SELECT FROM ledger.queue)'),
	't', 'nothing is queued; the external account of bucket 0 is untouched');

# The history of a ledger from before 1.5: a deposit of 2^63 - 1 - 100 to
# account 2, legs and running balances consistent, written as superuser.
# The legs take ids from the legs' sequence, above what the workers have
# cached: the restart makes them draw new ones.
sql(qq{
BEGIN;
ALTER TABLE ledger.event_log DISABLE TRIGGER USER;
ALTER TABLE ledger.transactions DISABLE TRIGGER USER;
WITH e AS (
	INSERT INTO ledger.event_log (id, kind, account_id, amount, status,
							   enqueued_at, applied_at)
	VALUES (nextval('ledger.event_id_seq'), 'd', $x, $edge, 'a', now(), now())
	RETURNING id
)
INSERT INTO ledger.transactions (id, account_id, event_id, amount, balance_after, created_at)
SELECT nextval('ledger.transaction_id_seq'), l.account, e.id, l.amount, l.amount, now()
  FROM e, (VALUES ($x, ${edge}::bigint), (-1, -${edge}::bigint)) l(account, amount);
ALTER TABLE ledger.transactions ENABLE TRIGGER USER;
ALTER TABLE ledger.event_log ENABLE TRIGGER USER;
COMMIT;
});
is(sql("SELECT ledger_balance($x)"), $edge, 'account 2 is near the edge');
is(sql(qq{SELECT count(*) FROM ledger_verify() WHERE problem <> 'chain'}),
	'0', 'the hand-made history is consistent: ledger_verify() finds nothing else');
is( sql(qq{
SELECT string_agg(s, ',' ORDER BY s) FROM (SELECT substring(problem from ' of account .*') s
  FROM ledger_verify_chain()) p}),
	" of account -1 is in no batch, of account $x is in no batch",
	'the chain names the two legs written by hand, and nothing else');

$node->restart;
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) FROM ledger_stats WHERE pid IS NOT NULL AND state <> 'stopped'", '2'),
	'both workers run after the restart');

# 500 one-unit transfers to account 2 from bucket 1, committed at once.
my $log_offset = -s $node->logfile;
my $start      = time;
my $ids        = sql(
	"SELECT array_to_string(ledger_transfer_many(array_agg(p), array_fill(${x}::bigint, ARRAY[$transfers]),"
	  . " array_fill(1::bigint, ARRAY[$transfers])), ',')"
	  . " FROM (SELECT (ARRAY[@{[join(',', @payers)]}]::bigint[])[1 + i % @{[scalar @payers]}] AS p"
	  . "         FROM generate_series(1, $transfers) i) s");
ok( $node->poll_query_until(
		'postgres', qq{
SELECT ledger_balance($x) = $bigint_max
   AND NOT EXISTS (SELECT FROM ledger.queue WHERE bucket = 1)
   AND (SELECT count(*) FROM ledger.queue WHERE bucket = 0 AND kind = 'c') = $held}),
	"$room credits are posted, $held are held back");
# every held credit is reported once the worker has read it
my $reported_all = 0;
for (my $i = 0; $i < 10 * $PostgreSQL::Test::Utils::timeout_default; $i++)
{
	my ($lines) = held_warnings();
	if ($lines >= $held) { $reported_all = 1; last; }
	sleep(0.1);
}
ok($reported_all, 'every held credit is reported');
note sprintf('the 400 held credits were reported %.1f s after the enqueue', time - $start);

is( sql(
		"SELECT ledger_event_status(id), count(*) FROM unnest('{$ids}'::bigint[]) id"
		  . " GROUP BY 1 ORDER BY 1"),
	"applied|$room\npending|$held",
	'the transfers whose credit is held back are pending');

# (b) no spinning: the held credits are no work
my $pid = sql('SELECT pid FROM ledger_stats WHERE worker = 0');
my $cpu_before = worker_cpu_seconds($pid);
sleep(5);
my $cpu_used = worker_cpu_seconds($pid) - $cpu_before;
note sprintf('worker 0 (pid %d) used %.2f s of CPU in 5 s', $pid, $cpu_used);
cmp_ok($cpu_used, '<', 0.5, 'the bucket-0 worker does not spin on held credits');

# (c) the rest of bucket 0 flows: each pass reads the held credits again
$start = time;
my $others = sql(qq{
SELECT ledger_withdraw($c, 10);
SELECT ledger_transfer($c, $d, 20);
SELECT ledger_transfer($payers[0], $c, 30);
SELECT ledger_transfer($d, $payers[0], 40);
});
$others =~ s/\n/,/g;
wait_applied($others, 'other events of bucket 0 are applied while credits are held');
note sprintf('the other events of bucket 0 were applied in %.1f s', time - $start);
is( sql("SELECT ledger_balance($c) || ' ' || ledger_balance($d)"),
	'500 480', 'their money moved');

# (a) one WARNING per held credit, however many passes read it
my ($lines, $distinct) = held_warnings();
is($lines,    $held, "exactly $held held-back WARNINGs in the log");
is($distinct, $held, 'one for each held credit');

# (d) ledger_health() lists them with the overflow reason
is( sql(qq{
SELECT problem, bucket, account_id, detail, count(*)
  FROM ledger_health('0', 1000)
 WHERE problem = 'pending'
 GROUP BY 1, 2, 3, 4}),
	"pending|0|$x|a credit held back: its payee's balance would overflow|$held",
	'ledger_health() lists every held credit, with the overflow reason');
is( sql(qq{
SELECT count(*) FROM ledger_health('0', 1000) h
  JOIN ledger.queue q ON q.id = h.event_id AND q.kind = 'c' AND q.bucket = 0
 WHERE h.problem = 'pending'}),
	$held, 'the rows name the held credits\' events');
# the external account of bucket 0 owes the deposit from before 1.5
is(sql("SELECT count(*) FROM ledger_health('0', 1000) WHERE problem = 'supply' AND bucket = 0"),
	'1', 'ledger_health() also reports bucket 0 over the supply bound');

# (e) ledger_verify() counts them as in flight and finds nothing else
is(sql(qq{SELECT count(*) FROM ledger_verify() WHERE problem <> 'chain'}),
	'0', 'ledger_verify() finds nothing else');
is(sql('SELECT queued FROM ledger_node_totals()'),
	$held, 'the held credits are money in flight');

# Room for 50: a withdrawal from account 2 is applied, and 50 held credits
# are posted after it; the rest stay held, reported no more.
my $withdrawal = sql("SELECT ledger_withdraw($x, 50)");
wait_applied($withdrawal, 'a withdrawal from account 2 is applied');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) FROM ledger.queue WHERE bucket = 0 AND kind = 'c'",
		$held - 50),
	'50 held credits are posted once there is room');
is(sql("SELECT ledger_balance($x)"), $bigint_max, 'account 2 is full again');
is( sql(
		"SELECT ledger_event_status(id), count(*) FROM unnest('{$ids}'::bigint[]) id"
		  . " GROUP BY 1 ORDER BY 1"),
	"applied|@{[$room + 50]}\npending|@{[$held - 50]}",
	'their transfers are applied');
($lines, $distinct) = held_warnings();
is($lines, $held, 'no more WARNINGs');
is(sql(qq{SELECT count(*) FROM ledger_verify() WHERE problem <> 'chain'}),
	'0', 'ledger_verify() still finds nothing else');

# A restart with the held credits queued, as after an upgrade from 1.4: the
# worker reports each held credit once more (it is a new process), and the
# rest of bucket 0 does not wait for it to have read them all: a pass that
# read as many entries as it asked for goes on at once, whatever it left
# queued, so the worker reads past the held credits without sleeping.
$node->append_conf('postgresql.conf', "ledger.poll_interval = '300ms'");
$log_offset = -s $node->logfile;
$node->restart;
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) FROM ledger_stats WHERE pid IS NOT NULL AND state <> 'stopped'", '2'),
	'restart: both workers run');
$start = time;
$others = sql("SELECT ledger_withdraw($c, 10)");
wait_applied($others, 'restart: a withdrawal of bucket 0 is applied');
my $elapsed = time - $start;
note sprintf('restart: the withdrawal behind %d held credits was applied in %.1f s',
	$held - 50, $elapsed);
cmp_ok($elapsed, '<', 3,
	'restart: the held credits do not hold up the rest of bucket 0 (10 poll intervals)');
my @since_restart =
  grep { /WARNING:  ledger: credit of event \d+ to account $x is held back/ }
  split(/\n/, substr(slurp_file($node->logfile), $log_offset));
my %since_restart = map { /credit of event (\d+)/; ($1 => 1) } @since_restart;
is( scalar(@since_restart) . ' ' . scalar(keys %since_restart),
	($held - 50) . ' ' . ($held - 50),
	'restart: each held credit is reported once more, once');
is(sql(qq{SELECT count(*) FROM ledger_verify() WHERE problem <> 'chain'}),
	'0', 'restart: ledger_verify() finds nothing else');

$node->stop;
done_testing();
