# A batch that fails at every try: the worker backs off, says why in
# ledger_stats, and carries on by itself once the cause is gone.
#
# The legs' id sequence is given a maximum it has reached, so every batch
# with something to post fails in nextval(), as one would on a full disk or
# after a broken setting.  The worker ends at each error and the postmaster
# starts it again; the errors in a row make it wait longer each time (5 s,
# then 10, 20, 40, a minute) rather than fail every five seconds for good.
# Once the sequence is mended the transfer is applied, once, and the count
# of errors goes back to zero.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('errors');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'ledger'
ledger.database = 'postgres'
ledger.buckets = 1
ledger.poll_interval = '100ms'
log_line_prefix = '%m [%p] '
});
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION ledger;
SELECT ledger_open_account(1), ledger_open_account(2);
SELECT ledger_wait(ledger_deposit(1, 1000), 30000);
});

# the sequence at its end; a restart drops the values the worker cached
$node->safe_psql('postgres', q{
SELECT format('ALTER SEQUENCE ledger.transaction_id_seq MAXVALUE %s', last_value)
  FROM ledger.transaction_id_seq \gexec
});
$node->restart;
my $log_start = -s $node->logfile;
my $x = $node->safe_psql('postgres', 'SELECT ledger_transfer(1, 2, 10)');

ok( $node->poll_query_until('postgres',
		'SELECT failures >= 3 FROM ledger_stats WHERE worker = 0'),
	'the batch fails again and again');
like( $node->safe_psql('postgres', 'SELECT last_error FROM ledger_stats'),
	qr/reached maximum value of sequence "transaction_id_seq"/,
	'ledger_stats says why');
is($node->safe_psql('postgres', "SELECT ledger_event_status($x)"),
	'pending', 'the transfer waits');

# the worker's errors, from the log: each try later than the one before
my @times;
for my $line (split /\n/, substr(slurp_file($node->logfile), $log_start))
{
	next unless $line =~ /reached maximum value of sequence/ && $line =~ /(?:ERROR|FATAL)/;
	my ($h, $m, $s) = $line =~ /^\S+ (\d+):(\d+):([\d.]+)/;
	push @times, $h * 3600 + $m * 60 + $s;
}
cmp_ok(scalar(@times), '>=', 3, 'each failed try is logged');
cmp_ok($times[2] - $times[1], '>=', 9.5,
	'the third try came at least ten seconds after the second')
  or diag("errors at @times");

$node->safe_psql('postgres', 'ALTER SEQUENCE ledger.transaction_id_seq NO MAXVALUE');
is($node->safe_psql('postgres', "SELECT ledger_wait($x, 120000)"),
	'applied', 'once mended, the transfer is applied');
is($node->safe_psql('postgres', "SELECT count(*) FROM ledger.transactions WHERE event_id = $x"),
	'2', 'once: two legs');
ok($node->poll_query_until('postgres',
		'SELECT failures = 0 FROM ledger_stats WHERE worker = 0'),
	'and the count of errors goes back to zero');
is($node->safe_psql('postgres', 'SELECT ledger_balance(1) || \' \' || ledger_balance(2)'),
	'990 10', 'the balances');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ledger_verify()'),
	'0', 'ledger_verify() finds nothing');

done_testing();
