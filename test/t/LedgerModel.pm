# The model of what the ledger made of 003_property.pl's calls, and its
# comparisons with what the server holds once the queue has drained.
#
# record_calls() walks each session's output along with the operations
# LedgerOps.pm generated for it: which calls committed, what each returned,
# and whether each succeeded or failed as predicted.  read_ledger() reads
# the ledger's tables.  The checks after compare the two, and replay the
# events: the balances and legs recomputed from the applied events; the EUR
# and MAL groups' events replayed in the order their workers decided them,
# each one's outcome predicted exactly, with holds and limits; the other
# rejections, each shown due for some balance its account could have had;
# the order of each session's events; who debited the owned accounts.
# Each check returns its counterexamples: none when the property holds.
#
# The model keeps one run's record: record_calls() and then read_ledger()
# fill it, and the checks read it; hold_problems() and
# euro_balance_problems() read what euro_problems() replayed, and come
# after it.  It lives apart from the test so that the test reads as what
# it checks.
package LedgerModel;

use strict;
use warnings;

use Test::More;
use Math::BigInt;
use Exporter 'import';
use LedgerOps qw(
  $bound %euro_flag %mal_flag %owner_of @spenders @sinks @vaults @mal_own
  @mal_victims $mal_relay %initial_limits %stats may_debit is_modelled
  call_events);

our @EXPORT = qw(
  record_calls prop_log_problems read_ledger returned_event_problems
  unreturned_events rolled_back_events shared_id_problems
  idempotency_problems breakpoint_problems balance_problems leg_problems
  read_limits euro_problems euro_balance_problems supply_warnings
  hold_problems unjustified_rejections disorder stolen_debits
  expected_errors);

# The run: each session's operations and role; its calls as they went,
# those not answered as predicted, and the private keys that did not give
# back their event; and the calls each event id was returned to.
my (%ops, %role_of);
my (@calls, @mispredicted, @key_problems);
my (%committed_ids, %rolled_back_ids, %elements_of_id);

### What the calls did

# A call's outcome, and the events it returned.  Private keys are checked as
# the session goes: a key the session holds gives back its event.
sub record_call
{
	my ($s, $op, $r, $keys, $results) = @_;
	my $call = { session => $s, n => $op->{n}, op => $op, events => [] };
	my $where = "session $s call $op->{n}: $op->{sql}";

	push @calls, $call;
	if (!defined $r)
	{
		push @mispredicted, "$where: no result";
		return $call;
	}
	my $got = $r->[0] eq 'ok' ? 'ok' : $r->[1];
	my $expected = $op->{expect} // 'ok';
	$stats{"$op->{fn}: $got"}++;
	$stats{'retries'}++ if $op->{retry};
	$stats{"$role_of{$s}: $got"}++;
	push @mispredicted, "$where: expected $expected, got $got"
	  if $got ne $expected;
	$call->{result} = $r->[0] eq 'ok' ? "ok $r->[1]" : "err $r->[1]";
	return $call unless $got eq 'ok' && $expected eq 'ok';
	return $call if $op->{fn} =~ /^(open|limits|raw)$/;

	my @ids = $r->[1] =~ /(-?\d+)/g;
	my @events = call_events($op);
	my %distinct = map { $_ => 1 } @ids;
	$stats{'batches that repeat a transfer under its key'}++ if keys %distinct < @ids;
	if (@ids != @events)
	{
		push @mispredicted, "$where: returned '$r->[1]' for " . scalar(@events) . ' events';
		return $call;
	}
	foreach my $i (0 .. $#events)
	{
		my ($row, $key) = @{ $events[$i] };

		# the hold a post or void names: the id its call returned
		$row =~ s/\|HOLD\|/|$results->{ $op->{ref} }[1]|/ if defined $op->{ref};

		push @{ $call->{events} }, { id => $ids[$i], row => $row, key => $key };
		next unless defined $key;
		if (exists $keys->{$key})
		{
			push @key_problems,
			  "$where: key $key returned $ids[$i], the session's key holds $keys->{$key}"
			  if $ids[$i] ne $keys->{$key};
			$stats{'private key reused'}++;
		}
		else
		{
			$keys->{$key} = $ids[$i];
		}
	}
	return $call;
}

# Walk each session's operations ($ops, by session) along with its output
# ($outputs): which calls committed, what they returned.  mallory's output
# also says what its guard was and what its waits found.  $role_of: each
# session's role.  Returns the calls not answered as predicted
# (mispredicted), the private keys that did not give back their event
# (key_problems), and what mallory's guard was (guard) and its waits found
# (waits).
sub record_calls
{
	my ($ops, $outputs, $role_of) = @_;
	my %hostile_said;

	%ops     = %$ops;
	%role_of = %$role_of;
	foreach my $s (sort { $a <=> $b } keys %ops)
	{
		my (%result, %keys, $in_txn, @txn_calls, $mark, %keys_at_begin, %keys_at_savepoint);

		foreach my $line (split(/\n/, $outputs->{$s}))
		{
			if ($line =~ /^(guard|wait)\|(.*)$/)
			{
				push @{ $hostile_said{$1} }, $2;
				next;
			}
			my (undef, $n, $status, $value) = split(/ /, $line, 4);
			$result{$n} = [ $status, $value // '' ];
		}
		foreach my $op (@{ $ops{$s} })
		{
			my $kind = $op->{op};

			if ($kind eq 'BEGIN')
			{
				$in_txn        = 1;
				@txn_calls     = ();
				%keys_at_begin = %keys;
			}
			elsif ($kind eq 'SAVEPOINT')
			{
				$mark              = scalar(@txn_calls);
				%keys_at_savepoint = %keys;
			}
			elsif ($kind eq 'ROLLBACK TO')
			{
				%keys = %keys_at_savepoint;
				$_->{committed} = 0 foreach splice(@txn_calls, $mark);
				$stats{'savepoints rolled back to'}++;
			}
			elsif ($kind eq 'COMMIT')
			{
				$_->{committed} = 1 foreach @txn_calls;
				$in_txn = 0;
			}
			elsif ($kind eq 'ROLLBACK')
			{
				%keys = %keys_at_begin;
				$_->{committed} = 0 foreach @txn_calls;
				$in_txn = 0;
			}
			elsif ($kind eq 'call')
			{
				my $call = record_call($s, $op, $result{ $op->{n} }, \%keys, \%result);

				if   ($in_txn) { push @txn_calls, $call; }
				else           { $call->{committed} = 1; }
			}
		}
	}
	$stats{'calls committed'}   = grep { $_->{committed} } @calls;
	$stats{'calls rolled back'} = grep { !$_->{committed} } @calls;

	# The events the calls returned, committed or not.
	foreach my $call (@calls)
	{
		foreach my $e (@{ $call->{events} })
		{
			push @{ $elements_of_id{ $e->{id} } }, { %$e, call => $call };
			if ($call->{committed}) { push @{ $committed_ids{ $e->{id} } }, $e; }
			else { $rolled_back_ids{ $e->{id} } = 1; }
		}
	}
	return {
		mispredicted => \@mispredicted,
		key_problems => \@key_problems,
		guard        => $hostile_said{guard} // [],
		waits        => $hostile_said{wait} // [] };
}

# The calls prop_log does not hold as they went: it must hold the outcome
# of exactly the calls that committed.
sub prop_log_problems
{
	my ($node) = @_;
	my %logged;

	foreach my $line (split(/\n/,
		$node->safe_psql('postgres', 'SELECT session, n, ok, result FROM prop_log')))
	{
		my ($s, $n, $ok, $result) = split(/\|/, $line, 4);
		$logged{"$s $n"} = ($ok eq 't' ? 'ok ' : 'err ') . ($result // '');
	}
	return (
		(map { "session $_->{session} call $_->{n}: committed, logged as " . ($logged{"$_->{session} $_->{n}"} // 'nothing') }
		  grep { $_->{committed} && ($logged{"$_->{session} $_->{n}"} // '') ne ($_->{result} // '') } @calls),
		(map { "session $_->{session} call $_->{n}: rolled back, but logged" }
		  grep { !$_->{committed} && exists $logged{"$_->{session} $_->{n}"} } @calls));
}

### The ledger's state

my (%event, %account, %legs_of, %idempotency);
my ($eur, $mal, %currency_code);

# Read the ledger's tables: its events, accounts, legs, idempotency keys
# and currencies; and count what the events did, for the coverage checks.
sub read_ledger
{
	my ($node) = @_;

	foreach my $line (split(/\n/, $node->safe_psql(
		'postgres', q{
SELECT id, kind, account_id, COALESCE(to_account::text, ''), amount,
	   COALESCE(to_accounts::text, ''), COALESCE(amounts::text, ''),
	   COALESCE(hold_id::text, ''), CASE WHEN expires_at IS NULL THEN 'f' ELSE 't' END,
	   status, COALESCE(reason, ''), (extract(epoch FROM applied_at) * 1000000)::bigint,
	   (SELECT l.txid FROM ledger.event_log l WHERE l.id = e.id)
  FROM ledger.events e ORDER BY id})))
	{
		my @f = split(/\|/, $line, -1);
		$event{ $f[0] } = {
			id      => $f[0],
			row     => join('|', @f[ 1 .. 8 ]),
			kind    => $f[1],
			account => $f[2],
			to      => $f[3],
			amount  => $f[4],
			payees  => [ $f[5] =~ /(-?\d+)/g ],
			amounts => [ $f[6] =~ /(-?\d+)/g ],
			hold    => $f[7],
			status  => $f[9],
			reason  => $f[10],
			at      => $f[11],
			txid    => $f[12] };
	}
	foreach my $line (split(/\n/, $node->safe_psql('postgres',
		'SELECT id, allow_negative, bucket, ledger_balance(id), currency, ledger_available(id) FROM ledger.accounts')))
	{
		my ($id, $negative, $bucket, $balance, $currency, $available) = split(/\|/, $line);
		$account{$id} = {
			negative  => $negative eq 't',
			bucket    => $bucket,
			balance   => $balance,
			currency  => $currency,
			available => $available };
	}
	foreach my $line (split(/\n/, $node->safe_psql(
		'postgres', q{
SELECT account_id, id, event_id, amount, balance_after,
	   (extract(epoch FROM created_at) * 1000000)::bigint
  FROM ledger.transactions ORDER BY account_id, id})))
	{
		my ($account, $id, $event, $amount, $balance, $at) = split(/\|/, $line);
		push @{ $legs_of{$account} },
		  { id => $id, event => $event, amount => $amount, balance => $balance, at => $at };
	}
	# keys are the role's: "role key"
	foreach my $line (split(/\n/,
		$node->safe_psql('postgres', 'SELECT role::text, key, event_id FROM ledger.idempotency')))
	{
		my ($role, $key, $id) = split(/\|/, $line);
		$idempotency{"$role $key"} = $id;
	}
	note scalar(keys %event) . ' events, ' . scalar(keys %account) . ' accounts, '
	  . scalar(keys %idempotency) . ' idempotency keys';
	$eur = $node->safe_psql('postgres', "SELECT no FROM ledger.currencies WHERE code = 'EUR'");
	$mal = $node->safe_psql('postgres', "SELECT no FROM ledger.currencies WHERE code = 'MAL'");
	%currency_code = (0 => 'XXX', $eur => 'EUR', $mal => 'MAL');

	# what the events did, for the coverage checks
	$stats{"applied: $_->{kind}"}++ foreach grep { $_->{status} eq 'a' } values %event;
	$stats{'EUR posts across buckets'} = grep {
		$_->{status} eq 'a' && $_->{kind} eq 'p'
		  && $account{ $_->{account} }{bucket} != $account{ $_->{to} }{bucket}
	} values %event;
	$stats{'applied cross-bucket transfers'} = grep {
		$_->{status} eq 'a' && $_->{kind} eq 't'
		  && $account{ $_->{account} }{bucket} != $account{ $_->{to} }{bucket}
	} values %event;
	return;
}

# Does an event's row hold what a call asked for (* for anything)?
sub row_matches
{
	my ($want, $got) = @_;
	my @w = split(/\|/, $want, -1);
	my @g = split(/\|/, $got,  -1);

	return 0 unless @w == @g;
	return !grep { $w[$_] ne '*' && $w[$_] ne $g[$_] } 0 .. $#w;
}

# The events committed calls returned that do not exist, or do not hold
# the arguments of any committed call that returned them.
sub returned_event_problems
{
	return (
		(map { "event $_ was returned by a committed call, but does not exist" }
		  grep { !exists $event{$_} } sort { $a <=> $b } keys %committed_ids),
		(map { "event $_ is $event{$_}{row}; its calls asked for " . join(', ', map { $_->{row} } @{ $committed_ids{$_} }) }
		  grep {
			my $id = $_;
			exists $event{$id} && !grep { row_matches($_->{row}, $event{$id}{row}) } @{ $committed_ids{$id} }
		  } sort { $a <=> $b } keys %committed_ids));
}

# The events no committed call returned.
sub unreturned_events
{
	return map { "event $_ ($event{$_}{row}) was returned by no committed call" }
	  grep { !exists $committed_ids{$_} } sort { $a <=> $b } keys %event;
}

# The events returned only by rolled-back calls that exist.
sub rolled_back_events
{
	return map { "event $_ was returned only by rolled-back calls, but exists" }
	  grep { !exists $committed_ids{$_} && exists $event{$_} } sort { $a <=> $b } keys %rolled_back_ids;
}

# An event's key, with the role whose it is.
sub role_key
{
	my ($e) = @_;

	return defined $e->{key} ? "$role_of{ $e->{call}{session} } $e->{key}" : '(none)';
}

# The event ids returned to calls with different keys, or as different
# roles.
sub shared_id_problems
{
	return map {
		my @keys = map { role_key($_) } @{ $elements_of_id{$_} };
		"event $_ was returned to " . scalar(@keys) . ' calls, with keys ' . join(', ', @keys)
	  }
	  grep {
		my @e = @{ $elements_of_id{$_} };
		@e > 1 && grep { !defined $_->{key} || role_key($_) ne role_key($e[0]) } @e
	  } sort { $a <=> $b } keys %elements_of_id;
}

# The keys that do not hold one existing event, the one every committed
# call with the key got.
sub idempotency_problems
{
	my (@idempotency_problems, %committed_keys);

	foreach my $call (grep { $_->{committed} } @calls)
	{
		foreach my $e (grep { defined $_->{key} } @{ $call->{events} })
		{
			my $k = role_key({ %$e, call => $call });

			$committed_keys{$k} = 1;
			push @idempotency_problems,
			  "key $k: session $call->{session} call $call->{n} got $e->{id}, the key holds "
			  . ($idempotency{$k} // 'nothing')
			  if ($idempotency{$k} // '') ne $e->{id};
		}
	}
	$stats{'keys used by two roles'} = grep {
		my $key = $_;
		1 < grep { $committed_keys{"$_ $key"} } qw(prop_a prop_b mallory)
	} map { (split(/ /, $_, 2))[1] } keys %committed_keys;
	push @idempotency_problems, map { "key $_ holds event $idempotency{$_}, which does not exist" }
	  grep { !exists $event{ $idempotency{$_} } } sort keys %idempotency;
	push @idempotency_problems, map { "key $_ was used by no committed call" }
	  grep { !$committed_keys{$_} } sort keys %idempotency;
	return @idempotency_problems;
}

### Breakpoints

# The breakpoints that do not agree with the legs they cover: where they
# start, the balances before and after, and their difference.
sub breakpoint_problems
{
	my ($node) = @_;
	my (@breakpoint_problems, %last_breakpoint);

	foreach my $line (split(/\n/, $node->safe_psql(
		'postgres', q{
SELECT account_id, previous_balance, current_balance, amount_difference,
	   first_txn_id, last_txn_id
  FROM ledger.breakpoints ORDER BY account_id, last_txn_id})))
	{
		my ($id, $previous, $current, $difference, $first, $last) = split(/\|/, $line);
		my $where = "breakpoint of account $id up to leg $last";
		my $expected_first = exists $last_breakpoint{$id} ? $last_breakpoint{$id} + 1 : 1;
		my ($before, $after) = (0, undef);

		foreach my $leg (@{ $legs_of{$id} // [] })
		{
			$before = $leg->{balance} if $leg->{id} < $first;
			$after  = $leg->{balance} if $leg->{id} == $last;
		}
		push @breakpoint_problems, "$where starts at leg $first, not $expected_first"
		  if $first != $expected_first;
		push @breakpoint_problems, "$where: previous balance $previous, the legs say $before"
		  if $previous ne $before;
		push @breakpoint_problems,
		  "$where: current balance $current, the legs say " . ($after // 'no such leg')
		  if $current ne ($after // '');
		my $true_difference = Math::BigInt->new($current)->bsub($previous);
		push @breakpoint_problems,
		  "$where: amount_difference $difference, but $current - $previous = $true_difference"
		  if $difference ne $true_difference->bstr;
		$last_breakpoint{$id} = $last;
		$stats{breakpoints}++;
	}
	return @breakpoint_problems;
}

### The model

sub external_of { return -1 - $account{ $_[0] }{bucket} - 64 * $account{ $_[0] }{currency}; }

# The legs an applied event posts: [account, amount] pairs.
sub event_legs
{
	my ($e) = @_;
	my $amount = $e->{amount};

	return ([ $e->{account}, $amount ], [ external_of($e->{account}), -$amount ])
	  if $e->{kind} eq 'd';
	return ([ $e->{account}, -$amount ], [ external_of($e->{account}), $amount ])
	  if $e->{kind} eq 'w';
	return ([ $e->{account}, -$amount ], [ $e->{to}, $amount ])
	  if $e->{kind} eq 't' || $e->{kind} eq 'p';
	return () if $e->{kind} eq 'h' || $e->{kind} eq 'v';
	return ([ $e->{account}, -$amount ],
		map { [ $e->{payees}[$_], $e->{amounts}[$_] ] } 0 .. $#{ $e->{payees} });
}

# The balances the applied events leave, and the legs they post.
sub applied_legs
{
	my (%model, %model_legs);

	foreach my $e (grep { $_->{status} eq 'a' } map { $event{$_} } sort { $a <=> $b } keys %event)
	{
		foreach my $leg (event_legs($e))
		{
			my ($account, $amount) = @$leg;
			$model{$account} //= Math::BigInt->new(0);
			$model{$account}->badd($amount);
			$model_legs{"$account|$e->{id}|" . Math::BigInt->new($amount)->bstr} = 1;
		}
	}
	return (\%model, \%model_legs);
}

# The accounts whose ledger_balance() is not the model's.
sub balance_problems
{
	my ($model) = applied_legs();
	my @model_problems;

	foreach my $id (sort { $a <=> $b } keys %account)
	{
		my $expected = exists $model->{$id} ? $model->{$id}->bstr : '0';
		push @model_problems, "account $id: the model says $expected, ledger_balance() $account{$id}{balance}"
		  if $expected ne $account{$id}{balance};
	}
	push @model_problems, map { "account $_ is in the model, not in ledger.accounts" }
	  grep { !exists $account{$_} } sort { $a <=> $b } keys %$model;
	return @model_problems;
}

# The legs missing, posted by no applied event, or posted twice.
sub leg_problems
{
	my (undef, $model_legs) = applied_legs();
	my %actual_legs;

	foreach my $account (keys %legs_of)
	{
		$actual_legs{"$account|$_->{event}|$_->{amount}"}++ foreach @{ $legs_of{$account} };
	}
	return (
		(map { "leg (account|event|amount) $_ is missing" } grep { !$actual_legs{$_} } sort keys %$model_legs),
		(map { "leg $_ is posted $actual_legs{$_} times, but no applied event posts it" }
		  grep { !$model_legs->{$_} } sort keys %actual_legs),
		(map { "leg $_ is posted $actual_legs{$_} times" } grep { $actual_legs{$_} > 1 } sort keys %actual_legs));
}

### The EUR and MAL groups' model

# The limits of each spender over time: its changes in the order they were
# made (the order of ledger.limits' ids), each with the time its statement
# started (set_at) and, for the operator's, a time after it committed.
my %changes_of;

# Read the changes of limits from ledger.limits, and the times the
# operator's script ($operator_out, its output) noted after each of its
# changes.  Returns how many rows ledger.limits has, and how many changes
# the operator noted.
sub read_limits
{
	my ($node, $operator_out) = @_;
	my (%changed_at, $nlimit_rows);

	foreach my $line (grep { /^changed\|/ } split(/\n/, $operator_out))
	{
		my (undef, $k, $at) = split(/\|/, $line);
		$changed_at{$k} = $at;
	}
	foreach my $line (split(/\n/, $node->safe_psql(
		'postgres', q{
SELECT account_id, COALESCE(overdraft_limit::text, ''), COALESCE(max_amount::text, ''),
	   COALESCE(daily_debit_limit::text, ''), (extract(epoch FROM set_at) * 1000000)::bigint
  FROM ledger.limits ORDER BY id})))
	{
		my ($id, @f) = split(/\|/, $line, -1);
		my $set_at = pop @f;
		my $k = $nlimit_rows++ - scalar(keys %initial_limits);    # the operator's kth

		push @{ $changes_of{$id} }, {
			limits   => [ map { $_ eq '' ? undef : $_ } @f ],
			operator => $k >= 0,
			# the setup's were in force before any EUR event was enqueued
			from  => $k >= 0 ? $set_at : undef,
			until => $k >= 0 ? $changed_at{$k} : undef };
	}
	return ($nlimit_rows, scalar(keys %changed_at));
}

# The batches each worker ran, as the history shows them: their times.
my %batch_times;

# The time of the worker's last batch before one at $at, if any.
sub batch_before
{
	my ($bucket, $at) = @_;
	my $times = $batch_times{$bucket};
	my ($lo, $hi) = (0, scalar(@$times));

	while ($lo < $hi)
	{
		my $mid = int(($lo + $hi) / 2);
		if ($times->[$mid] < $at) { $lo = $mid + 1; }
		else                      { $hi = $mid; }
	}
	return $lo > 0 ? $times->[ $lo - 1 ] : undef;
}

# The limits a batch at $at may have decided an account's events under.  A
# worker reads the limits again in the first batch it starts after a change
# commits: so a batch before the change's statement began has the old ones,
# a batch after one that ran after the change had committed has the new
# ones, and one in between may have either.
sub limits_then
{
	my ($id, $at) = @_;
	my @changes = @{ $changes_of{$id} // [] };
	my $before = batch_before($account{$id}{bucket}, $at);
	my ($certain, $possible) = (-1, -1);

	foreach my $i (0 .. $#changes)
	{
		my $c = $changes[$i];

		$certain = $i
		  if !defined $c->{until} || (defined $before && $c->{until} < $before);
		$possible = $i if !defined $c->{from} || $c->{from} <= $at;
	}
	return (($certain < 0 ? ({ limits => [ undef, undef, undef ] }) : ()),
		@changes[ ($certain < 0 ? 0 : $certain) .. $possible ]);
}

# The model's accounts: balance, open holds, and the debits of the last day
# (all of the run), for the EUR group's accounts, the MAL group's, and the
# external accounts of both currencies; the holds, by id.  The MAL group
# is modelled like the EUR one: its payers, mallory's accounts, pay only
# the tenant's, which pay nothing once the setup placed its holds, and
# 3100 its relay, whose payments wait for what 3100 pays it (see
# $mal_relay).
my (%euro, %group_of, %hold, %asked);

sub owed
{
	my ($balance, $held) = @_;

	return $held - $balance > 0 ? $held - $balance : 0;
}

sub group_owed
{
	my $owed = 0;

	$owed += owed($_->{balance}, $_->{held}) foreach @{ $group_of{ $_[0] } };
	return $owed;
}

# May the account pay $amount, or hold it?  The reason why not, or undef.
# Its open holds count against its daily limit, and what a debit or hold
# makes it owe beyond its money against the supply bound of its bucket.
sub euro_refusal
{
	my ($a, $amount, $limits) = @_;
	my ($overdraft, $max, $daily) = @$limits;
	my $after = $a->{balance} - $amount;
	my $available = $after - $a->{held};

	return 'max_amount' if defined $max && $amount > $max;
	return 'daily_debit_limit'
	  if defined $daily && $a->{debits} + $a->{held} + $amount > $daily;
	if (defined $overdraft)
	{
		return 'overdraft_limit' if $available < -$overdraft;
	}
	elsif ($available < 0 && !$a->{negative})
	{
		return 'insufficient_funds';
	}
	my $more = owed($after, $a->{held}) - owed($a->{balance}, $a->{held});
	return $more > 0 && group_owed($a->{group}) + $more > $bound ? 'supply_limit' : undef;
}

# The outcome of an event under some limits: 'applied' and the amount it
# moves or holds, or the reason it is rejected.
sub euro_outcome
{
	my ($e, $limits) = @_;
	my $a = $euro{ $e->{account} };
	my $kind = $e->{kind};

	if ($kind eq 'd')
	{
		# a deposit debits the external account
		my $why = euro_refusal($euro{ external_of($e->{account}) }, $e->{amount}, [ undef, undef, undef ]);
		return $why ? ($why) : ('applied', $e->{amount});
	}
	if ($kind =~ /^[wtsh]$/)
	{
		my $why = euro_refusal($a, $e->{amount}, $limits);
		return $why ? ($why) : ('applied', $e->{amount});
	}
	my $h = $hold{ $e->{hold} };
	return ('hold_not_found') unless $h;
	return ("hold_$h->{state}") unless $h->{state} eq 'open';
	return ('applied', 0) if $kind eq 'v';
	my $amount = $asked{ $e->{id} }[0] // $h->{amount};
	return $amount > $h->{amount} ? ('exceeds_hold') : ('applied', $amount);
}

# Apply an applied event's effect, or a rejected hold's.
sub euro_apply
{
	my ($e) = @_;
	my $a = $euro{ $e->{account} };
	my $kind = $e->{kind};
	my $amount = $e->{amount};
	my $external = $euro{ external_of($e->{account}) };

	if ($kind eq 'h')
	{
		$hold{ $e->{id} } = {
			account => $e->{account},
			to      => $e->{to},
			amount  => $amount,
			state   => $e->{status} eq 'a' ? 'open' : 'rejected' };
		$a->{held} += $amount if $e->{status} eq 'a';
		return;
	}
	return unless $e->{status} eq 'a';
	if ($kind eq 'd')
	{
		$a->{balance} += $amount;
		$external->{balance} -= $amount;
		return;
	}
	if ($kind eq 'v' || $kind eq 'p')
	{
		my $h = $hold{ $e->{hold} } or return;

		$a->{held} -= $h->{amount};
		$h->{state} = $kind eq 'v' ? 'voided' : 'posted';
		$h->{ended_by} = $e->{id};
		$h->{posted} = $kind eq 'p' ? $amount : 0;
		return if $kind eq 'v';
	}
	$a->{balance} -= $amount;
	$a->{debits} += $amount;
	if ($kind eq 'w') { $external->{balance} += $amount; }
	elsif ($kind eq 's')
	{
		$euro{ $e->{payees}[$_] }{balance} += $e->{amounts}[$_] foreach 0 .. $#{ $e->{payees} };
	}
	else { $euro{ $e->{to} }{balance} += $amount; }
}

# Replay the events of the EUR and MAL groups, bucket by bucket, in the
# order their worker decided them.  Returns the events whose outcome the
# model does not predict, and the posts that moved another amount.
sub euro_problems
{
	my (@euro_problems, %seen);

	$seen{ $account{ $_->{account} }{bucket} }{ $_->{at} } = 1 foreach values %event;
	foreach my $id (keys %legs_of)
	{
		$seen{ $account{$id}{bucket} }{ $_->{at} } = 1 foreach @{ $legs_of{$id} };
	}
	$batch_times{$_} = [ sort { $a <=> $b } keys %{ $seen{$_} } ] foreach keys %seen;

	# the accounts, as they were before any event
	%euro = map {
		$_ => { balance => 0, held => 0, debits => 0, negative => $euro_flag{$_} // $mal_flag{$_} }
	} @spenders, @sinks, @vaults, @mal_own, @mal_victims, $mal_relay;
	foreach my $currency ($eur, $mal)
	{
		$euro{ -1 - $_ - 64 * $currency } = { balance => 0, held => 0, debits => 0, negative => 1 }
		  foreach 0, 1;
	}
	# What the accounts of a bucket owe in a currency is the sum of what each
	# owes: the model's accounts are all the accounts of their currencies.
	foreach my $id (keys %euro)
	{
		my $group = "$account{$id}{bucket} $account{$id}{currency}";

		$euro{$id}{group} = $group;
		push @{ $group_of{$group} }, $euro{$id};
	}
	# What each post asked for: [amount], undef for all of the hold.
	foreach my $call (grep { $_->{committed} && $_->{op}{fn} eq 'post' } @calls)
	{
		$asked{ $_->{id} } = [ $call->{op}{amount} ] foreach @{ $call->{events} };
	}

	foreach my $bucket (0, 1)
	{
		foreach my $e (sort { $a->{at} <=> $b->{at} || $a->{txid} <=> $b->{txid} || $a->{id} <=> $b->{id} }
			grep { is_modelled($_->{account}) && $account{ $_->{account} }{bucket} == $bucket } values %event)
		{
			my @limits = limits_then($e->{account}, $e->{at});
			my %predicted;
			foreach my $l (@limits)
			{
				my ($outcome, $amount) = euro_outcome($e, $l->{limits});
				$predicted{$outcome} //= $amount;
			}
			my $actual = $e->{status} eq 'a' ? 'applied' : $e->{reason};
			my $kind = { d => 'deposit', w => 'withdraw', t => 'transfer', s => 'disburse',
				h => 'hold', p => 'post', v => 'void' }->{ $e->{kind} };

			push @euro_problems,
			  "event $e->{id} ($e->{row}): $actual, the model says "
			  . join(' or ', sort keys %predicted) . ' (account: balance '
			  . $euro{ $e->{account} }{balance} . ", held $euro{ $e->{account} }{held}"
			  . ", debits $euro{ $e->{account} }{debits}; limits "
			  . join(' or ', map { '[' . join(', ', map { $_ // '-' } @{ $_->{limits} }) . ']' } @limits) . ')'
			  unless exists $predicted{$actual};
			push @euro_problems, "event $e->{id} ($e->{row}) moved $e->{amount}, the model says $predicted{applied}"
			  if $kind eq 'post' && $actual eq 'applied' && exists $predicted{applied}
			  && $predicted{applied} != $e->{amount};
			my $currency = $currency_code{ $account{ $e->{account} }{currency} };
			$stats{"$currency $kind: $actual"}++;
			$stats{'EUR decisions under limits changed in the run'}++
			  if grep { $_->{operator} } @limits;
			$stats{'EUR decisions either of two limits could make'}++ if keys %predicted > 1;
			$stats{'MAL payments out of the relay applied'}++
			  if $e->{account} == $mal_relay && $actual eq 'applied';
			$stats{"$currency partial posts applied"}++
			  if $kind eq 'post' && $actual eq 'applied' && $e->{amount} < $hold{ $e->{hold} }{amount};
			euro_apply($e);
		}
	}
	return @euro_problems;
}

# The EUR and MAL accounts whose balance or available balance is not the
# model's.
sub euro_balance_problems
{
	my @euro_balances;

	foreach my $id (sort { $a <=> $b } keys %euro)
	{
		my $a = $euro{$id};
		push @euro_balances, "account $id: the model says balance $a->{balance}, ledger_balance() $account{$id}{balance}"
		  if $a->{balance} != $account{$id}{balance};
		push @euro_balances,
		  "account $id: the model says available " . ($a->{balance} - $a->{held})
		  . ", ledger_available() $account{$id}{available}"
		  if $a->{balance} - $a->{held} != $account{$id}{available};
	}
	return @euro_balances;
}

# The supply rows ledger_health() must show once the queue drained: one
# for each bucket whose accounts owe more than 90% of the supply bound in
# a currency, with what they owe: max(0, -available) summed over them.
sub supply_warnings
{
	my %owes;

	foreach my $id (keys %account)
	{
		my $group = "$account{$id}{bucket}|$currency_code{ $account{$id}{currency} }";

		$owes{$group} //= 0;
		$owes{$group} -= $account{$id}{available} if $account{$id}{available} < 0;
	}
	my @owing = grep { $owes{$_} > 0.9 * $bound } sort keys %owes;
	$stats{'buckets owing over 90% of the bound at the end'} = scalar(@owing);
	return join("\n",
		map {
			my ($bucket, $code) = split(/\|/, $_);
			"supply|$bucket|in $code, its accounts owe $owes{$_} of the bound $bound"
		} sort { (split(/\|/, $a))[0] <=> (split(/\|/, $b))[0] || $a cmp $b } @owing);
}

# The holds whose status, or end, is not the model's.
sub hold_problems
{
	my ($node) = @_;
	my (%hold_status, %hold_end, @hold_problems);

	foreach my $line (split(/\n/, $node->safe_psql('postgres',
		"SELECT id, ledger_hold_status(id) FROM ledger.events WHERE kind = 'h'")))
	{
		my ($id, $status) = split(/\|/, $line);
		$hold_status{$id} = $status;
	}
	foreach my $line (split(/\n/, $node->safe_psql('postgres',
		'SELECT hold_id, status, COALESCE(event_id::text, \'\'), amount FROM ledger.hold_ends')))
	{
		my ($id, @end) = split(/\|/, $line, -1);
		$hold_end{$id} = join(' ', @end);
	}
	foreach my $id (sort { $a <=> $b } keys %hold_status)
	{
		my $h = $hold{$id};
		my $end = $h->{state} eq 'posted' ? "p $h->{ended_by} $h->{posted}"
		  : $h->{state} eq 'voided' ? "v $h->{ended_by} 0"
		  : 'none';

		push @hold_problems, "hold $id: ledger_hold_status() says $hold_status{$id}, the model $h->{state}"
		  if $hold_status{$id} ne $h->{state};
		push @hold_problems, "hold $id: ledger.hold_ends says " . ($hold_end{$id} // 'none') . ", the model $end"
		  if ($hold_end{$id} // 'none') ne $end;
		$stats{"$currency_code{ $account{ $h->{account} }{currency} } holds $h->{state} at the end"}++;
	}
	push @hold_problems, map { "hold $_ ended, but there is no such hold" }
	  grep { !exists $hold_status{$_} } sort keys %hold_end;
	return @hold_problems;
}

### Rejections

# The balances an account may have had when an event applied at $at was
# decided: after its last leg of an earlier batch, or after any of its legs
# of the same batch.
sub possible_balances
{
	my ($id, $at) = @_;
	my $before = 0;
	my @same;

	foreach my $leg (@{ $legs_of{$id} // [] })
	{
		$before = $leg->{balance} if $leg->{at} < $at;
		push @same, $leg->{balance} if $leg->{at} == $at;
	}
	return map { Math::BigInt->new($_) } ($before, @same);
}

# The most an account may have owed when an event applied at $at was
# decided (the XXX accounts hold nothing): max(0, -balance) over its
# possible balances.
sub most_owed
{
	my ($id, $at) = @_;
	my $most = 0;
	my $before = 0;

	foreach my $leg (@{ $legs_of{$id} // [] })
	{
		$before = $leg->{balance} if $leg->{at} < $at;
		$most = -$leg->{balance} if $leg->{at} == $at && -$leg->{balance} > $most;
	}
	return -$before > $most ? -$before : $most;
}

# The most the accounts of a bucket may have owed in a currency then.
my (%accounts_of_group, %most_owed_by_group);

sub group_most_owed
{
	my ($group, $at) = @_;

	return $most_owed_by_group{"$group $at"} //= do
	{
		my $sum = 0;
		$sum += most_owed($_, $at) foreach @{ $accounts_of_group{$group} };
		$sum;
	};
}

# The rejections of the events of the other accounts, the XXX ones, that
# were not due: for no balance the account could have had when the event
# was decided would it overdraw the account, or pass the supply bound.
sub unjustified_rejections
{
	my @unjustified;

	push @{ $accounts_of_group{"$account{$_}{bucket} $account{$_}{currency}"} }, $_ foreach keys %account;
	# (the EUR and MAL groups' rejections are euro_problems()'s)
	foreach my $e (grep { $_->{status} eq 'r' && !is_modelled($_->{account}) }
		map { $event{$_} } sort { $a <=> $b } keys %event)
	{
		my $amount = Math::BigInt->new($e->{amount});
		my ($debited, @credited);

		if ($e->{kind} eq 'd')
		{
			$debited  = external_of($e->{account});
			@credited = ([ $e->{account}, $amount ]);
		}
		elsif ($e->{kind} eq 'w')
		{
			$debited  = $e->{account};
			@credited = ([ external_of($e->{account}), $amount ]);
		}
		else
		{
			my @payees = $e->{kind} eq 't' ? ($e->{to}) : @{ $e->{payees} };
			my @amounts = $e->{kind} eq 't' ? ($e->{amount}) : @{ $e->{amounts} };

			$debited = $e->{account};
			@credited =
			  map { [ $payees[$_], Math::BigInt->new($amounts[$_]) ] }
			  grep { $account{ $payees[$_] }{bucket} == $account{$debited}{bucket} } 0 .. $#payees;
		}

		my $due;
		if ($e->{reason} eq 'insufficient_funds')
		{
			$due = !$account{$debited}{negative}
			  && grep { $_ < $amount } possible_balances($debited, $e->{at});
		}
		elsif ($e->{reason} eq 'supply_limit')
		{
			# what the bucket owed, but for the payer, and what the payer owes
			# once debited, could pass the bound
			my $group = "$account{$debited}{bucket} $account{$debited}{currency}";
			my $others = group_most_owed($group, $e->{at}) - most_owed($debited, $e->{at});

			$due = $account{$debited}{negative}
			  && grep { $others + ($amount > $_ ? $amount - $_ : 0) > $bound }
			  possible_balances($debited, $e->{at});
		}
		$stats{"rejected: $e->{reason}"}++;
		push @unjustified,
		  "event $e->{id} ($e->{row}) was rejected for $e->{reason}; balances of $debited then: "
		  . join(', ', possible_balances($debited, $e->{at}))
		  unless $due;
	}
	return @unjustified;
}

### Order

# The debits that may have waited for credits, by event id, and the events
# of each bucket, by id: disorder() finds them, held_back() reads them.
my (%may_wait, %events_of_bucket);

# Could the event have been held back in the batch at $at, which decided a
# later one?  As the worker holds back: an event that waits, and every
# later one naming an account named by one held back before it.
sub held_back
{
	my ($e, $at) = @_;
	my %waiting;

	foreach my $ev (@{ $events_of_bucket{ $account{ $e->{account} }{bucket} } })
	{
		last if $ev->{id} > $e->{id};
		next unless $ev->{at} > $at;
		my @named = grep { $_ ne '' } $ev->{account}, $ev->{to}, @{ $ev->{payees} };
		next unless $may_wait{ $ev->{id} } || grep { $waiting{$_} } @named;
		return 1 if $ev->{id} == $e->{id};
		$waiting{$_} = 1 foreach @named;
	}
	return 0;
}

# The events of the sessions @sessions applied before events of theirs
# enqueued earlier in the same bucket, but for the debits that may have
# waited for credits sent earlier in their transaction from another
# bucket, and the events held back behind them.
sub disorder
{
	my @sessions = @_;
	my @disorder;

	# Which debits may have waited: those of a payer that an event queued
	# earlier in the transaction (also one rolled back to a savepoint since)
	# credits from another bucket.
	my %call_of = map { ("$_->{session} $_->{n}" => $_) } @calls;
	foreach my $s (keys %ops)
	{
		my (%credited, $in_txn);

		foreach my $op (@{ $ops{$s} })
		{
			if ($op->{op} =~ /^(BEGIN|COMMIT|ROLLBACK)$/)
			{
				%credited = ();
				$in_txn = $op->{op} eq 'BEGIN';
				next;
			}
			next unless $op->{op} eq 'call';
			%credited = () unless $in_txn;
			my $call = $call_of{"$s $op->{n}"} or next;
			foreach my $e (@{ $call->{events} })
			{
				my ($kind, $payer, $to, undef, $payees) = split(/\|/, $e->{row}, -1);

				$may_wait{ $e->{id} } = 1 if $kind =~ /^[wtsh]$/ && $credited{$payer};
				foreach my $payee ($kind eq 's' ? ($payees =~ /(\d+)/g) : $kind =~ /^[tp]$/ ? ($to) : ())
				{
					$credited{$payee} = 1
					  if $account{$payee}{bucket} != $account{$payer}{bucket};
				}
			}
		}
	}
	$stats{'debits that may have waited for credits'} = scalar(keys %may_wait);

	# The events of each bucket, by id.
	push @{ $events_of_bucket{ $account{ $_->{account} }{bucket} } }, $_
	  foreach sort { $a->{id} <=> $b->{id} } values %event;

	foreach my $s (@sessions)
	{
		my %last;
		foreach my $call (grep { $_->{session} == $s && $_->{committed} } @calls)
		{
			foreach my $e (grep { !defined $_->{key} } @{ $call->{events} })
			{
				my $ev = $event{ $e->{id} } or next;
				my $bucket = $account{ $ev->{account} }{bucket};

				if ($last{$bucket} && $ev->{at} < $last{$bucket}{at})
				{
					if (held_back($last{$bucket}, $ev->{at}))
					{
						$stats{'events applied after later ones, held back for credits'}++;
					}
					else
					{
						push @disorder,
						  "session $s: event $e->{id} was applied before event $last{$bucket}{id}, enqueued earlier";
					}
				}
				$last{$bucket} = $ev;
			}
		}
	}
	return @disorder;
}

### Owners

# The events paid out of an owned account (or holding its money) that were
# returned to a committed call of a role that is not a member of its
# owner; and mallory's events paying out of another's account.
sub stolen_debits
{
	my @stolen;

	foreach my $e (map { $event{$_} } sort { $a <=> $b } keys %event)
	{
		my $owner = $owner_of{ $e->{account} };
		my @roles = map { $role_of{ $_->{call}{session} } }
		  grep { $_->{call}{committed} } @{ $elements_of_id{ $e->{id} } // [] };

		push @stolen, "mallory's event $e->{id} ($e->{row}) pays out of account $e->{account}"
		  if (grep { $_ eq 'mallory' } @roles) && !grep { $_ == $e->{account} } @mal_own, $mal_relay;
		next if !$owner || $e->{kind} eq 'd';
		push @stolen,
		  "event $e->{id} ($e->{row}) debits account $e->{account}, the ${owner}'s, for "
		  . (join(', ', @roles) || 'no one')
		  if !@roles || grep { !may_debit($_, $e->{account}) } @roles;
		$stats{"debits of ${owner}'s accounts"}++;
	}
	return @stolen;
}

### Coverage

# The SQLSTATEs the calls were to raise, sorted.
sub expected_errors
{
	my %errors;

	$errors{ $_->{op}{expect} } = 1 foreach grep { defined $_->{op}{expect} } @calls;
	return sort keys %errors;
}

1;
