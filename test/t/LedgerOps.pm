# The calls of 003_property.pl, and the answer each must get.
#
# The test's world: its accounts (the regular and whale accounts of the
# default currency, the tenant's, the EUR group of spenders, sinks and
# vaults with their limits, the MAL group of the hostile client), the roles
# its sessions run as, and who may debit what.  On it, random calls, valid
# and not, as the sessions' psql scripts make them.  Each call is
# predicted as it is generated, against what its session did before (the
# accounts it opened, the holds it made, the keys its role claimed): the
# SQLSTATE it raises, or none, and then the events it enqueues.  The
# hostile client's calls are predicted the same way, its spam guard
# included, by simulating its accounts, which no one else debits.
#
# Every choice is drawn with rand(): the test seeds it, and calls the
# generators in a fixed order (setup_calls, preclaimed_calls, gen_session
# for each session, gen_hostile, operator_script, closing_calls), so that a
# seed gives the same calls.  The calls live here so that the test reads as
# what it checks; LedgerModel.pm checks what the ledger made of them.
package LedgerOps;

use strict;
use warnings;

use Math::BigInt;
use Exporter 'import';

our @EXPORT = qw(
  $max_payees $guard_limit %initial_limits $nchanges %stats
  session_role setup_calls preclaimed_calls gen_session gen_hostile
  operator_script closing_calls session_script);
# for LedgerModel.pm
our @EXPORT_OK = qw(
  $bound %euro_flag %mal_flag %owner_of @spenders @sinks @vaults @mal_own
  @mal_victims $mal_relay may_debit is_modelled call_events);

### The accounts and the roles

my $bigint_max  = 9223372036854775807;
our $bound      = 140737488355327;    # ledger_supply_bound()
our $max_payees = 8;          # set in postgresql.conf
my $max_key     = 256;        # bytes
my @regular     = (1 .. 30);  # multiples of 7 may go negative
my @whales      = (1000, 1002, 1004, 1006);    # 1000 and 1002 may go negative
my $opening     = 50000;      # each regular account's first deposit
# The tenant's accounts: like the regular ones, but owned by the role
# tenant, so that only its members may debit them.
my @tenant_accounts = (3000 .. 3003);
my %shared_flag = (
	(map { $_ => ($_ % 7 == 0 ? 1 : 0) } @regular),
	(map { $_ => 0 } @tenant_accounts),
	1000 => 1, 1002 => 1, 1004 => 0, 1006 => 0);

# The EUR group.  An account's bucket is its id mod 2.
our @spenders = (2000 .. 2007);
our @sinks    = (2100, 2101);
# Two vaults, one in each bucket, take and give back amounts near the
# supply bound, by deposits and withdrawals only.
our @vaults   = (2200, 2201);
our %euro_flag = ((map { $_ => 0 } @spenders, @sinks, @vaults), 2006 => 1, 2007 => 1);
my $euro_opening = 40000;    # each spender's first deposit
# The limits the spenders start with: [overdraft_limit, max_amount,
# daily_debit_limit], undef for none.  2005 may overdraw by 0: it is
# refused for overdraft_limit where it would be for insufficient_funds;
# 2007, which may go negative, is held to its overdraft limit.  2004 and
# 2005 get small deposits only, and run short of money.
our %initial_limits = (
	2000 => [ undef, 8000,  undef ],
	2001 => [ 15000, undef, undef ],
	2002 => [ undef, undef, 60000 ],
	2003 => [ 5000,  7000,  50000 ],
	2005 => [ 0,     undef, undef ],
	2007 => [ 20000, undef, undef ]);
my @poor = (2004, 2005);
# The operator changes the limits of these a dozen times in the run; the
# others keep theirs, so that every reason to refuse comes up whatever the
# seed.
my @changing = (2000, 2001, 2002, 2006, 2007);
our $nchanges = 12;
our %stats;    # what happened, for the coverage checks at the end

# Roles.  The sessions run as two operators: prop_a, and prop_b, which is
# also a member of tenant (odd sessions are prop_a's, even ones prop_b's);
# the setup as the superuser; the hostile client as mallory, a member of
# ledger_client only.
sub session_role { return $_[0] % 2 ? 'prop_a' : 'prop_b'; }
my %member_of = (prop_b => { tenant => 1 });
our %owner_of = ((map { $_ => 'tenant' } @tenant_accounts));

# The hostile client's group, in a currency of its own, MAL: two accounts
# of mallory's (one in each bucket), which only it debits, and two of the
# tenant's, which it may only pay.  The setup places a hold on each of the
# tenant's, which mallory tries to post and void.
our @mal_own    = (3100, 3101);
our @mal_victims = (3200, 3201);
# mallory's relay, in bucket 1, empty: a transaction pays it from 3100, in
# bucket 0, then pays out of it what it got; the payment waits for the
# credit (order inside a transaction).  The model credits it as it replays
# bucket 0, before bucket 1's events: that is the order the transactions
# ask for.
our $mal_relay   = 3103;
our %mal_flag    = map { $_ => 0 } @mal_own, @mal_victims, $mal_relay;
$owner_of{$_} = 'mallory' foreach @mal_own, $mal_relay;
$owner_of{$_} = 'tenant' foreach @mal_victims;
my $mal_opening    = 2000000;
my $victim_opening = 100000;
our $guard_limit   = 3;    # ledger.max_pending_per_account, mallory's

# May role debit the account?  Superusers (the setup) may debit anything.
sub may_debit
{
	my ($role, $id) = @_;
	my $owner = defined $id ? $owner_of{$id} : undef;

	return 1 if !defined $owner || $role eq 'superuser' || $role eq $owner;
	return $member_of{$role}{$owner} // 0;
}

### Generating the calls

sub chance { return rand() < $_[0]; }
sub pick   { return $_[ int(rand(scalar @_)) ]; }

# A session's private accounts are 10000 * session + 1 .. 40; ids from
# 900000 are never opened.
sub private_base { return 10000 * $_[0]; }
sub unknown_account { return 900000 + int(rand(50)); }
sub invalid_account { return pick(0, -1, -2, -3 - int(rand(1000))); }

sub account_exists
{
	my ($g, $id) = @_;

	return exists $shared_flag{$id} || exists $euro_flag{$id} || exists $mal_flag{$id}
	  || exists $g->{accounts}{$id};
}

sub is_euro { return defined $_[0] && exists $euro_flag{ $_[0] }; }
sub is_mal { return defined $_[0] && exists $mal_flag{ $_[0] }; }
# The accounts whose every event the model predicts: the EUR and MAL groups.
sub is_modelled { return is_euro($_[0]) || is_mal($_[0]); }
sub currency_of { return is_euro($_[0]) ? 'EUR' : is_mal($_[0]) ? 'MAL' : 'XXX'; }

sub may_go_negative
{
	my ($g, $id) = @_;

	return $shared_flag{$id} // $g->{accounts}{$id} // 0;
}

sub regular_account
{
	my ($g) = @_;
	my $r = rand();

	return pick(@regular) if $r < 0.76;
	return pick(@tenant_accounts) if $r < 0.80;
	if ($r < 0.88)
	{
		my @own = sort { $a <=> $b } keys %{ $g->{accounts} };
		return @own ? pick(@own) : pick(@regular);
	}
	return private_base($g->{session}) + 1 + int(rand(40)) if $r < 0.92;
	return unknown_account() if $r < 0.95;
	return invalid_account() if $r < 0.985;
	return undef;
}

sub whale_account
{
	my $r = rand();

	return pick(@whales) if $r < 0.92;
	return unknown_account() if $r < 0.96;
	return invalid_account() if $r < 0.99;
	return undef;
}

sub small_amount
{
	return chance(0.3) ? 1 + int(rand(100)) : 1 + int(rand(20000));
}

# Huge: beyond the supply bound, or a half or a third of it (a bucket can
# owe at most a half and a third of them at once).
sub huge_amount
{
	return pick(
		$bigint_max,
		$bigint_max - int(rand(1000)),
		4611686018427387904 + int(rand(1000000)),
		6917529027641081856 + int(rand(1000)),
		$bound + 1 + int(rand(1000)),
		int($bound / 2) + int(rand(1000)),
		int($bound / 3) + int(rand(1000)));
}

# An amount: mostly a small one; zero, negative or NULL sometimes; a huge
# one with probability $huge.
sub amount
{
	my ($huge) = @_;
	my $r = rand();

	return huge_amount() if $r < $huge;
	return small_amount() if $r < 0.88;
	return 0 if $r < 0.92;
	return pick(-small_amount(), -$bigint_max) if $r < 0.96;
	return undef if $r < 0.975;
	return small_amount();
}

# Huge amounts from a regular account only if it cannot afford them.
sub huge_chance
{
	my ($g, $payer, $whale) = @_;

	return 0.5 if $whale;
	return 0.05 if !defined $payer || !account_exists($g, $payer);
	return may_go_negative($g, $payer) ? 0 : 0.05;
}

# An idempotency key: none, private to the session (so reused now and
# then, mostly with other arguments), or too long.  (The keys shared by
# sessions, g-N, are the shared requests' below.)
my $nprivate_keys = 1000;

sub idempotency_key
{
	my ($g, $autocommit) = @_;
	my $s = $g->{session};
	my $r = rand();

	return undef if $r < 0.55;
	return "s$s-" . int(rand($nprivate_keys)) if $r < 0.96;
	return pick("s$s-" . ('y' x ($max_key - length("s$s-"))),
		'x' x ($max_key + 1 + int(rand(50))));
}

sub private_key
{
	my ($g) = @_;
	my $s = $g->{session};

	return chance(0.3) ? undef : "s$s-" . int(rand($nprivate_keys));
}

# An array of n values from a generator, sometimes with a NULL.
sub some_values
{
	my ($n, $gen) = @_;
	my @values = map { $gen->() } 1 .. $n;

	$values[ int(rand($n)) ] = undef if $n > 0 && chance(0.03);
	return \@values;
}

# Sometimes an array turns into NULL, two-dimensional or empty.
sub spoil_array
{
	my ($array) = @_;
	my $r = rand();

	return undef if $r < 0.01;
	return { dims => 2, elems => [ 1, 2, 3, 4 ] } if $r < 0.02;
	return [] if $r < 0.03;
	return $array;
}

sub gen_open
{
	my ($g) = @_;
	my $r = rand();
	my ($id, $flag);

	if ($r < 0.6)
	{
		$id = private_base($g->{session}) + 1 + int(rand(40));
		$flag = $g->{accounts}{$id} // (chance(0.3) ? 1 : 0);
		$flag = 1 - $flag if chance(0.1);
	}
	elsif ($r < 0.9)
	{
		$id = pick(@regular, @whales, @tenant_accounts);
		$flag = chance(0.8) ? $shared_flag{$id} : 1 - $shared_flag{$id};
	}
	else
	{
		$id = pick(undef, invalid_account());
		$flag = 0;
	}
	$flag = undef if defined $id && chance(0.03);
	return {
		fn        => 'open',
		account   => $id,
		flag      => $flag,
		omit_flag => defined $flag && !$flag && chance(0.3),
		# the tenant's accounts are opened again with their owner, or none
		owner => defined $id && $owner_of{$id} && chance(0.7) ? $owner_of{$id} : undef };
}

sub gen_external
{
	my ($g, $fn, $whale, $autocommit) = @_;
	my $account = $whale ? whale_account() : regular_account($g);
	my $huge =
	    $fn eq 'withdraw' ? ($whale ? 0.5 : 0.03)
	  : $whale            ? 0.5
	  :                     0;

	return {
		fn      => $fn,
		account => $account,
		amount  => amount($huge),
		key     => idempotency_key($g, $autocommit) };
}

sub gen_transfer
{
	my ($g, $whale, $autocommit) = @_;
	my $from = $whale ? whale_account() : regular_account($g);
	my $to   = $whale ? whale_account() : regular_account($g);

	$to = $from if chance(0.03);
	return {
		fn     => 'transfer',
		from   => $from,
		to     => $to,
		amount => amount(huge_chance($g, $from, $whale)),
		key    => idempotency_key($g, $autocommit) };
}

sub gen_disburse
{
	my ($g, $whale, $autocommit) = @_;
	my $from = $whale ? whale_account() : regular_account($g);
	my $n = chance(0.05) ? $max_payees + 1 + int(rand(2)) : 1 + int(rand(5));
	my @payees;

	while (@payees < $n)
	{
		my $p = $whale ? whale_account() : regular_account($g);

		# the payer and duplicates only now and then
		next if defined $p && defined $from && $p == $from && !chance(0.1);
		next if defined $p && (grep { defined $_ && $_ == $p } @payees) && !chance(0.1);
		push @payees, $p;
	}
	my $huge = huge_chance($g, $from, $whale);
	my $amounts = some_values($n + (chance(0.03) ? pick(-1, 1) : 0),
		sub { amount($huge) });

	# the generators give NULL elements; the arrays themselves get spoiled
	return {
		fn      => 'disburse',
		from    => $from,
		payees  => spoil_array(\@payees),
		amounts => spoil_array($amounts),
		key     => idempotency_key($g, $autocommit) };
}

sub gen_transfer_many
{
	my ($g, $whale) = @_;
	my $n = chance(0.05) ? 0 : 1 + int(rand(5));
	my (@from, @to, @amounts, @keys);

	for (1 .. $n)
	{
		my $from = $whale ? whale_account() : regular_account($g);
		my $to   = $whale ? whale_account() : regular_account($g);

		$to = $from if chance(0.02);
		if (@from && chance(0.1))
		{
			# the very same transfer again: with the same key, one event
			my $i = int(rand(@from));
			($from, $to) = ($from[$i], $to[$i]);
			push @amounts, $amounts[$i];
			push @keys,    $keys[$i];
		}
		else
		{
			push @amounts, amount(huge_chance($g, $from, $whale));
			push @keys,    chance(0.2) && @keys ? pick(@keys) : private_key($g);
		}
		push @from, $from;
		push @to,   $to;
	}
	push @amounts, small_amount() if chance(0.02);
	my $keys;
	if (chance(0.4))
	{
		$keys = \@keys;
		push @keys, private_key($g) if chance(0.03);
		$keys = { dims => 2, elems => [ 'a', 'b', 'c', 'd' ] } if chance(0.01);
	}
	return {
		fn      => 'transfer_many',
		from    => spoil_array(\@from),
		to      => spoil_array(\@to),
		amounts => spoil_array(\@amounts),
		keys    => $keys };
}

### The EUR group's calls

# Every hold call of a session, and its calls with a key of their own
# (holds, posts, voids), by session: generated, whether or not they were
# valid or were rolled back later.
my (%hold_calls, %keyed_calls, %keyed_money_calls);

# A payee of a spender: another spender of its bucket, or a sink.
sub euro_payee
{
	my ($payer) = @_;

	return pick((grep { $_ % 2 == $payer % 2 && $_ != $payer } @spenders), @sinks);
}

# Now and then a payee that breaks the rules: the payer itself, an account
# of the other currency, one never opened.
sub euro_spoiled_payee
{
	my ($payer) = @_;
	my $r = rand();

	return $payer if $r < 0.02;
	return pick(@regular) if $r < 0.05;
	return unknown_account() if $r < 0.06;
	return euro_payee($payer);
}

# An amount up to $max, now and then not a valid one.
sub euro_amount
{
	my ($max) = @_;
	my $r = rand();

	return 0 if $r < 0.01;
	return -1 - int(rand(100)) if $r < 0.02;
	return undef if $r < 0.025;
	return pick($bigint_max, $bound + 1) if $r < 0.03;
	return 1 + int(rand($max));
}

# An amount for a vault: beyond the bound, or near it, or a fraction of it.
sub vault_amount
{
	return pick(
		$bigint_max,
		$bound + 1 + int(rand(1000)),
		$bound - 3000000 - int(rand(1000000)),
		int($bound / 2) + int(rand(1000)),
		int($bound / 4) + int(rand(1000)));
}

# A hold: from a spender to one of its payees, without a timeout or with
# one that outlasts the run, now and then one that is no timeout.  Its
# key, if any, is the call's own: only a retry of this very call gets its
# event back, so that a post naming the call names this hold.
sub gen_hold
{
	my ($g, $n) = @_;
	my $s    = $g->{session};
	my $from = pick(@spenders);
	my $r    = rand();

	return {
		fn      => 'hold',
		from    => chance(0.01) ? undef : $from,
		to      => euro_spoiled_payee($from),
		amount  => euro_amount(12000),
		timeout => $r < 0.55 ? undef
		  : $r < 0.96 ? "'1 hour'"
		  : pick("'0 seconds'", "'-5 minutes'"),
		key => chance(0.4) ? "h$s-$n" : undef };
}

# A post or void: of a hold the session made and still has (mostly a
# recent one, likelier to be open), of one it lost to a rollback or that
# failed (its id reads as NULL), or of an id that is no hold.  A post asks
# for all of the hold, part of it, all of it by amount, more than it, or
# an amount that is not one.
sub gen_hold_end
{
	my ($g, $n, $fn) = @_;
	my $s    = $g->{session};
	my @live = sort { $a <=> $b } keys %{ $g->{holds} };
	my @dead = grep { !exists $g->{holds}{$_} } @{ $hold_calls{$s} // [] };
	my $r    = rand();
	my $c    = { fn => $fn, session => $s, key => chance(0.4) ? "pv$s-$n" : undef };

	if (@live && $r < 0.87)
	{
		my $recent = @live < 4 ? scalar(@live) : 4;
		$c->{ref} = chance(0.6) ? $live[ -1 - int(rand($recent)) ] : pick(@live);
	}
	elsif (@dead && $r < 0.94)
	{
		$c->{ref} = pick(@dead);
	}
	else
	{
		# 1 is the setup's first deposit
		$c->{literal} = pick(0, -7, 1, $bigint_max);
	}
	if ($fn eq 'post')
	{
		my $held =
		  defined $c->{ref} && $g->{holds}{ $c->{ref} }
		  ? $g->{holds}{ $c->{ref} }{amount}
		  : 1000;
		my $a = rand();

		# a hold beyond the bound: ask for all of it, or for too much
		$held = 1000 if $held > $bound && chance(0.5);
		$c->{amount} =
		    $held > $bound ? pick(undef, $held, $bigint_max)
		  : $a < 0.03 ? $bigint_max
		  : $a < 0.40 ? undef
		  : $a < 0.75 ? 1 + int(rand($held))
		  : $a < 0.80 ? $held
		  : $a < 0.95 ? $held + 1 + int(rand(500))
		  :             pick(0, -5);
	}
	return $c;
}

# A call of the EUR group: money in and out of the spenders and between
# them, holds and their ends, and now and then a retry of one of the
# session's holds, posts or voids with its key: the very same call again.
sub gen_euro
{
	my ($g, $n, $autocommit) = @_;
	my $s     = $g->{session};
	my $payer = pick(@spenders);
	my $r     = rand();

	if ($r < 0.05 && @{ $keyed_calls{$s} // [] })
	{
		my $orig = pick(@{ $keyed_calls{$s} });

		return { %$orig, retry => $orig->{n} };
	}
	if (chance(0.04))
	{
		return {
			fn      => chance(0.6) ? 'deposit' : 'withdraw',
			account => pick(@vaults),
			amount  => vault_amount(),
			key     => idempotency_key($g, $autocommit) };
	}
	if ($r < 0.19)
	{
		my $account = pick(@spenders);

		return {
			fn      => 'deposit',
			account => $account,
			amount  => euro_amount((grep { $_ == $account } @poor) ? 2000 : 30000),
			key     => idempotency_key($g, $autocommit) };
	}
	return {
		fn      => 'withdraw',
		account => $payer,
		amount  => euro_amount(12000),
		key     => idempotency_key($g, $autocommit) }
	  if $r < 0.30;
	return {
		fn     => 'transfer',
		from   => $payer,
		to     => euro_spoiled_payee($payer),
		amount => euro_amount(12000),
		key    => idempotency_key($g, $autocommit) }
	  if $r < 0.43;
	if ($r < 0.50)
	{
		my @payees = ((grep { $_ % 2 == $payer % 2 && $_ != $payer } @spenders), @sinks);
		my @chosen;

		while (@chosen < 1 + int(rand(3)))
		{
			my $p = splice(@payees, int(rand(@payees)), 1);
			push @chosen, $p;
		}
		push @chosen, pick(@regular) if chance(0.03);
		return {
			fn      => 'disburse',
			from    => $payer,
			payees  => \@chosen,
			amounts => [ map { euro_amount(5000) } @chosen ],
			key     => idempotency_key($g, $autocommit) };
	}
	return gen_hold($g, $n) if $r < 0.70;
	return gen_hold_end($g, $n, 'post') if $r < 0.88;
	return gen_hold_end($g, $n, 'void');
}

# The SQL of a call.
sub sql_int { return defined $_[0] ? "$_[0]" : 'NULL'; }
sub sql_text { return defined $_[0] ? "'$_[0]'" : 'NULL'; }

sub sql_array
{
	my ($array, $type, $quote) = @_;

	return "NULL::$type\[]" unless defined $array;
	if (ref($array) eq 'HASH')
	{
		my @e = map { $quote->($_) } @{ $array->{elems} };
		return "ARRAY[[$e[0],$e[1]],[$e[2],$e[3]]]::$type\[]";
	}
	return "'{}'::$type\[]" unless @$array;
	return 'ARRAY[' . join(',', map { $quote->($_) } @$array) . "]::$type\[]";
}

sub call_sql
{
	my ($c) = @_;
	my $key = defined $c->{key} ? ', ' . sql_text($c->{key}) : (chance(0.5) ? ', NULL' : '');

	if ($c->{fn} eq 'open')
	{
		return 'ledger_open_account(' . sql_int($c->{account})
		  . ($c->{omit_flag} ? '' : ', ' . (defined $c->{flag} ? ($c->{flag} ? 'true' : 'false') : 'NULL'))
		  . (defined $c->{currency} ? ", '$c->{currency}'" : '')
		  . (defined $c->{owner} ? ", owner => '$c->{owner}'" : '')
		  . ')';
	}
	return $c->{raw} if $c->{fn} eq 'raw';
	if ($c->{fn} eq 'limits')
	{
		return 'ledger_set_limits(' . join(', ', $c->{account}, map { sql_int($_) } @{ $c->{limits} }) . ')';
	}
	if ($c->{fn} eq 'hold')
	{
		return 'ledger_hold(' . join(', ', map { sql_int($c->{$_}) } qw(from to amount))
		  . (defined $c->{timeout} || defined $c->{key} ? ', ' . ($c->{timeout} // 'NULL') : '')
		  . (defined $c->{key} ? ', ' . sql_text($c->{key}) : '') . ')';
	}
	if ($c->{fn} eq 'post' || $c->{fn} eq 'void')
	{
		my $hold =
		  defined $c->{ref}
		  ? "(SELECT result::bigint FROM prop_log WHERE session = "
		  . ($c->{ref_session} // $c->{session})
		  . " AND n = $c->{ref} AND ok)"
		  : sql_int($c->{literal});
		my @args = ($hold);

		push @args, sql_int($c->{amount})
		  if $c->{fn} eq 'post' && (defined $c->{amount} || defined $c->{key} || chance(0.5));
		push @args, sql_text($c->{key}) if defined $c->{key};
		return "ledger_$c->{fn}(" . join(', ', @args) . ')';
	}
	if ($c->{fn} eq 'deposit' || $c->{fn} eq 'withdraw')
	{
		return "ledger_$c->{fn}(" . sql_int($c->{account}) . ', ' . sql_int($c->{amount}) . "$key)";
	}
	if ($c->{fn} eq 'transfer')
	{
		return 'ledger_transfer(' . sql_int($c->{from}) . ', ' . sql_int($c->{to}) . ', '
		  . sql_int($c->{amount}) . "$key)";
	}
	if ($c->{fn} eq 'disburse')
	{
		return 'ledger_disburse(' . sql_int($c->{from}) . ', '
		  . sql_array($c->{payees}, 'bigint', \&sql_int) . ', '
		  . sql_array($c->{amounts}, 'bigint', \&sql_int) . "$key)";
	}
	return 'ledger_transfer_many('
	  . join(', ', map { sql_array($c->{$_}, 'bigint', \&sql_int) } qw(from to amounts))
	  . (defined $c->{keys} || chance(0.5) ? ', ' . sql_array($c->{keys}, 'text', \&sql_text) : '')
	  . ')';
}

### Predicting what the enqueue functions say

sub key_too_long { return defined $_[0] && length($_[0]) > $max_key; }

# '2202E' or '22004' when an array is two-dimensional or holds a NULL.
sub array_problem
{
	my ($array) = @_;

	return '2202E' if ref($array) eq 'HASH';
	return '22004' if grep { !defined } @$array;
	return undef;
}

# The SQLSTATE the call raises, in the order the C code checks, or undef
# when it is valid: its arguments, the accounts it names, whether the
# caller may debit the payer, then whether its idempotency keys are the
# caller's for another request.
sub predict
{
	my ($g, $c) = @_;
	my $problem = predict_args($g, $c);

	return $problem if defined $problem;
	return '42501'
	  if grep { !may_debit($g->{role}, $_) } debited_accounts($c);
	return key_conflict($g, $c);
}

# The accounts a call debits: the payer of a withdrawal, a payment, a hold,
# or of the hold a post or void ends.
sub debited_accounts
{
	my ($c) = @_;
	my $fn = $c->{fn};

	return ($c->{account}) if $fn eq 'withdraw';
	return ($c->{from}) if $fn =~ /^(transfer|disburse|hold)$/;
	return ($c->{hold}{from}) if ($fn eq 'post' || $fn eq 'void') && $c->{hold};
	return @{ $c->{from} } if $fn eq 'transfer_many';
	return ();
}

# The request each keyed event of a call makes: [key, request], the request
# as a string holding what the C code compares (keys.c): the kind, the
# accounts, the amounts, the hold (or a hold's timeout).  The elements of
# a ledger_transfer_many are transfers like ledger_transfer's.
sub call_requests
{
	return map { [ $_->{key}, $_->{request} ] } grep { defined $_->{key} } call_elements($_[0]);
}

# The events a valid call asks for, in order: the account paying (or
# deposited to), the key, the request, the amount, and the hold a post or
# void names (by the call that made it).
sub call_elements
{
	my ($c) = @_;
	my $fn = $c->{fn};

	if ($fn eq 'transfer_many')
	{
		return map {
			+{
				payer   => $c->{from}[$_],
				key     => ref($c->{keys}) eq 'ARRAY' ? $c->{keys}[$_] : undef,
				request => "t|$c->{from}[$_],$c->{to}[$_]|$c->{amounts}[$_]",
				amount  => $c->{amounts}[$_] }
		} 0 .. $#{ $c->{from} };
	}
	return () unless $fn =~ /^(deposit|withdraw|transfer|disburse|hold|post|void)$/;
	my $hold = defined $c->{ref} ? ($c->{ref_session} // $c->{session}) . ":$c->{ref}" : undef;
	my $amount = $c->{amount};

	if ($fn eq 'disburse')
	{
		$amount = 0;
		$amount += $_ foreach @{ $c->{amounts} };
	}
	my $request =
	    $fn eq 'deposit' || $fn eq 'withdraw' ? substr($fn, 0, 1) . "|$c->{account}|$c->{amount}"
	  : $fn eq 'transfer' ? "t|$c->{from},$c->{to}|$c->{amount}"
	  : $fn eq 'disburse'
	  ? 's|' . join(',', $c->{from}, @{ $c->{payees} }) . '|' . join(',', @{ $c->{amounts} })
	  : $fn eq 'hold' ? "h|$c->{from},$c->{to}|$c->{amount}|" . ($c->{timeout} // '')
	  : $fn eq 'post' ? "p|$hold|" . ($c->{amount} // 0)
	  :                 "v|$hold";
	return ({
		payer => $fn eq 'deposit' || $fn eq 'withdraw' ? $c->{account}
		: $fn eq 'post' || $fn eq 'void' ? $c->{hold}{from}
		: $c->{from},
		key     => $c->{key},
		request => $request,
		amount  => $amount,
		hold    => $c->{ref} });
}

# '23L01' if a key of the call names another request: another of the same
# call, or one the caller's role made with it before.
sub key_conflict
{
	my ($g, $c) = @_;
	my %in_call;

	foreach my $r (call_requests($c))
	{
		my ($key, $request) = @$r;

		return '23L01' if exists $in_call{$key} && $in_call{$key} ne $request;
		$in_call{$key} = $request;
	}
	return (grep { exists $g->{keys}{$_} && $g->{keys}{$_} ne $in_call{$_} } keys %in_call)
	  ? '23L01' : undef;
}

# A valid call claims its keys for the caller's role.
sub claim_keys
{
	my ($g, $c) = @_;

	$g->{keys}{ $_->[0] } //= $_->[1] foreach call_requests($c);
	return;
}

# The SQLSTATE of the arguments and the accounts named.
sub predict_args
{
	my ($g, $c) = @_;
	my $fn = $c->{fn};

	if ($fn eq 'hold')
	{
		return '22004' unless defined $c->{from} && defined $c->{to} && defined $c->{amount};
		return '22023'
		  if $c->{from} <= 0 || $c->{to} <= 0 || $c->{from} == $c->{to} || $c->{amount} <= 0;
		return '22023' if defined $c->{timeout} && $c->{timeout} ne "'1 hour'";
		return '23503' unless account_exists($g, $c->{from}) && account_exists($g, $c->{to});
		return currency_of($c->{from}) eq currency_of($c->{to}) ? undef : '22023';
	}
	if ($fn eq 'post' || $fn eq 'void')
	{
		# a hold call rolled back, or that failed, leaves no id to read
		return '22004' if defined $c->{ref} && !$c->{hold};
		return '22023' if $fn eq 'post' && defined $c->{amount} && $c->{amount} <= 0;
		return defined $c->{ref} ? undef : '42704';
	}
	if ($fn eq 'open')
	{
		return '22004' unless defined $c->{account} && (defined $c->{flag} || $c->{omit_flag});
		return '22023' if $c->{account} <= 0;
		return undef unless account_exists($g, $c->{account});
		return '42710' if ($owner_of{ $c->{account} } // '') ne ($c->{owner} // '');
		return may_go_negative($g, $c->{account}) == ($c->{flag} // 0) ? undef : '42710';
	}
	if ($fn eq 'deposit' || $fn eq 'withdraw')
	{
		return '22004' unless defined $c->{account} && defined $c->{amount};
		return '22023' if $c->{account} <= 0 || $c->{amount} <= 0;
		return '22001' if key_too_long($c->{key});
		return account_exists($g, $c->{account}) ? undef : '23503';
	}
	if ($fn eq 'transfer')
	{
		return '22004' unless defined $c->{from} && defined $c->{to} && defined $c->{amount};
		return '22023'
		  if $c->{from} <= 0 || $c->{to} <= 0 || $c->{from} == $c->{to} || $c->{amount} <= 0;
		return '22001' if key_too_long($c->{key});
		return '23503' unless account_exists($g, $c->{from}) && account_exists($g, $c->{to});
		return currency_of($c->{from}) eq currency_of($c->{to}) ? undef : '22023';
	}
	if ($fn eq 'disburse')
	{
		return '22004' unless defined $c->{from} && defined $c->{payees} && defined $c->{amounts};
		return '22023' if $c->{from} <= 0;
		foreach my $array ($c->{payees}, $c->{amounts})
		{
			my $problem = array_problem($array);
			return $problem if $problem;
		}
		my @payees  = @{ $c->{payees} };
		my @amounts = @{ $c->{amounts} };
		return '22023' if !@payees || @payees != @amounts;
		return '54000' if @payees > $max_payees;
		my $total = Math::BigInt->new(0);
		foreach my $i (0 .. $#payees)
		{
			return '22023' if $payees[$i] <= 0 || $payees[$i] == $c->{from} || $amounts[$i] <= 0;
			$total->badd($amounts[$i]);
			return '22003' if $total > $bigint_max;
		}
		my %seen;
		return '22023' if grep { $seen{$_}++ } @payees;
		return '22001' if key_too_long($c->{key});
		return '23503' if grep { !account_exists($g, $_) } $c->{from}, @payees;
		return (grep { currency_of($_) ne currency_of($c->{from}) } @payees) ? '22023' : undef;
	}

	# transfer_many
	return '22004' unless defined $c->{from} && defined $c->{to} && defined $c->{amounts};
	foreach my $array ($c->{from}, $c->{to}, $c->{amounts})
	{
		my $problem = array_problem($array);
		return $problem if $problem;
	}
	my $n = @{ $c->{from} };
	return '22023' if @{ $c->{to} } != $n || @{ $c->{amounts} } != $n;
	if (defined $c->{keys})
	{
		return '2202E' if ref($c->{keys}) eq 'HASH';
		return '22023' if @{ $c->{keys} } != $n;
	}
	foreach my $i (0 .. $n - 1)
	{
		my ($from, $to, $amount) = ($c->{from}[$i], $c->{to}[$i], $c->{amounts}[$i]);

		return '22023' if $from <= 0 || $to <= 0 || $from == $to || $amount <= 0;
		return '22001' if $c->{keys} && key_too_long($c->{keys}[$i]);
	}
	# each element in turn: its accounts exist, and the caller may debit it
	foreach my $i (0 .. $n - 1)
	{
		return '23503'
		  unless account_exists($g, $c->{from}[$i]) && account_exists($g, $c->{to}[$i]);
		return '42501' unless may_debit($g->{role}, $c->{from}[$i]);
	}
	return undef;
}

# The events a valid call enqueues, as the rows of ledger.events would
# show them (kind|account_id|to_account|amount|to_accounts|amounts|
# hold_id|whether it has a timeout), with their idempotency keys.  A
# post's or void's hold_id is HOLD until the hold's id is known; a post of
# all of a hold has amount *: the amount of the hold if it is applied, 0 if
# not.
sub call_events
{
	my ($c) = @_;
	my $fn = $c->{fn};

	return ([ join('|', 'h', $c->{from}, $c->{to}, $c->{amount}, '', '', '', defined $c->{timeout} ? 't' : 'f'),
		$c->{key} ])
	  if $fn eq 'hold';
	if ($fn eq 'post' || $fn eq 'void')
	{
		my $hold = $c->{hold};

		return ([
			join('|', substr($fn, 0, 1), $hold->{from}, $hold->{to},
				$fn eq 'void' ? 0 : $c->{amount} // '*', '', '', 'HOLD', 'f'),
			$c->{key} ]);
	}
	return map { [ "$_->[0]||f", $_->[1] ] } money_events($c);
}

sub money_events
{
	my ($c) = @_;
	my $fn = $c->{fn};

	return () if $fn eq 'open';
	return ([ join('|', substr($fn, 0, 1), $c->{account}, '', $c->{amount}, '', ''), $c->{key} ])
	  if $fn eq 'deposit' || $fn eq 'withdraw';
	return ([ join('|', 't', $c->{from}, $c->{to}, $c->{amount}, '', ''), $c->{key} ])
	  if $fn eq 'transfer';
	if ($fn eq 'disburse')
	{
		my $total = Math::BigInt->new(0);
		$total->badd($_) foreach @{ $c->{amounts} };
		return ([
			join('|', 's', $c->{from}, '', $total->bstr,
				'{' . join(',', @{ $c->{payees} }) . '}',
				'{' . join(',', @{ $c->{amounts} }) . '}'),
			$c->{key} ]);
	}
	return map {
		[ join('|', 't', $c->{from}[$_], $c->{to}[$_], $c->{amounts}[$_], '', ''),
		  $c->{keys} ? $c->{keys}[$_] : undef ]
	} 0 .. $#{ $c->{from} };
}

# A call: generated, predicted against the session's state, which a valid
# open changes.
sub gen_call
{
	my ($g, $n, $autocommit) = @_;
	my $whale = chance(0.1);
	my $r = rand();
	my $retry = chance(0.03) && @{ $keyed_money_calls{ $g->{session} } // [] };
	my $c =
	    $autocommit && chance(0.06) ? gen_shared($g)
	  : $retry ? { %{ pick(@{ $keyed_money_calls{ $g->{session} } }) } }
	  : chance(0.3) ? gen_euro($g, $n, $autocommit)
	  : $r < 0.06   ? gen_open($g)
	  : $r < 0.24   ? gen_external($g, 'deposit', $whale, $autocommit)
	  : $r < 0.36   ? gen_external($g, 'withdraw', $whale, $autocommit)
	  : $r < 0.64   ? gen_transfer($g, $whale, $autocommit)
	  : $r < 0.84   ? gen_disburse($g, $whale, $autocommit)
	  :               gen_transfer_many($g, $whale);
	my $s = $g->{session};

	$c->{retry}  = $c->{n} if $retry;
	$c->{op}     = 'call';
	$c->{n}      = $n;
	$c->{hold}   = $g->{holds}{ $c->{ref} } if defined $c->{ref};
	$c->{sql}    = call_sql($c);
	$c->{expect} = predict($g, $c);
	claim_keys($g, $c) unless defined $c->{expect};
	$g->{accounts}{ $c->{account} } = $c->{flag} // 0
	  if $c->{fn} eq 'open' && !defined $c->{expect};
	if ($c->{fn} eq 'hold')
	{
		# a retry names its hold too: the one its first call made, or a
		# new one if that was rolled back
		push @{ $hold_calls{$s} }, $n;
		$g->{holds}{$n} = { from => $c->{from}, to => $c->{to}, amount => $c->{amount} }
		  unless defined $c->{expect};
	}
	push @{ $keyed_calls{$s} }, $c
	  if $c->{fn} =~ /^(hold|post|void)$/ && defined $c->{key} && !$c->{retry};
	push @{ $keyed_money_calls{$s} }, $c
	  if $c->{fn} =~ /^(deposit|withdraw|transfer|disburse|transfer_many)$/
	  && (!defined $c->{expect} || $c->{expect} eq '23L01')
	  && call_requests($c) && !$c->{retry} && !$c->{shared};
	return $c;
}

# The requests the keys g-N name, the same for every session, so that the
# sessions of one role racing to claim a key get one event; the first half
# of them were claimed by prop_a before the sessions began.  Shared keys
# are only used in calls that commit on their own, so that sessions never
# wait on each other in a cycle.
my @shared_requests;
my $npreclaimed = 20;

sub gen_shared_requests
{
	foreach my $k (0 .. 39)
	{
		my $from = pick(@regular);
		my $to   = pick(grep { $_ != $from } @regular);

		push @shared_requests,
		  chance(0.4)
		  ? { fn => 'deposit', account => $to, amount => small_amount(), key => "g-$k" }
		  : { fn => 'transfer', from => $from, to => $to, amount => small_amount(), key => "g-$k" };
	}
	return;
}

# prop_a's calls as session $s, before the sessions begin: it claims the
# first $npreclaimed shared keys.
sub preclaimed_calls
{
	my ($s) = @_;

	gen_shared_requests();
	my @preclaimed = map {
		+{ %{ $shared_requests[$_] }, op => 'call', n => $_ + 1, session => $s, expect => undef }
	} 0 .. $npreclaimed - 1;
	$_->{sql} = call_sql($_) foreach @preclaimed;
	return \@preclaimed;
}

# A call with a shared key: its request, or now and then (prop_a, with a
# key it claimed before) another one.
sub gen_shared
{
	my ($g) = @_;
	my $k = int(rand(@shared_requests));
	my $c = { %{ $shared_requests[$k] }, shared => 1 };

	if ($g->{role} eq 'prop_a' && $k < $npreclaimed && chance(0.3))
	{
		my $r = rand();

		if    ($c->{fn} eq 'deposit' && $r < 0.5) { $c->{fn} = 'withdraw'; }
		elsif ($c->{fn} eq 'transfer' && $r < 0.5) { @$c{qw(from to)} = @$c{qw(to from)}; }
		else  { $c->{amount}++; }
	}
	return $c;
}

sub copy_state
{
	my ($g) = @_;

	return {
		session  => $g->{session},
		role     => $g->{role},
		accounts => { %{ $g->{accounts} } },
		holds    => { %{ $g->{holds} // {} } },
		keys     => { %{ $g->{keys} // {} } } };
}

# Session $s's operations: $ncalls calls, on their own and in transactions
# of a few calls, maybe with a savepoint, that commit or roll back.
sub gen_session
{
	my ($s, $ncalls) = @_;
	my $g = { session => $s, role => session_role($s), accounts => {}, keys => {} };
	my @ops;
	my $n = 0;

	if ($g->{role} eq 'prop_a')
	{
		claim_keys($g, $shared_requests[$_]) foreach 0 .. $npreclaimed - 1;
	}

	while ($n < $ncalls)
	{
		if (chance(0.65))
		{
			push @ops, gen_call($g, ++$n, 1);
			next;
		}
		my $at_begin = copy_state($g);
		my $size     = 1 + int(rand(6));
		my $sp_at    = chance(0.5) ? int(rand($size)) : -1;
		my $at_savepoint;

		push @ops, { op => 'BEGIN' };
		foreach my $i (0 .. $size - 1)
		{
			last if $n >= $ncalls;
			if ($i == $sp_at)
			{
				push @ops, { op => 'SAVEPOINT' };
				$at_savepoint = copy_state($g);
			}
			push @ops, gen_call($g, ++$n, 0);
		}
		if ($at_savepoint)
		{
			if (chance(0.5))
			{
				push @ops, { op => 'ROLLBACK TO' };
				$g = $at_savepoint;
				push @ops, gen_call($g, ++$n, 0) if $n < $ncalls && chance(0.5);
			}
			else
			{
				push @ops, { op => 'RELEASE' };
			}
		}
		if (chance(0.65))
		{
			push @ops, { op => 'COMMIT' };
		}
		else
		{
			push @ops, { op => 'ROLLBACK' };
			$g = $at_begin;
		}
	}
	return \@ops;
}

### The hostile client

# mallory is a member of ledger_client only, and has
# ledger.max_pending_per_account set for its role.  It calls the
# operator's functions and reads the ledger's tables; debits the tenant's
# accounts (its MAL ones, and XXX ones), in every way a debit can be made,
# and posts and voids the holds the setup placed on them; reuses keys with
# other requests, its own and other roles'; asks for amounts past the
# supply bound and past any balance; and posts and voids its own holds
# again and again once they ended, in bursts that pass the spam guard's
# limit.  Every call's outcome is predicted: mallory waits for its events
# after each transaction that commits, so that none of them is pending
# when the next begins, and what the guard counts for its accounts is then
# what that transaction queued; and it simulates its accounts, which no one
# else debits, to know which of its holds are open and which ended.

# The operator's functions, the tables, and the settings a superuser sets:
# all refused with 42501.
my @forbidden = (
	'ledger_open_account(900777, true)',
	"ledger_open_account(3100, false, 'MAL', owner => 'mallory')",
	"ledger_open_account(900778, owner => 'mallory')",
	'ledger_deposit(3100, 1000)',
	"ledger_deposit(3101, $bigint_max, 'm-1')",
	'ledger_withdraw(3200, 1000)',
	'ledger_withdraw(3100, 10)',
	'ledger_set_limits(3200, 0, 1, 1)',
	'ledger_set_limits(3100, NULL, NULL, NULL)',
	'ledger_pause(0)',
	'ledger_resume(1)',
	'ledger_stats_reset()',
	'(SELECT count(*) FROM ledger_verify())',
	'(SELECT count(*) FROM ledger_health())',
	"set_config('ledger.max_pending_per_account', '0', false)",
	"set_config('ledger.max_payees', '100000', false)",
	'(SELECT count(*) FROM ledger.queue)',
	'(SELECT sum(balance_after) FROM ledger.transactions)',
	'(SELECT count(*) FROM ledger.idempotency)',
	'ledger.external_account(0, 0)');

# mallory's accounts as its events leave them, once applied: balances and
# open holds, and the state of each of its holds (by the call that made
# it): open, rejected, posted or voided.
my %mal_sim = (
	balance => { (map { $_ => $mal_opening } @mal_own), $mal_relay => 0 },
	held    => { map { $_ => 0 } @mal_own, $mal_relay },
	state   => {});

sub mal_amount
{
	return chance(0.08) ? pick($bigint_max, $bound + 1, $mal_opening + 1) : 1 + int(rand(5000));
}

# Its own keys, often reused; and keys other roles use, which name other
# requests of theirs.
sub hostile_key
{
	my $r = rand();

	return undef if $r < 0.5;
	return 'm-' . int(rand(40)) if $r < 0.85;
	return pick('g-' . int(rand(40)), 's1-' . int(rand($nprivate_keys)), 'h1-' . int(rand(50)));
}

# A debit of an account of the tenant's, by mallory's session $g.
sub gen_theft
{
	my ($g, $victim_holds) = @_;
	my $victim = pick(@mal_victims);
	my $amount = mal_amount();
	my $key    = hostile_key();
	my $r      = rand();

	return { fn => 'transfer', from => $victim, to => pick(@mal_own), amount => $amount, key => $key }
	  if $r < 0.2;
	return {
		fn     => 'transfer',
		from   => pick(@tenant_accounts),
		to     => pick(@regular),
		amount => $amount,
		key    => $key }
	  if $r < 0.3;
	return {
		fn      => 'disburse',
		from    => $victim,
		payees  => [ pick(@mal_own) ],
		amounts => [$amount],
		key     => $key }
	  if $r < 0.4;
	return {
		fn      => 'hold',
		from    => $victim,
		to      => pick(@mal_own),
		amount  => $amount,
		timeout => chance(0.3) ? "'1 hour'" : undef,
		key     => $key }
	  if $r < 0.55;
	if ($r < 0.7)
	{
		# one transfer of a batch, after one mallory may make
		my $mine = pick(@mal_own);
		return {
			fn      => 'transfer_many',
			from    => [ $mine, $victim ],
			to      => [ pick(@mal_victims), pick(@mal_own) ],
			amounts => [ 1 + int(rand(100)), $amount ],
			keys    => chance(0.5) ? [ hostile_key(), hostile_key() ] : undef };
	}
	my $h = pick(@$victim_holds);
	return {
		fn          => pick('post', 'void'),
		session     => $g->{session},
		ref_session => 0,
		ref         => $h->{n},
		hold        => $h,
		amount      => chance(0.5) ? undef : 1 + int(rand($h->{amount})),
		key         => $key };
}

# A payment out of one of mallory's accounts, to the tenant's.
sub gen_hostile_payment
{
	my ($payer) = @_;
	my $r = rand();

	return {
		fn     => 'transfer',
		from   => $payer,
		to     => pick(@mal_victims),
		amount => mal_amount(),
		key    => hostile_key() }
	  if $r < 0.45;
	return {
		fn      => 'disburse',
		from    => $payer,
		payees  => [@mal_victims],
		amounts => [ mal_amount(), mal_amount() ],
		key     => hostile_key() }
	  if $r < 0.65;

	my (@from, @to, @amounts, @keys);
	foreach (1 .. 1 + int(rand(4)))
	{
		if (@from && chance(0.3))
		{
			my $i = int(rand(@from));
			push @from,    $from[$i];
			push @to,      $to[$i];
			push @amounts, $amounts[$i];
			push @keys,    chance(0.8) ? $keys[$i] : hostile_key();
		}
		else
		{
			push @from,    chance(0.7) ? $payer : pick(@mal_own);
			push @to,      pick(@mal_victims);
			push @amounts, mal_amount();
			push @keys,    hostile_key();
		}
	}
	return {
		fn      => 'transfer_many',
		from    => \@from,
		to      => \@to,
		amounts => \@amounts,
		keys    => chance(0.7) ? \@keys : undef };
}

sub gen_hostile_hold
{
	my ($payer) = @_;

	return {
		fn      => 'hold',
		from    => $payer,
		to      => pick(@mal_victims),
		amount  => chance(0.1) ? $bigint_max : mal_amount(),
		timeout => chance(0.3) ? "'1 hour'" : undef,
		key     => chance(0.3) ? hostile_key() : undef };
}

# A post or void of one of mallory's holds, of $payer's if it has one: in
# any state, mostly a recent one.
sub gen_hostile_end
{
	my ($g, $payer, $fn, $want) = @_;
	my @mine = sort { $a <=> $b } keys %{ $g->{holds} };
	my @payers = grep { $g->{holds}{$_}{from} == $payer } @mine;

	@mine = @payers if @payers;
	@mine = grep { $want->($_) } @mine if $want && grep { $want->($_) } @mine;
	return gen_hostile_hold($payer) unless @mine;

	my $recent = @mine < 3 ? scalar(@mine) : 3;
	my $ref = chance(0.5) ? $mine[ -1 - int(rand($recent)) ] : pick(@mine);
	my $h = $g->{holds}{$ref};
	my $c = {
		fn      => $fn,
		session => $g->{session},
		ref     => $ref,
		hold    => $h,
		key     => chance(0.3) ? hostile_key() : undef };

	if ($fn eq 'post')
	{
		# more than an open hold holds, now and then
		my $a = hold_open($ref) && chance(0.4) ? 0.8 + rand(0.2) : rand();
		$c->{amount} =
		    $h->{amount} > $bound ? pick(undef, 1, $bigint_max)
		  : $a < 0.40 ? undef
		  : $a < 0.70 ? 1 + int(rand($h->{amount}))
		  : $a < 0.80 ? $h->{amount}
		  : $a < 0.92 ? $h->{amount} + 1 + int(rand(100))
		  :             $bigint_max;
	}
	return $c;
}

sub hold_ended { return ($mal_sim{state}{ $_[0] } // 'pending') =~ /^(rejected|posted|voided)$/; }
sub hold_open { return ($mal_sim{state}{ $_[0] } // '') eq 'open'; }

# What the spam guard says to a call of mallory's, predicted valid so far:
# 53400, or undef and the call's new events counted.  Retries are answered
# before the guard; a post or void is guarded unless its hold is not known
# to have ended and no other post or void of it is pending.
sub hostile_guard
{
	my ($g, $txn, $c) = @_;
	my (%adding, %seen, @new);

	foreach my $e (call_elements($c))
	{
		if (defined $e->{key})
		{
			next if $seen{ $e->{key} }++;
			next if ($g->{keys}{ $e->{key} } // '') eq $e->{request};
		}
		$adding{ $e->{payer} }++;
		push @new, $e;
	}
	return undef unless @new;
	my $count = $txn->{count};
	if ($c->{fn} eq 'post' || $c->{fn} eq 'void')
	{
		my $payer = $new[0]{payer};
		my $guarded = hold_ended($c->{ref}) || ($count->{"hold $c->{ref}"} // 0) > 0;

		return '53400' if $guarded && ($count->{$payer} // 0) + 1 > $guard_limit;
		$stats{'hostile: posts and voids let through past the limit'}++
		  if !$guarded && ($count->{$payer} // 0) >= $guard_limit;
		$count->{"hold $c->{ref}"}++;
	}
	else
	{
		return '53400'
		  if grep { ($count->{$_} // 0) + $adding{$_} > $guard_limit } keys %adding;
	}
	$count->{$_} += $adding{$_} foreach keys %adding;
	push @{ $txn->{events} }, map { +{ call => $c, %$_ } } @new;
	return undef;
}

# The events of a transaction that committed, decided as mallory's
# buckets decide them: in order, each payer's money being its own.
sub hostile_commit
{
	my ($g, $txn) = @_;
	my $sim = \%mal_sim;

	foreach my $e (@{ $txn->{events} })
	{
		my $c     = $e->{call};
		my $payer = $e->{payer};
		my $free  = $sim->{balance}{$payer} - $sim->{held}{$payer};

		if ($c->{fn} eq 'hold')
		{
			$sim->{state}{ $c->{n} } = $e->{amount} <= $free ? 'open' : 'rejected';
			$sim->{held}{$payer} += $e->{amount} if $e->{amount} <= $free;
		}
		elsif ($c->{fn} eq 'post' || $c->{fn} eq 'void')
		{
			my $h = $c->{hold};
			my $asked = $c->{fn} eq 'void' ? 0 : $c->{amount} // $h->{amount};

			next unless hold_open($c->{ref}) && $asked <= $h->{amount};
			$sim->{held}{$payer} -= $h->{amount};
			$sim->{balance}{$payer} -= $asked;
			$sim->{state}{ $c->{ref} } = $c->{fn} eq 'void' ? 'voided' : 'posted';
		}
		elsif ($e->{amount} <= $free)
		{
			$sim->{balance}{$payer} -= $e->{amount};
			$sim->{balance}{ $c->{to} } += $e->{amount}
			  if $c->{fn} eq 'transfer' && exists $sim->{balance}{ $c->{to} };
		}
	}
	return;
}

# mallory's operations, $nhostile calls as session $hostile.
# $victim_holds: the setup's holds on the tenant's MAL accounts.
sub gen_hostile
{
	my ($hostile, $nhostile, $victim_holds) = @_;
	my $g = { session => $hostile, role => 'mallory', accounts => {}, holds => {}, keys => {} };
	my @ops = ({ op => 'SQL', sql => "SELECT 'guard', current_setting('ledger.max_pending_per_account');" });
	my @retries;
	my $n = 0;

	while ($n < $nhostile)
	{
		my $size   = chance(0.5) ? 1 : 2 + int(rand(6));
		my $relay  = $size > 1 && chance(0.15);
		my $burst  = $size > 1 && !$relay && chance(0.4);
		my $commit = $size == 1 || chance(0.75);
		my $payer  = pick(@mal_own);
		my $txn    = { count => {}, events => [] };
		my $before = copy_state($g);
		my @group;

		my @relayed;
		if ($relay)
		{
			# into the relay, once or twice, then out of it: all of it
			push @relayed, map { 1 + int(rand(3000)) } 1 .. 1 + int(rand(2));
			$size = @relayed + 1;
		}
		push @ops, { op => 'BEGIN' } if $size > 1;
		foreach my $i (1 .. $size)
		{
			last if $n >= $nhostile;
			my $r = rand();
			my $total = 0;
			$total += $_ foreach @relayed;
			my $c =
			    $relay && $i <= @relayed
			  ? { fn => 'transfer', from => $mal_own[0], to => $mal_relay, amount => $relayed[ $i - 1 ] }
			  : $relay ? { fn => 'transfer', from => $mal_relay, to => pick(@mal_victims), amount => $total }
			  : $burst && $r < 0.5 ? gen_hostile_end($g, $payer, pick('post', 'void'), \&hold_ended)
			  : $burst && $r < 0.7 ? gen_hostile_end($g, $payer, pick('post', 'void'), \&hold_open)
			  : $burst && $r < 0.85 ? gen_hostile_payment($payer)
			  : $burst ? gen_hostile_hold($payer)
			  : $r < 0.12 ? { fn => 'raw', raw => pick(@forbidden) }
			  : $r < 0.30 ? gen_theft($g, $victim_holds)
			  : $r < 0.38 && @retries ? { %{ pick(@retries) }, retry => 1 }
			  : $r < 0.50 ? gen_hostile_hold($payer)
			  : $r < 0.72 ? gen_hostile_end($g, $payer, pick('post', 'void'))
			  :             gen_hostile_payment($payer);

			$c->{op} = 'call';
			$c->{n}  = ++$n;
			$c->{session} //= $hostile;
			$c->{hold} = $g->{holds}{ $c->{ref} } if defined $c->{ref} && !defined $c->{ref_session};
			$c->{sql} = call_sql($c);
			if ($c->{fn} eq 'raw')
			{
				$c->{expect} = '42501';
			}
			else
			{
				$c->{expect} = predict($g, $c) // hostile_guard($g, $txn, $c);
			}
			if (!defined $c->{expect})
			{
				claim_keys($g, $c);
				$g->{holds}{ $c->{n} } = { from => $c->{from}, to => $c->{to}, amount => $c->{amount} }
				  if $c->{fn} eq 'hold';
			}
			push @retries, $c
			  if $c->{fn} ne 'hold' && $c->{fn} ne 'raw' && !defined $c->{retry}
			  && (!defined $c->{expect} || $c->{expect} eq '23L01')
			  && call_requests($c);
			$c->{retry} //= 0;
			push @ops, $c;
			push @group, $c;
		}
		if ($commit)
		{
			push @ops, { op => 'COMMIT' } if $size > 1;
			hostile_commit($g, $txn);
			my @waited = map { $_->{n} } grep { !defined $_->{expect} && $_->{fn} ne 'raw' } @group;
			push @ops, {
				op  => 'SQL',
				sql => "SELECT 'wait', ledger_wait(x.id::bigint, 30000)"
				  . " FROM prop_log p, unnest(string_to_array(trim(both '{}' FROM p.result), ',')) x(id)"
				  . " WHERE p.session = $hostile AND p.ok AND p.n IN (" . join(', ', @waited) . ');' }
			  if @waited;
		}
		else
		{
			push @ops, { op => 'ROLLBACK' };
			$g = $before;
		}
	}
	return \@ops;
}

### The sessions' scripts

# The psql script of session $s's operations: each call through
# prop_call(), which logs its outcome.
sub session_script
{
	my ($s, $ops) = @_;
	my %sql = (
		'BEGIN'       => 'BEGIN;',
		'SAVEPOINT'   => 'SAVEPOINT sp;',
		'ROLLBACK TO' => 'ROLLBACK TO SAVEPOINT sp;',
		'RELEASE'     => 'RELEASE SAVEPOINT sp;',
		'COMMIT'      => 'COMMIT;',
		'ROLLBACK'    => 'ROLLBACK;');
	my $script = '';

	foreach my $op (@$ops)
	{
		$script .=
		    $op->{op} eq 'call' ? "SELECT prop_call($s, $op->{n}, \$c\$$op->{sql}\$c\$);\n"
		  : $op->{op} eq 'SQL'  ? "$op->{sql}\n"
		  :                       "$sql{$op->{op}}\n";
	}
	return $script;
}

### The setup's calls, the operator's and the closing deposit

# Session 0's calls, the superuser's, which open every account the
# sessions share; and the holds among them that mallory tries to end.
sub setup_calls
{
	my @setup;

	# The shared accounts and their first deposits.
	foreach my $id (@regular, @whales)
	{
		push @setup,
		  { op => 'call', fn => 'open', account => $id, flag => $shared_flag{$id} };
	}
	foreach my $id (@tenant_accounts)
	{
		push @setup,
		  { op => 'call', fn => 'open', account => $id, flag => 0, owner => $owner_of{$id} };
	}
	foreach my $id (@regular, @tenant_accounts)
	{
		push @setup,
		  { op => 'call', fn => 'deposit', account => $id, amount => $opening };
	}

	# The EUR group: its accounts, the spenders' first limits (before any event
	# of theirs, so that every batch that decides one knows them), and their
	# first deposits.
	foreach my $id (@spenders, @sinks, @vaults)
	{
		push @setup,
		  { op => 'call', fn => 'open', account => $id, flag => $euro_flag{$id}, currency => 'EUR' };
	}
	foreach my $id (sort { $a <=> $b } keys %initial_limits)
	{
		push @setup, { op => 'call', fn => 'limits', account => $id, limits => $initial_limits{$id} };
	}
	foreach my $id (@spenders)
	{
		push @setup,
		  { op => 'call', fn => 'deposit', account => $id, amount => $euro_opening };
	}

	# The MAL group: mallory's accounts and the tenant's, their deposits, and a
	# hold on each of the tenant's (paying the other bucket).
	foreach my $id (@mal_own, @mal_victims, $mal_relay)
	{
		push @setup, {
			op       => 'call',
			fn       => 'open',
			account  => $id,
			flag     => 0,
			currency => 'MAL',
			owner    => $owner_of{$id} };
	}
	foreach my $id (@mal_own, @mal_victims)
	{
		push @setup, {
			op      => 'call',
			fn      => 'deposit',
			account => $id,
			amount  => $owner_of{$id} eq 'mallory' ? $mal_opening : $victim_opening };
	}
	my @victim_holds;
	foreach my $i (0, 1)
	{
		push @setup, {
			op     => 'call',
			fn     => 'hold',
			from   => $mal_victims[$i],
			to     => $mal_own[ 1 - $i ],
			amount => 5000 };
		push @victim_holds, $setup[-1];
	}
	foreach my $i (0 .. $#setup)
	{
		$setup[$i]{n}       = $i + 1;
		$setup[$i]{session} = 0;
		$setup[$i]{sql}     = call_sql({ %{ $setup[$i] }, key => undef });
		$setup[$i]{expect}  = undef;
	}
	return (\@setup, \@victim_holds);
}

# The operator's script: it changes the limits of a spender now and then
# while the sessions run, and notes a time after each change committed.
sub operator_script
{
	my @changes = map {
		+{
			account => pick(@changing),
			limits  => [
				chance(0.5) ? undef : pick(0, 1000 + int(rand(30000))),
				chance(0.5) ? undef : 2000 + int(rand(15000)),
				chance(0.6) ? undef : 30000 + int(rand(200000)) ],
			sleep => 0.1 + rand(0.3) }
	} 1 .. $nchanges;

	return join('',
		map {
			my $c = $changes[$_];
			sprintf("SELECT pg_sleep(%.3f);\nSELECT %s;\n"
				  . "SELECT 'changed', %d, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;\n",
				$c->{sleep}, call_sql({ fn => 'limits', %$c }), $_)
		} 0 .. $#changes);
}

# The closing call, the superuser's as session $s: it deposits 95% of the
# supply bound to one of the tenant's MAL accounts, which never pays.
sub closing_calls
{
	my ($s) = @_;
	my @closing = ({
		op      => 'call',
		fn      => 'deposit',
		account => $mal_victims[0],
		amount  => int(0.95 * $bound),
		n       => 1,
		session => $s,
		expect  => undef });

	$closing[0]{sql} = call_sql({ %{ $closing[0] }, key => undef });
	return \@closing;
}

1;
