# Shared by the TAP tests that kill servers with SIGKILL.
package LedgerCrash;

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use Exporter 'import';

our @EXPORT = qw(server_pids wait_for_exit);

# The processes of a server: its postmaster and those pg_stat_activity shows.
sub server_pids
{
	my ($node) = @_;
	my ($postmaster) = split(/\n/, slurp_file($node->data_dir . '/postmaster.pid'));

	return ($postmaster,
		split(/\n/, $node->safe_psql('postgres', 'SELECT pid FROM pg_stat_activity')));
}

# Processes of a server whose postmaster was killed leave one by one, and a
# new postmaster cannot start while they hold the shared memory.
sub wait_for_exit
{
	my @pids = @_;

	for (my $i = 0; $i < 10 * $PostgreSQL::Test::Utils::timeout_default; $i++)
	{
		return unless grep { kill(0, $_) } @pids;
		usleep(100_000);
	}
	BAIL_OUT('the processes of the killed server did not exit');
}

1;
