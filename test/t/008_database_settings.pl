# Settings a DBA may put on the ledger's database do not stop its workers.
#
# ALTER DATABASE ... SET reaches every session of the database, the bucket
# workers' too: a 5 ms statement timeout, a 1 ms lock timeout, a 10 ms idle
# in transaction timeout, SERIALIZABLE and read-only by default, a search
# path that puts a hostile schema first.  The workers set what they need
# for themselves, so the events of clients that cope with those settings
# apply, while a session holds the legs' table locked for a while, with no
# worker error in the log; and the books balance.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('settings');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'ledger'
ledger.database = 'postgres'
ledger.buckets = 2
ledger.poll_interval = '100ms'
});
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION ledger;
SELECT count(ledger_open_account(a)) FROM generate_series(1, 20) a;
-- a schema whose operator would be found before pg_catalog's
CREATE SCHEMA evil;
CREATE FUNCTION evil.minus(bigint, bigint) RETURNS bigint
	LANGUAGE sql AS 'SELECT 0::bigint';
CREATE OPERATOR evil.- (FUNCTION = evil.minus, LEFTARG = bigint, RIGHTARG = bigint);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
ALTER DATABASE postgres SET statement_timeout = '5ms';
ALTER DATABASE postgres SET lock_timeout = '1ms';
ALTER DATABASE postgres SET idle_in_transaction_session_timeout = '10ms';
ALTER DATABASE postgres SET default_transaction_isolation = 'serializable';
ALTER DATABASE postgres SET default_transaction_read_only = on;
ALTER DATABASE postgres SET search_path = evil, pg_catalog, public;
});

# the workers start again, under the database's settings
$node->restart;
my $log_start = -s $node->logfile;

# clients that cope: read-write, and time enough for their statements
my $client = "SET default_transaction_read_only = off; SET statement_timeout = 0;"
  . " SET lock_timeout = 0; SET default_transaction_isolation = 'read committed';";
my ($rc, $out, $err) =
  $node->psql('postgres', 'SET statement_timeout = 0; SELECT ledger_deposit(1, 1)');
like($err, qr/read-only transaction/, 'a read-only session cannot enqueue');

$node->safe_psql('postgres',
	"$client SELECT count(ledger_deposit(a, 1000)) FROM generate_series(1, 20) a");

# a session holds the legs' table for two seconds while transfers queue
my $locker = $node->background_psql('postgres');
$locker->query_safe(
	"$client SET idle_in_transaction_session_timeout = 0; BEGIN;"
	  . " LOCK TABLE ledger.transactions IN SHARE MODE;");
my $last = $node->safe_psql('postgres', qq{$client
SELECT max(ledger_transfer(a, 21 - a, a)) FROM generate_series(1, 20) a});
sleep 2;
$locker->query_safe('COMMIT');
$locker->quit;

is($node->safe_psql('postgres', "$client SELECT ledger_wait($last, 60000)"),
	'applied', 'the events apply');
is( $node->safe_psql('postgres',
		"$client SELECT count(*) FROM ledger.events WHERE status = 'a'"),
	'40', 'all of them');
is($node->safe_psql('postgres', "$client SELECT sum(ledger_balance(a)) FROM generate_series(1, 20) a"),
	'20000', 'the customers hold what came in');
is($node->safe_psql('postgres', "$client SELECT count(*) FROM ledger_verify()"),
	'0', 'ledger_verify() finds nothing');

my $log = substr(slurp_file($node->logfile), $log_start);
my @errors = $log =~ /^.*(?:ERROR|FATAL):.*$/mg;
# the test's own sessions name themselves; the workers' lines are the rest
my @worker_errors = grep { !/008_database_settings/ } @errors;
is(scalar(@worker_errors), 0, 'no worker error in the log')
  or diag(join("\n", @worker_errors[0 .. ($#worker_errors < 9 ? $#worker_errors : 9)]));

done_testing();
