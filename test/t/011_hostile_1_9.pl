# A hostile client against what 1.9 adds: linked transfers, closing and
# reopening accounts.
#
# mallory, a member of ledger_client only, runs seeded random calls from
# three concurrent sessions (LEDGER_HOSTILE_SEED replays a run's calls,
# LEDGER_HOSTILE_CALLS sets how many per session): ledger_transfer_linked()
# with NULL arrays and NULL elements, two-dimensional, empty, mismatched and
# too long (over 100) arrays; ids that are not valid (zero, negative: the
# external accounts), unknown, of another currency, owned by a role mallory
# is not a member of, a closed account, a payer paying itself; amounts that
# are zero, negative, near the largest bigint, several of them summing past
# it (on one payer too), past the supply bound (from an account that may go
# negative); duplicated payers; idempotency keys too long, private keys
# reused with the same group and with another, keys shared by the sessions
# for one group each; metadata that is no object or too large; valid groups
# across both buckets; and ledger_close_account(), ledger_reopen_account(),
# ledger_deposit() and debits of the tenant's account, which mallory may not
# call.  Some calls run in transactions that roll back.  Each call runs in
# a subtransaction (h_call()) that returns its result or its SQLSTATE.
#
# Checked:
#  - every call succeeds or fails with the SQLSTATE the README documents
#    for its arguments, in the order the arguments are checked; a key
#    reused with its request gives the first id, with another 23L01; the
#    sessions' calls with a shared key all get one id; no session loses its
#    connection, and the server never restarts;
#  - no event stays pending (the queue drains, ledger_wait on every id);
#    the ids of rolled-back calls exist nowhere;
#  - each group is applied as a whole or rejected as a whole; a rejected
#    group has an element rejected for its own reason, and every other
#    names one of those ("linked_rejected (element N: reason)"); a group
#    naming the closed account is rejected; the legs are exactly those of
#    the applied transfers (payer and payee, once each); a transfer from
#    or to the closed account is rejected (account_closed);
#  - money is conserved: per currency the balances sum to zero, the
#    customers' accounts hold what was deposited; no account that may not
#    go negative has a negative leg; available = balance everywhere;
#    ledger_verify() finds nothing;
#  - idle afterwards, the workers do not spin (batches, CPU time over 3 s)
#    and the log stays quiet;
#  - a linked group waiting for a paused bucket's vote: the worker that
#    voted waits without spinning and without writing to the log; resumed,
#    the group is applied;
#  - an operator's close of an account that holds money is rejected
#    (balance_not_zero), and of one with an open hold (holds_open).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use POSIX qw(sysconf _SC_CLK_TCK);
use Time::HiRes qw(time sleep);

my $seed      = $ENV{LEDGER_HOSTILE_SEED}  // 20261206;
my $ncalls    = $ENV{LEDGER_HOSTILE_CALLS} // 300;
my $nsessions = 3;
note "seed $seed, $nsessions sessions of $ncalls calls";
srand($seed);

my $bigint_max = '9223372036854775807';
my $supply     = '140737488355327';
my $tmp        = PostgreSQL::Test::Utils::tempdir;

my $node = PostgreSQL::Test::Cluster->new('hostile_1_9');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'ledger'
ledger.database = 'postgres'
ledger.buckets = 2
ledger.poll_interval = '100ms'
log_line_prefix = '%m [%p] '
max_connections = 30
});
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0], @_[ 1 .. $#_ ]); }

# The accounts: 1-8 funded, open to any client (XXX); 9 owned by tenant;
# 10 closed; 11 in EUR; 12, 13 empty; 14 may go negative.
my %currency = map { $_ => 'XXX' } (1 .. 10, 12, 13, 14);
$currency{11} = 'EUR';
my %tenant_owned = (9 => 1);
my $closed = 10;
my $negative = 14;
sql(q{
CREATE EXTENSION ledger;
CREATE ROLE mallory LOGIN;
GRANT ledger_client TO mallory;
CREATE ROLE tenant;
CREATE ROLE ops LOGIN;
GRANT ledger_operator TO ops;
SELECT ledger_open_account(a) FROM generate_series(1, 8) a;
SELECT ledger_open_account(9, owner => 'tenant');
SELECT ledger_open_account(10);
SELECT ledger_open_account(11, currency => 'EUR');
SELECT ledger_open_account(12), ledger_open_account(13);
SELECT ledger_open_account(14, allow_negative => true);
-- a call, in a subtransaction: its result, or its SQLSTATE
CREATE FUNCTION h_call(n integer, q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	r text;
BEGIN
	EXECUTE q INTO r;
	RETURN n || ' ok ' || COALESCE(r, '');
EXCEPTION WHEN OTHERS THEN
	RETURN n || ' err ' || SQLSTATE;
END
$$;
});
my $funding = sql(
	"SELECT string_agg(ledger_deposit(a, 1000)::text, ',') FROM unnest('{1,2,3,4,5,6,7,8,9,11}'::bigint[]) a");
my $close = sql("SELECT ledger_close_account($closed)");
is( sql(
		"SELECT string_agg(DISTINCT ledger_wait(id, 30000), ',') FROM unnest('{$funding,$close}'::bigint[]) id"),
	'applied',
	'the accounts are funded, account 10 closed');
my %deposited = (XXX => 9000, EUR => 1000);

sub chance { return rand() < $_[0]; }
sub pick   { return $_[ int(rand(scalar @_)) ]; }

# Accounts and amounts

sub known_account { return pick(1 .. 8, 12, 13); }

sub some_account
{
	my $r = rand();
	return known_account()               if $r < 0.70;
	return pick(0, -1, -2, -65, -1000)   if $r < 0.76;
	return 900000 + int(rand(50))        if $r < 0.82;
	return 9                             if $r < 0.87;
	return $closed                       if $r < 0.92;
	return 11                            if $r < 0.96;
	return $negative;
}

sub some_amount
{
	my $r = rand();
	return 1 + int(rand(300))                          if $r < 0.60;
	return pick(0, -1, '-9223372036854775808')         if $r < 0.66;
	return pick($bigint_max, '9223372036854775000', '4611686018427387904') if $r < 0.80;
	return pick($supply, '140737488355328', '70368744177664') if $r < 0.88;
	return 1000 + int(rand(2000));
}

# An array: undef is a NULL element.  Returns the list, or a marker.
sub spoil
{
	my ($list) = @_;
	my $r = rand();
	return { null => 1 }                                 if $r < 0.02;
	return { twod => [ [ 1, 2 ], [ 3, 4 ] ] }            if $r < 0.04;
	if ($r < 0.08 && @$list)
	{
		my @l = @$list;
		$l[ int(rand(@l)) ] = undef;
		return \@l;
	}
	return $list;
}

sub sql_value { return defined $_[0] ? $_[0] : 'NULL'; }

sub sql_array
{
	my ($a) = @_;
	return 'NULL::bigint[]' if ref($a) eq 'HASH' && $a->{null};
	if (ref($a) eq 'HASH' && $a->{twod})
	{
		return "'{" . join(',', map { '{' . join(',', @$_) . '}' } @{ $a->{twod} }) . "}'::bigint[]";
	}
	return "'{}'::bigint[]" unless @$a;
	return 'ARRAY[' . join(',', map { sql_value($_) } @$a) . ']::bigint[]';
}

sub quote { my ($s) = @_; $s =~ s/'/''/g; return "'$s'"; }

# What ledger_transfer_linked() must answer, in the order it checks: the
# arguments (NULL arrays; each array's dimensions and NULL elements; the
# lengths; the size of the group; the key and metadata), each transfer's
# ids and amount, then each transfer's accounts (existence, currency,
# owner), then the key.
sub predict_linked
{
	my ($from, $to, $amounts, $key, $meta) = @_;

	foreach my $a ($from, $to, $amounts)
	{
		return '22004' if ref($a) eq 'HASH' && $a->{null};
	}
	foreach my $a ($from, $to, $amounts)
	{
		return '2202E' if ref($a) eq 'HASH' && $a->{twod};
		return '22004' if grep { !defined $_ } @$a;
	}
	my $n = scalar(@$from);
	return '22023' if scalar(@$to) != $n || scalar(@$amounts) != $n;
	return '22023' if $n < 1 || $n > 100;
	return '22001' if defined $key && length($key) > 256;
	if (defined $meta)
	{
		return '22023' if $meta !~ /^\{/;
		return '54000' if length($meta) > 65536;
	}
	for my $i (0 .. $n - 1)
	{
		return '22023'
		  if $from->[$i] <= 0
		  || $to->[$i] <= 0
		  || $from->[$i] == $to->[$i]
		  || $amounts->[$i] <= 0;
	}
	for my $i (0 .. $n - 1)
	{
		return '23503' unless exists $currency{ $to->[$i] };
		return '23503' unless exists $currency{ $from->[$i] };
		return '22023' if $currency{ $from->[$i] } ne $currency{ $to->[$i] };
		return '42501' if $tenant_owned{ $from->[$i] };
	}
	return 'ok';
}

# The shared keys, one group each, claimed by whichever session comes first.
my @shared = (
	{ key => 'shared-1', from => [ 1, 2 ], to => [ 3, 4 ], amounts => [ 5, 6 ] },
	{ key => 'shared-2', from => [ 3 ], to => [ 4 ], amounts => [ 7 ] },
	{ key => 'shared-3', from => [ 5, 6, 7 ], to => [ 8, 12, 13 ], amounts => [ 1, 2, 3 ] },
	{ key => 'shared-4', from => [ 8, 8 ], to => [ 1, 2 ], amounts => [ 4, 4 ] },
);

sub linked_sql
{
	my ($from, $to, $amounts, $key, $meta) = @_;
	return
	    'SELECT ledger_transfer_linked('
	  . join(', ',
		sql_array($from), sql_array($to), sql_array($amounts),
		defined $key ? quote($key) : 'NULL',
		defined $meta ? quote($meta) . '::jsonb' : 'NULL')
	  . ')::text';
}

# One session's calls: each { sql, expect (a SQLSTATE, 'ok', or 'same
# KEY'), rollback, group (for the valid ones) }.
sub gen_session
{
	my ($s) = @_;
	my %claimed;    # private key => request
	my @calls;

	for my $n (1 .. $ncalls)
	{
		my $call = { n => $n, rollback => chance(0.08) };
		my $r = rand();
		if ($r < 0.06)
		{
			# the operator's functions, the tenant's account
			$call->{sql} = pick(
				"SELECT ledger_close_account(@{[ known_account() ]})::text",
				"SELECT ledger_reopen_account($closed)::text",
				"SELECT ledger_close_account($closed)::text",
				"SELECT ledger_deposit(@{[ known_account() ]}, 100)::text",
				"SELECT ledger_open_account(500)::text");
			$call->{expect} = '42501';
		}
		elsif ($r < 0.09)
		{
			$call->{sql} = "SELECT ledger_transfer(9, @{[ known_account() ]}, 1)::text";
			$call->{expect} = '42501';
		}
		elsif ($r < 0.13)
		{
			# a plain transfer from or to the closed account: rejected later
			# (to it from 14, which may go negative: always able to pay)
			my ($f, $t) = chance(0.5) ? ($closed, known_account()) : ($negative, $closed);
			$call->{sql} = "SELECT ledger_transfer($f, $t, 1)::text";
			$call->{expect} = 'ok';
			$call->{touches_closed} = 1;
		}
		elsif ($r < 0.20)
		{
			my $g = pick(@shared);
			$call->{sql} = linked_sql($g->{from}, $g->{to}, $g->{amounts}, $g->{key});
			$call->{expect} = 'ok';
			$call->{shared} = $g->{key};
			$call->{group} = $g;
		}
		else
		{
			my $len = chance(0.03) ? pick(0, 101, 150) : 1 + int(rand(chance(0.8) ? 3 : 8));
			my $clean = chance(0.35);    # a group that may well be applied
			my (@from, @to, @amounts);
			for (1 .. $len)
			{
				if ($clean)
				{
					my $f = known_account();
					my $t = known_account();
					$t = $f % 8 + 1 if $t == $f;
					push @from, $f;
					push @to, $t;
					push @amounts, 1 + int(rand(50));
					next;
				}
				my $f = some_account();
				my $t = some_account();
				# a payer twice, a payee twice
				$f = $from[0] if @from && chance(0.15);
				$t = $f if chance(0.03);
				push @from, $f;
				push @to, $t;
				push @amounts, some_amount();
			}
			# several amounts that sum past bigint, on one payer
			if ($len > 1 && chance(0.05))
			{
				@from = ($from[0]) x $len;
				@amounts = ('9000000000000000000') x $len;
			}
			my ($from, $to, $amounts) = $clean ? (\@from, \@to, \@amounts)
			  : map { spoil($_) } (\@from, \@to, \@amounts);
			pop @$to if !$clean && ref($to) eq 'ARRAY' && @$to && chance(0.02);
			my ($key, $meta);
			if (chance(0.3))
			{
				$key = chance(0.05) ? 'k' x 257 : "p$s-" . int(rand(15));
			}
			if (chance(0.1))
			{
				$meta = pick('{"order": 1}', '[]', '"x"', '{"pad": "' . ('y' x 70000) . '"}');
			}
			$call->{sql} = linked_sql($from, $to, $amounts, $key, $meta);
			$call->{expect} = predict_linked($from, $to, $amounts, $key, $meta);
			if ($call->{expect} eq 'ok')
			{
				$call->{group} = { from => $from, to => $to, amounts => $amounts };
				if (defined $key)
				{
					my $request = join('|', @$from, '', @$to, '', @$amounts, '', $meta // '');
					if (!exists $claimed{$key})
					{
						$claimed{$key} = { request => $request } unless $call->{rollback};
						$call->{claims} = $key;
					}
					elsif ($claimed{$key}{request} ne $request)
					{
						$call->{expect} = '23L01';
						delete $call->{group};
					}
					else
					{
						$call->{expect} = 'ok';
						$call->{same_as_key} = "$s:$key";
					}
				}
			}
		}
		push @calls, $call;
	}
	return \@calls;
}

my %sessions;
my @runs;
foreach my $s (1 .. $nsessions)
{
	my $calls = gen_session($s);
	$sessions{$s} = $calls;
	my $script = '';
	foreach my $c (@$calls)
	{
		my $line = "SELECT h_call($c->{n}, " . quote($c->{sql}) . ");\n";
		$script .= $c->{rollback} ? "BEGIN;\n${line}ROLLBACK;\n" : $line;
	}
	my $file = "$tmp/session$s.sql";
	open(my $fh, '>', $file) or die "could not write $file: $!";
	print $fh $script;
	close($fh);
	my $run = { session => $s, out => '', err => '' };
	$run->{handle} = IPC::Run::start(
		[
			'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres'), '-U', 'mallory', '-f', $file
		],
		'>', \$run->{out}, '2>', \$run->{err});
	push @runs, $run;
}

my (%results, @ids, @rolled_back, @groups, @closed_events);
my %shared_ids;
foreach my $run (@runs)
{
	my $s = $run->{session};
	my $ok = eval { $run->{handle}->finish };
	ok($ok, "session $s ran its script to the end, connected throughout")
	  or diag "session $s: $run->{err}";
	my %line = map { /^(\d+) (ok|err) ?(.*)$/ ? ($1 => [ $2, $3 ]) : () } split(/\n/, $run->{out});
	is(scalar(keys %line), $ncalls, "session $s: every call answered");

	my @wrong;
	my %key_ids;
	foreach my $c (@{ $sessions{$s} })
	{
		my $got = $line{ $c->{n} } or next;
		my ($status, $value) = @$got;
		my $answer = $status eq 'ok' ? 'ok' : $value;
		if ($answer ne $c->{expect})
		{
			push @wrong, "call $c->{n}: expected $c->{expect}, got $answer: $c->{sql}";
			next;
		}
		next unless $status eq 'ok';
		if ($c->{rollback})
		{
			push @rolled_back, $value unless $c->{same_as_key} || $c->{shared};
			next;
		}
		push @ids, $value;
		push @closed_events, $value if $c->{touches_closed};
		if ($c->{claims})
		{
			$key_ids{"$s:$c->{claims}"} = $value;
		}
		if ($c->{same_as_key})
		{
			push @wrong, "call $c->{n}: the key's first call got $key_ids{$c->{same_as_key}}, this one $value"
			  if defined $key_ids{ $c->{same_as_key} } && $key_ids{ $c->{same_as_key} } ne $value;
		}
		if ($c->{shared})
		{
			$shared_ids{ $c->{shared} }{$value}++;
		}
		push @groups, { id => $value, %{ $c->{group} } } if $c->{group} && !$c->{shared};
	}
	my %answers;
	$answers{ $_->[0] eq 'ok' ? 'ok' : $_->[1] }++ foreach values %line;
	note "session $s: " . join(', ', map { "$_ $answers{$_}" } sort keys %answers);
	is(scalar(@wrong), 0, "session $s: every call succeeded or failed as documented")
	  or diag(join("\n", @wrong[ 0 .. ($#wrong < 19 ? $#wrong : 19) ]));
}
is( scalar(grep { scalar(keys %{ $shared_ids{$_} }) != 1 } keys %shared_ids),
	0, 'the calls with a shared key all got one id, whichever session claimed it')
  or diag(explain(\%shared_ids));
foreach my $k (keys %shared_ids)
{
	my ($id) = keys %{ $shared_ids{$k} };
	my ($g) = grep { $_->{key} eq $k } @shared;
	push @groups, { id => $id, %$g };
}
my %seen;
@groups = grep { !$seen{ $_->{id} }++ } @groups;
note scalar(@groups) . ' groups enqueued, ' . scalar(@ids) . ' ids';

# Nothing stays pending
ok($node->poll_query_until('postgres', 'SELECT NOT EXISTS (SELECT FROM ledger.queue)'),
	'the queue drains: no event is stuck');
my $all_ids = join(',', @ids) || '0';
is( sql(
		"SELECT count(*) FROM unnest('{$all_ids}'::bigint[]) id WHERE ledger_wait(id, 30000) = 'pending'"),
	'0', 'every event is decided');
is( sql(
		"SELECT count(*) FROM ledger.event_log WHERE id = ANY ('{"
		  . (join(',', @rolled_back) || '0') . "}')"),
	'0', 'the ids of rolled-back calls exist nowhere');
is( sql(
		"SELECT string_agg(DISTINCT x.status || ' ' || x.reason, ', ')"
		  . " FROM unnest('{" . (join(',', @closed_events) || '0') . "}'::bigint[]) id, ledger_event(id) x"),
	@closed_events ? 'rejected account_closed' : undef,
	'transfers from or to the closed account are rejected (account_closed)');

# The groups: all or none, the reasons, the legs
my $groups_list = join(',', map { $_->{id} } @groups) || '0';
my $bad_groups = sql(qq{
WITH el AS (
	SELECT e.link_of AS g, e.id, e.account_id, e.to_account, e.amount,
		   row_number() OVER (PARTITION BY e.link_of ORDER BY e.id) AS n,
		   x.status, x.reason
	  FROM ledger.event_log e, ledger_event(e.id) x
	 WHERE e.link_of = ANY ('{$groups_list}')
), own AS (
	SELECT g, n, reason FROM el WHERE status = 'rejected' AND reason NOT LIKE 'linked_rejected%'
)
SELECT g || ': ' || string_agg(n || ' ' || status || COALESCE(' ' || reason, ''), '; ' ORDER BY n)
  FROM el
 GROUP BY g
HAVING count(DISTINCT status) <> 1
	OR bool_or(status NOT IN ('applied', 'rejected'))
	OR (bool_and(status = 'rejected') AND NOT EXISTS (SELECT FROM own WHERE own.g = el.g))
	OR bool_or(status = 'rejected' AND reason LIKE 'linked_rejected%'
			   AND NOT EXISTS (SELECT FROM own
								WHERE own.g = el.g
								  AND el.reason = 'linked_rejected (element ' || own.n || ': ' || own.reason || ')'))
	OR bool_or(status = 'applied' AND (account_id = $closed OR to_account = $closed))
});
note 'groups: ' . sql(qq{
SELECT string_agg(s || ' ' || n, ', ') FROM (
	SELECT s, count(*) AS n FROM (
		SELECT string_agg(DISTINCT x.status || COALESCE(' ' || x.reason, ''), ' / ') AS s
		  FROM ledger.event_log e, ledger_event(e.id) x
		 WHERE e.link_of = ANY ('{$groups_list}')
		   AND x.reason IS DISTINCT FROM 'linked_rejected%'
		   AND COALESCE(x.reason, '') NOT LIKE 'linked_rejected%'
		 GROUP BY e.link_of) g GROUP BY s) c});
is($bad_groups, '', 'each group all applied or all rejected, with reasons that name an element rejected for its own');
is( sql(qq{
SELECT count(*) FROM ledger.event_log e
 WHERE e.link_of = ANY ('{$groups_list}')
   AND ledger_event_status(e.id) = 'applied'
   AND (SELECT string_agg(t.account_id || ':' || t.amount, ',' ORDER BY t.amount, t.account_id)
		  FROM ledger.transactions t WHERE t.event_id = e.id)
	   IS DISTINCT FROM e.account_id || ':' || -e.amount || ',' || e.to_account || ':' || e.amount
}), '0', 'an applied transfer of a group has its two legs, once');
is( sql(qq{
SELECT count(*) FROM ledger.transactions t JOIN ledger.event_log e ON e.id = t.event_id
 WHERE e.link_of = ANY ('{$groups_list}') AND ledger_event_status(e.id) = 'rejected'
}), '0', 'a rejected transfer of a group has no leg');
is( sql(qq{
SELECT count(*) FROM ledger.event_log e
 WHERE e.link_of = ANY ('{$groups_list}') AND e.amount > 20000 AND e.account_id <> $negative
   AND ledger_event_status(e.id) = 'applied'
}), '0', 'no transfer of more than the ledger holds was applied');

sub check_books
{
	my ($name) = @_;
	is( sql(qq{
SELECT string_agg(c || ' ' || total, ', ' ORDER BY c) FROM (
	SELECT a.currency AS c, sum(ledger_balance(a.id)) AS total
	  FROM ledger.accounts a GROUP BY a.currency HAVING sum(ledger_balance(a.id)) <> 0) x
}), '', "$name: each currency's balances sum to zero");
	my $xxx = sql("SELECT sum(ledger_balance(id)) FROM ledger.accounts WHERE id > 0 AND id <> 11");
	my $eur = sql("SELECT ledger_balance(11)");
	is("$xxx $eur", "$deposited{XXX} $deposited{EUR}",
		"$name: the customers' accounts hold what was deposited, per currency");
	is( sql(qq{
SELECT count(*) FROM ledger.transactions
 WHERE balance_after < 0 AND account_id > 0 AND account_id <> $negative
}), '0', "$name: no account that may not go negative has a negative leg");
	is( sql('SELECT count(*) FROM ledger.accounts a WHERE ledger_available(a.id) <> ledger_balance(a.id)'),
		'0', "$name: available = balance for every account");
	my $problems = sql('SELECT * FROM ledger_verify()');
	is($problems, '', "$name: ledger_verify() finds nothing");
	return;
}
check_books('after the hostile sessions');

# The workers idle: no batches, no CPU, no log
sub worker_cpu
{
	my $total = 0;
	foreach my $pid (split(/\n/, sql('SELECT pid FROM ledger_stats WHERE pid IS NOT NULL')))
	{
		my $stat = slurp_file("/proc/$pid/stat");
		$stat =~ s/^.*\)\s+//s;
		my @f = split(/\s+/, $stat);
		$total += ($f[11] + $f[12]) / sysconf(_SC_CLK_TCK);
	}
	return $total;
}

sub log_lines { return scalar(() = slurp_file($node->logfile) =~ /\n/g); }

sub quiet_for
{
	my ($name, $seconds) = @_;
	my $batches = sql('SELECT sum(batches) FROM ledger_stats');
	my $cpu     = worker_cpu();
	my $lines   = log_lines();
	sleep($seconds);
	my $more_batches = sql('SELECT sum(batches) FROM ledger_stats') - $batches;
	my $more_cpu     = worker_cpu() - $cpu;
	my @new = (split(/\n/, slurp_file($node->logfile)))[ $lines .. log_lines() - 1 ];
	cmp_ok($more_batches, '<=', 2, "$name: the workers write no batches ($more_batches in ${seconds} s)");
	cmp_ok($more_cpu, '<', 0.5, "$name: the workers do not spin (${more_cpu} s of CPU in ${seconds} s)");
	cmp_ok(scalar(@new), '<=', 2, "$name: the log stays quiet (" . scalar(@new) . " lines in ${seconds} s)")
	  or diag(join("\n", @new[ 0 .. ($#new < 4 ? $#new : 4) ]));
	return;
}
quiet_for('idle', 3);

# A group waiting for a paused bucket's vote costs nothing meanwhile: its
# payers (12 in bucket 0, 13 in bucket 1) funded for it
my $fund = sql('SELECT ledger_deposit(12, 100) || \',\' || ledger_deposit(13, 100)');
$deposited{XXX} += 200;
is(sql("SELECT string_agg(ledger_wait(id, 30000), ',') FROM unnest('{$fund}'::bigint[]) id"),
	'applied,applied', 'waiting: the payers are funded');
sql('SELECT ledger_pause(1)');
my $waiting = sql("SELECT ledger_transfer_linked('{12,13}', '{13,12}', '{10,10}')",
	extra_params => [ '-U', 'mallory' ]);
ok( $node->poll_query_until(
		'postgres', "SELECT EXISTS (SELECT FROM ledger.linked_votes WHERE event_id = $waiting)"),
	'waiting: bucket 0 voted');
quiet_for('waiting for bucket 1', 3);
sql('SELECT ledger_resume(1)');
is( sql(
		"SELECT string_agg(ledger_wait(id, 30000), ',' ORDER BY id) FROM ledger.event_log WHERE link_of = $waiting"),
	'applied,applied', 'waiting: resumed, the group is applied');

# The operator's closes: refused with a hold open (account 14, which may go
# negative, holds 1 for 5), refused while the account holds money
my $hold = sql("SELECT ledger_hold($negative, 5, 1)");
is(sql("SELECT ledger_wait($hold, 30000)"), 'applied', 'a hold of account 14');
my @closes = map { sql("SELECT ledger_close_account($_)", extra_params => [ '-U', 'ops' ]) } ($negative, 3, 12);
my $closes = join(',', @closes);
sql("SELECT ledger_wait(id, 30000) FROM unnest('{$closes}'::bigint[]) id");
is( sql(
		"SELECT string_agg(x.status || COALESCE(' ' || x.reason, ''), ', ' ORDER BY id)"
		  . " FROM unnest('{$closes}'::bigint[]) id, ledger_event(id) x"),
	'rejected holds_open, '
	  . (sql('SELECT ledger_balance(3)') == 0 ? 'applied' : 'rejected balance_not_zero')
	  . ', rejected balance_not_zero',
	'the operator\'s closes: refused with a hold open, refused holding money');
sql("SELECT ledger_wait(ledger_void($hold), 30000)");
check_books('at the end');

# the server never restarted
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|PANIC|server process .* exited with exit code [^0]/,
	'no backend crashed');

done_testing();
