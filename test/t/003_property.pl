# A randomized property test: thousands of random API calls, valid and
# invalid, from several concurrent sessions, then the ledger's invariants.
#
# Seeded and reproducible: the seed is printed, and LEDGER_PROPERTY_SEED
# replays a run's calls (LEDGER_PROPERTY_SESSIONS, LEDGER_PROPERTY_CALLS and
# LEDGER_PROPERTY_HOSTILE_CALLS change its size).  The interleaving of the
# sessions is the server's.
#
# Each session is a psql script of calls to every enqueueing function and to
# ledger_open_account: random accounts (existing ones, others never opened,
# ids that are not valid, NULLs), amounts (zero, negative, NULL, near the
# largest bigint, near the supply bound and fractions of it),
# disbursements with duplicate payees, the payer among its payees, too
# many payees, empty and two-dimensional arrays, idempotency keys shared
# between sessions, private to one, reused with the same request or with
# another, too long; batches repeating a transfer under its key.  Some
# calls run in transactions that commit, some in transactions that roll
# back, some in savepoints rolled back to.  Every call goes through
# prop_call(), which runs it in a subtransaction and returns (and logs
# into prop_log, which rolls back with the call) its event ids or its
# SQLSTATE.
#
# Roles (1.5): the setup runs as the superuser; the sessions as two
# operators, prop_a (odd sessions) and prop_b (even ones), and prop_b is
# also a member of tenant, which owns four XXX accounts: the sessions
# debit them too, prop_a's calls are refused (42501).  Keys are the role's:
# the shared keys g-N each name one request, which the sessions of one role
# race to claim; prop_a claimed half of them before the sessions began,
# and its sessions now and then make another request with one of those
# (23L01).  A key reused with another request is refused (23L01); a
# rolled-back claim frees the key.
#
# The hostile client, mallory, is a member of ledger_client only, with
# ledger.max_pending_per_account set for its role.  It calls the
# operator's functions and reads the ledger's tables and sets superuser
# settings (42501), debits the tenant's accounts in every way a debit can
# be made (42501), reuses keys (23L01), asks for amounts past the supply
# bound and past any balance, and posts and voids its own holds again and
# again, in bursts past the guard's limit (53400, but a post or void that
# can release a hold is let through).  See "The hostile client" below.
#
# The test knows in advance which calls are valid and which SQLSTATE each
# invalid one raises.  Once the queue has drained it checks:
#  - every call succeeded or failed as predicted;
#  - every event id a committed call returned exists exactly once, applied
#    or rejected, holding that call's arguments; no other event exists;
#    ids returned only by rolled-back calls exist nowhere;
#  - idempotency keys: one event per key and role, the same id to every
#    call of the role that used it (rollbacks undo a key's claim), and
#    calls sharing an id share a key and a role;
#  - ledger_verify() is clean, the balances of each currency sum to zero,
#    no account that may not go negative has a negative balance or leg,
#    each applied event has its legs (2, or 1 + payees), rejected ones
#    none, and no event was rejected for overflow;
#  - breakpoints agree with the legs they cover, their differences within
#    bigint even where an account swings far;
#  - a model: the balances recomputed in Perl from the applied events are
#    those ledger_balance() reports, for every account, and the legs are
#    exactly those the applied events post;
#  - every rejection was due: for some balance the account could have had
#    when its event was decided, the event would overdraw it, or (for
#    supply_limit) what its bucket could have owed in the currency, but for
#    the payer, and what the payer would owe once debited, pass the bound;
#  - a session's events of one bucket were applied in the order it
#    enqueued them, but for debits that may have waited for credits sent
#    earlier in their transaction from another bucket, and events held
#    back behind them;
#  - only members of an account's owner role (or the superuser) debited
#    it, and mallory only its own accounts.
#
# Huge amounts only move between four "whale" accounts, all in bucket 0, or
# are withdrawn, or come from accounts that cannot afford them.  Past the
# supply bound they are all rejected; a half or a third of it may pass,
# and then a bucket owes that much until it is paid back.
#
# Holds and limits live in a group of accounts of their own currency, EUR
# (the rest are in the default one): eight "spenders", four in each bucket,
# with account limits (max_amount, overdraft_limit, daily_debit_limit, and
# the two flags), two "sinks", one in each bucket, that only receive, and
# two "vaults" that take and give back amounts near the supply bound.
# The sessions' calls deposit to, withdraw from, transfer and disburse
# between them, and hold, post (all of a hold, part of it, more than it),
# void and post again, also holds rejected and ids that are no hold; some
# calls cross currencies.  Holds have no timeout or one of an hour: none
# expires (expiry is timing's, and the isolation test post_races_expiry
# has it).  Meanwhile an operator session changes the spenders' limits a
# few times.  A spender pays only spenders of its own bucket and the
# sinks, and a sink never pays: so every leg of a spender is posted by its
# bucket's worker while deciding an event of that bucket, and the order in
# which that worker decided is known: by batch (applied_at), then by the
# enqueuing transaction's id, then by id (a transaction that took its event
# ids first may have got its transaction id second).
# The model replays each bucket's EUR events in that order and predicts
# each one's outcome exactly (applied, or rejected and why: open holds
# count against the daily limit, and what the bucket owes against the
# supply bound; and the amount a post moved), the final balances, the open
# holds and ledger_available() of every EUR account, every hold's status
# and how it ended.  The one thing it cannot know is which limits a batch
# used when it ran while a change of them was committing; there it accepts
# the outcome under the old limits or the new, and only there.  The MAL
# group, mallory's, is modelled the same way.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Math::BigInt;
use Time::HiRes qw(time);

my $seed      = $ENV{LEDGER_PROPERTY_SEED}     // 20261125;
my $nsessions = $ENV{LEDGER_PROPERTY_SESSIONS} // 4;
my $ncalls    = $ENV{LEDGER_PROPERTY_CALLS}    // 1500;
diag "LEDGER_PROPERTY_SEED=$seed, $nsessions sessions x $ncalls calls";
srand($seed);

my $bigint_max  = 9223372036854775807;
my $bound       = 140737488355327;    # ledger_supply_bound()
my $max_payees  = 8;          # set in postgresql.conf
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
my $tmp = PostgreSQL::Test::Utils::tempdir;

# The EUR group.  An account's bucket is its id mod 2.
my @spenders = (2000 .. 2007);
my @sinks    = (2100, 2101);
# Two vaults, one in each bucket, take and give back amounts near the
# supply bound, by deposits and withdrawals only.
my @vaults   = (2200, 2201);
my %euro_flag = ((map { $_ => 0 } @spenders, @sinks, @vaults), 2006 => 1, 2007 => 1);
my $euro_opening = 40000;    # each spender's first deposit
# The limits the spenders start with: [overdraft_limit, max_amount,
# daily_debit_limit], undef for none.  2005 may overdraw by 0: it is
# refused for overdraft_limit where it would be for insufficient_funds;
# 2007, which may go negative, is held to its overdraft limit.  2004 and
# 2005 get small deposits only, and run short of money.
my %initial_limits = (
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
my $nchanges = 12;
my %stats;    # what happened, for the coverage checks at the end

# Roles.  The sessions run as two operators: prop_a, and prop_b, which is
# also a member of tenant (odd sessions are prop_a's, even ones prop_b's);
# the setup as the superuser; the hostile client as mallory, a member of
# ledger_client only.
sub session_role { return $_[0] % 2 ? 'prop_a' : 'prop_b'; }
my %member_of = (prop_b => { tenant => 1 });
my %owner_of = ((map { $_ => 'tenant' } @tenant_accounts));

# The hostile client's group, in a currency of its own, MAL: two accounts
# of mallory's (one in each bucket), which only it debits, and two of the
# tenant's, which it may only pay.  The setup places a hold on each of the
# tenant's, which mallory tries to post and void.
my @mal_own     = (3100, 3101);
my @mal_victims = (3200, 3201);
# mallory's relay, in bucket 1, empty: a transaction pays it from 3100, in
# bucket 0, then pays out of it what it got; the payment waits for the
# credit (order inside a transaction).  The model credits it as it replays
# bucket 0, before bucket 1's events: that is the order the transactions
# ask for.
my $mal_relay   = 3103;
my %mal_flag    = map { $_ => 0 } @mal_own, @mal_victims, $mal_relay;
$owner_of{$_} = 'mallory' foreach @mal_own, $mal_relay;
$owner_of{$_} = 'tenant' foreach @mal_victims;
my $mal_opening    = 2000000;
my $victim_opening = 100000;
my $guard_limit    = 3;    # ledger.max_pending_per_account, mallory's
my $nhostile       = $ENV{LEDGER_PROPERTY_HOSTILE_CALLS} // int($ncalls / 4);

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

# A session's operations: calls on their own, and transactions of a few
# calls, maybe with a savepoint, that commit or roll back.
sub gen_session
{
	my ($s) = @_;
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
my $preclaim = $nsessions + 1;    # the session of prop_a's shared keys
my $hostile  = $nsessions + 2;

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

# A debit of an account of the tenant's.
sub gen_theft
{
	my ($victim_holds) = @_;
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
		session     => $hostile,
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
		session => $hostile,
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

# mallory's operations.  $victim_holds: the setup's holds on the tenant's
# MAL accounts.
sub gen_hostile
{
	my ($victim_holds) = @_;
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
			  : $r < 0.30 ? gen_theft($victim_holds)
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

### The server, and the accounts every session shares

my $node = PostgreSQL::Test::Cluster->new('property');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'ledger'
ledger.database = 'postgres'
ledger.buckets = 2
ledger.poll_interval = '100ms'
ledger.batch_size = 20    # many batches, each with several sessions' events
ledger.breakpoint_interval = 7
ledger.max_pending_per_account = 0    # the spam guard would refuse by timing
ledger.max_payees = $max_payees
max_connections = 30
log_statement = 'none'
});
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION ledger;
CREATE TABLE prop_log (session integer, n integer, ok boolean, result text,
					   PRIMARY KEY (session, n));
CREATE FUNCTION prop_call(s integer, n integer, call text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	r text;
BEGIN
	BEGIN
		EXECUTE 'SELECT (' || call || ')::text' INTO r;
	EXCEPTION WHEN OTHERS THEN
		INSERT INTO prop_log VALUES (s, n, false, SQLSTATE);
		RETURN s || ' ' || n || ' err ' || SQLSTATE;
	END;
	INSERT INTO prop_log VALUES (s, n, true, r);
	RETURN s || ' ' || n || ' ok ' || r;
END
$$;
GRANT SELECT, INSERT ON prop_log TO PUBLIC;
CREATE ROLE prop_a LOGIN IN ROLE ledger_operator;
CREATE ROLE tenant NOLOGIN;
CREATE ROLE prop_b LOGIN IN ROLE ledger_operator, tenant;
CREATE ROLE mallory LOGIN IN ROLE ledger_client;
});
# the guard for mallory alone: the other sessions' pending events depend on
# timing, mallory's do not
$node->safe_psql('postgres',
	"ALTER ROLE mallory SET ledger.max_pending_per_account = $guard_limit");

# Session 0: the shared accounts and their first deposits.
my @setup;
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
my %outputs;
$outputs{0} = $node->safe_psql('postgres', session_script(0, \@setup));

# prop_a claims half of the shared keys before the sessions begin.
gen_shared_requests();
my @preclaimed = map {
	+{ %{ $shared_requests[$_] }, op => 'call', n => $_ + 1, session => $preclaim, expect => undef }
} 0 .. $npreclaimed - 1;
$_->{sql} = call_sql($_) foreach @preclaimed;
$outputs{$preclaim} = $node->safe_psql('postgres', session_script($preclaim, \@preclaimed),
	extra_params => [ '-U', 'prop_a' ]);

### The sessions, at the same time

my %ops = (0 => \@setup, $preclaim => \@preclaimed);
my %role_of = (0 => 'superuser', $preclaim => 'prop_a', $hostile => 'mallory');
foreach my $s (1 .. $nsessions)
{
	$ops{$s} = gen_session($s);
	$role_of{$s} = session_role($s);
	append_to_file("$tmp/session$s.sql", session_script($s, $ops{$s}));
}
$ops{$hostile} = gen_hostile(\@victim_holds);
append_to_file("$tmp/session$hostile.sql", session_script($hostile, $ops{$hostile}));

# The operator: changes the limits of a spender now and then while the
# sessions run, and notes a time after each change committed.
my @changes = map {
	+{
		account => pick(@changing),
		limits  => [
			chance(0.5) ? undef : pick(0, 1000 + int(rand(30000))),
			chance(0.5) ? undef : 2000 + int(rand(15000)),
			chance(0.6) ? undef : 30000 + int(rand(200000)) ],
		sleep => 0.1 + rand(0.3) }
} 1 .. $nchanges;
append_to_file(
	"$tmp/operator.sql",
	join('',
		map {
			my $c = $changes[$_];
			sprintf("SELECT pg_sleep(%.3f);\nSELECT %s;\n"
				  . "SELECT 'changed', %d, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;\n",
				$c->{sleep}, call_sql({ fn => 'limits', %$c }), $_)
		} 0 .. $#changes));

my @runs;
my $started = time;
my $operator = { out => '', err => '' };
$operator->{handle} = IPC::Run::start(
	[
		'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
		'-d', $node->connstr('postgres'), '-U', 'prop_a', '-f', "$tmp/operator.sql"
	],
	'>', \$operator->{out}, '2>', \$operator->{err});
foreach my $s (1 .. $nsessions, $hostile)
{
	my $file = "$tmp/session$s.sql";
	my $run = { session => $s, out => '', err => '' };
	$run->{handle} = IPC::Run::start(
		[
			'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres'), '-U', $role_of{$s}, '-f', $file
		],
		'>', \$run->{out}, '2>', \$run->{err});
	push @runs, $run;
}
foreach my $run (@runs)
{
	my $ok = eval { $run->{handle}->finish };
	ok($ok, "session $run->{session} ran its script")
	  or diag "session $run->{session}: $run->{err}";
	$outputs{ $run->{session} } = $run->{out};
}
note sprintf('%d sessions x %d calls in %.1f s', $nsessions, $ncalls, time - $started);
ok(eval { $operator->{handle}->finish }, 'the operator changed limits')
  or diag "operator: $operator->{err}";
note sprintf('operator done after %.1f s', time - $started);

# (were mallory's ledger_pause() let through, the queue would not drain:
# its call says so below)
$node->safe_psql('postgres', 'SELECT ledger_resume(0), ledger_resume(1)');

# At the end, the superuser deposits 95% of the supply bound to one of the
# tenant's MAL accounts, which never pays: its bucket then owes more than
# 90% of the bound in MAL, which ledger_health() must say.
my $closing = $nsessions + 3;
$role_of{$closing} = 'superuser';
$ops{$closing} = [
	{
		op      => 'call',
		fn      => 'deposit',
		account => $mal_victims[0],
		amount  => int(0.95 * $bound),
		n       => 1,
		session => $closing,
		expect  => undef } ];
$ops{$closing}[0]{sql} = call_sql({ %{ $ops{$closing}[0] }, key => undef });
$outputs{$closing} = $node->safe_psql('postgres', session_script($closing, $ops{$closing}));
ok($node->poll_query_until('postgres', 'SELECT count(*) FROM ledger.queue', '0'),
	'the queue drains');
note sprintf('drained after %.1f s', time - $started);

### What the calls did

# A property holds when it has no counterexamples; show a few if it has.
sub holds
{
	my ($name, @problems) = @_;

	ok(!@problems, $name)
	  or diag(join("\n",
			(grep { defined } @problems[ 0 .. 9 ]),
			(@problems > 10 ? ('... ' . scalar(@problems) . ' in all') : ())));
	return;
}

my (@calls, @mispredicted, @key_problems);

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

# Walk each session's operations along with its output: which calls
# committed, what they returned.  mallory's output also says what its
# guard was and what its waits found.
my %hostile_said;
foreach my $s (sort { $a <=> $b } keys %ops)
{
	my (%result, %keys, $in_txn, @txn_calls, $mark, %keys_at_begin, %keys_at_savepoint);

	foreach my $line (split(/\n/, $outputs{$s}))
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

holds('every call succeeded or failed as predicted', @mispredicted);
holds('a key the session holds returns its event, also after rollbacks', @key_problems);
is(join(' ', @{ $hostile_said{guard} // [] }), $guard_limit,
	'mallory runs with the spam guard on');
holds(
	'mallory\'s events were applied or rejected before its next transaction',
	map { "a wait of mallory's returned $_" } grep { !/^(applied|rejected)$/ } @{ $hostile_said{wait} // [] });
ok(@{ $hostile_said{wait} // [] } > 0, 'mallory waited for its events');

# prop_log holds the outcome of exactly the calls that committed.
my %logged;
foreach my $line (split(/\n/,
	$node->safe_psql('postgres', 'SELECT session, n, ok, result FROM prop_log')))
{
	my ($s, $n, $ok, $result) = split(/\|/, $line, 4);
	$logged{"$s $n"} = ($ok eq 't' ? 'ok ' : 'err ') . ($result // '');
}
holds(
	'prop_log holds the calls that committed, and only those',
	(map { "session $_->{session} call $_->{n}: committed, logged as " . ($logged{"$_->{session} $_->{n}"} // 'nothing') }
	  grep { $_->{committed} && ($logged{"$_->{session} $_->{n}"} // '') ne ($_->{result} // '') } @calls),
	(map { "session $_->{session} call $_->{n}: rolled back, but logged" }
	  grep { !$_->{committed} && exists $logged{"$_->{session} $_->{n}"} } @calls));

### The ledger's state

my (%event, %account, %legs_of, %idempotency);
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

# Does an event's row hold what a call asked for (* for anything)?
sub row_matches
{
	my ($want, $got) = @_;
	my @w = split(/\|/, $want, -1);
	my @g = split(/\|/, $got,  -1);

	return 0 unless @w == @g;
	return !grep { $w[$_] ne '*' && $w[$_] ne $g[$_] } 0 .. $#w;
}

# The events the calls returned, committed or not.
my (%committed_ids, %rolled_back_ids, %elements_of_id);
foreach my $call (@calls)
{
	foreach my $e (@{ $call->{events} })
	{
		push @{ $elements_of_id{ $e->{id} } }, { %$e, call => $call };
		if ($call->{committed}) { push @{ $committed_ids{ $e->{id} } }, $e; }
		else { $rolled_back_ids{ $e->{id} } = 1; }
	}
}

holds(
	'every event a committed call returned exists, with the arguments of a committed call that returned it',
	(map { "event $_ was returned by a committed call, but does not exist" }
	  grep { !exists $event{$_} } sort { $a <=> $b } keys %committed_ids),
	(map { "event $_ is $event{$_}{row}; its calls asked for " . join(', ', map { $_->{row} } @{ $committed_ids{$_} }) }
	  grep {
		my $id = $_;
		exists $event{$id} && !grep { row_matches($_->{row}, $event{$id}{row}) } @{ $committed_ids{$id} }
	  } sort { $a <=> $b } keys %committed_ids));
holds('every event was returned by a committed call',
	map { "event $_ ($event{$_}{row}) was returned by no committed call" }
	  grep { !exists $committed_ids{$_} } sort { $a <=> $b } keys %event);
holds('no event returned only by rolled-back calls exists',
	map { "event $_ was returned only by rolled-back calls, but exists" }
	  grep { !exists $committed_ids{$_} && exists $event{$_} } sort { $a <=> $b } keys %rolled_back_ids);
# An event's key, with the role whose it is.
sub role_key
{
	my ($e) = @_;

	return defined $e->{key} ? "$role_of{ $e->{call}{session} } $e->{key}" : '(none)';
}

holds(
	'calls that got the same event id used the same idempotency key, as the same role',
	map {
		my @keys = map { role_key($_) } @{ $elements_of_id{$_} };
		"event $_ was returned to " . scalar(@keys) . ' calls, with keys ' . join(', ', @keys)
	  }
	  grep {
		my @e = @{ $elements_of_id{$_} };
		@e > 1 && grep { !defined $_->{key} || role_key($_) ne role_key($e[0]) } @e
	  } sort { $a <=> $b } keys %elements_of_id);

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
holds('every idempotency key holds one existing event, the one every committed call with it got',
	@idempotency_problems);

### Breakpoints

# Each breakpoint of an account covers the legs after the previous one, up
# to a leg of the account, and records the balances before and after them
# and their difference.  An account that may go negative can swing from near
# the smallest bigint to near the largest: its worker then closes a
# breakpoint early, so that every difference fits ledger.breakpoints'
# bigint amount_difference.
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
holds('breakpoints agree with the legs they cover', @breakpoint_problems);

holds('ledger_verify() finds nothing',
	split(/\n/, $node->safe_psql('postgres', 'SELECT * FROM ledger_verify()')));

is( $node->safe_psql(
		'postgres', q{
CREATE TEMP TABLE legs AS
	SELECT event_id, account_id, count(*) AS n
	  FROM ledger.transactions GROUP BY event_id, account_id;
SELECT 'sum of all balances', COALESCE(sum(ledger_balance(id)), 0) FROM ledger.accounts
UNION ALL
SELECT 'currencies whose balances do not sum to zero', count(*)
  FROM (SELECT currency FROM ledger.accounts
		 GROUP BY currency HAVING sum(ledger_balance(id)) <> 0) c
UNION ALL
SELECT 'events rejected for overflow', count(*) FROM ledger.events WHERE reason = 'overflow'
UNION ALL
SELECT 'events recorded twice', count(*) - count(DISTINCT id) FROM ledger.events
UNION ALL
SELECT 'events neither applied nor rejected', count(*)
  FROM ledger.events WHERE status NOT IN ('a', 'r')
UNION ALL
SELECT 'rejections for no known reason', count(*)
  FROM ledger.events e JOIN ledger.accounts a ON a.id = e.account_id
 WHERE e.status = 'r'
   AND e.reason NOT IN ('insufficient_funds', 'supply_limit')
   AND (a.currency = 0		-- limits and holds are the EUR group's only
		OR e.reason NOT IN ('max_amount', 'overdraft_limit', 'daily_debit_limit',
							'hold_posted', 'hold_voided', 'hold_rejected', 'exceeds_hold'))
UNION ALL
SELECT 'negative balances that may not be', count(*)
  FROM ledger.accounts
 WHERE NOT allow_negative AND ledger_balance(id) < 0 AND currency = 0
UNION ALL
SELECT 'negative legs that may not be', count(*)
  FROM ledger.transactions t JOIN ledger.accounts a ON a.id = t.account_id
 WHERE NOT a.allow_negative AND t.balance_after < 0 AND a.currency = 0
UNION ALL
SELECT 'accounts with two legs of one event', count(*) FROM legs WHERE n > 1
UNION ALL
SELECT 'events with the wrong number of legs', count(*)
  FROM ledger.events e
  LEFT JOIN (SELECT event_id, sum(n) AS n FROM legs GROUP BY event_id) l
	ON l.event_id = e.id
 WHERE COALESCE(l.n, 0) <> CASE WHEN e.status = 'r' OR e.kind IN ('h', 'v') THEN 0
								WHEN e.kind = 's' THEN 1 + cardinality(e.to_accounts)
								ELSE 2 END
UNION ALL
SELECT 'legs of no event', count(*)
  FROM ledger.transactions t
 WHERE NOT EXISTS (SELECT 1 FROM ledger.events e WHERE e.id = t.event_id)
}),
	join("\n",
		'sum of all balances|0',
		'currencies whose balances do not sum to zero|0',
		'events rejected for overflow|0',
		'events recorded twice|0',
		'events neither applied nor rejected|0',
		'rejections for no known reason|0',
		'negative balances that may not be|0',
		'negative legs that may not be|0',
		'accounts with two legs of one event|0',
		'events with the wrong number of legs|0',
		'legs of no event|0'),
	'the books balance');

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

my (%model, %model_legs, @model_problems);
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
foreach my $id (sort { $a <=> $b } keys %account)
{
	my $expected = exists $model{$id} ? $model{$id}->bstr : '0';
	push @model_problems, "account $id: the model says $expected, ledger_balance() $account{$id}{balance}"
	  if $expected ne $account{$id}{balance};
}
push @model_problems, map { "account $_ is in the model, not in ledger.accounts" }
  grep { !exists $account{$_} } sort { $a <=> $b } keys %model;
holds('the model\'s balances are ledger_balance() of every account', @model_problems);

my %actual_legs;
foreach my $account (keys %legs_of)
{
	$actual_legs{"$account|$_->{event}|$_->{amount}"}++ foreach @{ $legs_of{$account} };
}
holds(
	'the legs are exactly those the applied events post, each once',
	(map { "leg (account|event|amount) $_ is missing" } grep { !$actual_legs{$_} } sort keys %model_legs),
	(map { "leg $_ is posted $actual_legs{$_} times, but no applied event posts it" }
	  grep { !$model_legs{$_} } sort keys %actual_legs),
	(map { "leg $_ is posted $actual_legs{$_} times" } grep { $actual_legs{$_} > 1 } sort keys %actual_legs));

### The EUR group's model

# The limits of each spender over time: its changes in the order they were
# made (the order of ledger.limits' ids), each with the time its statement
# started (set_at) and, for the operator's, a time after it committed.
my %changed_at;
foreach my $line (grep { /^changed\|/ } split(/\n/, $operator->{out}))
{
	my (undef, $k, $at) = split(/\|/, $line);
	$changed_at{$k} = $at;
}
my (%changes_of, $nlimit_rows);
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
is($nlimit_rows, scalar(keys %initial_limits) + $nchanges, 'every change of limits is in ledger.limits');
is(scalar(keys %changed_at), $nchanges, 'the operator noted every change');

# The batches each worker ran, as the history shows them: their times.
my %batch_times;
{
	my %seen;
	$seen{ $account{ $_->{account} }{bucket} }{ $_->{at} } = 1 foreach values %event;
	foreach my $id (keys %legs_of)
	{
		$seen{ $account{$id}{bucket} }{ $_->{at} } = 1 foreach @{ $legs_of{$id} };
	}
	$batch_times{$_} = [ sort { $a <=> $b } keys %{ $seen{$_} } ] foreach keys %seen;
}

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
my $eur = $node->safe_psql('postgres', "SELECT no FROM ledger.currencies WHERE code = 'EUR'");
my $mal = $node->safe_psql('postgres', "SELECT no FROM ledger.currencies WHERE code = 'MAL'");
my %currency_code = (0 => 'XXX', $eur => 'EUR', $mal => 'MAL');
my %euro = map {
	$_ => { balance => 0, held => 0, debits => 0, negative => $euro_flag{$_} // $mal_flag{$_} }
} @spenders, @sinks, @vaults, @mal_own, @mal_victims, $mal_relay;
foreach my $currency ($eur, $mal)
{
	$euro{ -1 - $_ - 64 * $currency } = { balance => 0, held => 0, debits => 0, negative => 1 }
	  foreach 0, 1;
}
# What the accounts of a bucket owe in a currency is the sum of what each
# owes: the model's accounts are all the accounts of their currencies.
my %group_of;
foreach my $id (keys %euro)
{
	my $group = "$account{$id}{bucket} $account{$id}{currency}";

	$euro{$id}{group} = $group;
	push @{ $group_of{$group} }, $euro{$id};
}
my %hold;

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

# What each post asked for: [amount], undef for all of the hold.
my %asked;
foreach my $call (grep { $_->{committed} && $_->{op}{fn} eq 'post' } @calls)
{
	$asked{ $_->{id} } = [ $call->{op}{amount} ] foreach @{ $call->{events} };
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

my @euro_problems;
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
holds('the model predicts the outcome of every EUR and MAL event', @euro_problems);

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
holds('the EUR and MAL balances and available balances are the model\'s', @euro_balances);

# ledger_health(), once the queue drained: nothing pending, and a row for
# each bucket whose accounts owe more than 90% of the supply bound in a
# currency, with what they owe: max(0, -available) summed over them.
my %owes;
foreach my $id (keys %account)
{
	my $group = "$account{$id}{bucket}|$currency_code{ $account{$id}{currency} }";

	$owes{$group} //= 0;
	$owes{$group} -= $account{$id}{available} if $account{$id}{available} < 0;
}
my @owing = grep { $owes{$_} > 0.9 * $bound } sort keys %owes;
$stats{'buckets owing over 90% of the bound at the end'} = scalar(@owing);
is( $node->safe_psql(
		'postgres', q{
SELECT problem, bucket, detail FROM ledger_health('0 seconds')
 WHERE problem <> 'supply'
UNION ALL
SELECT problem, bucket, detail FROM ledger_health()
 WHERE problem = 'supply' ORDER BY 1, 2, 3}),
	join("\n",
		map {
			my ($bucket, $code) = split(/\|/, $_);
			"supply|$bucket|in $code, its accounts owe $owes{$_} of the bound $bound"
		} sort { (split(/\|/, $a))[0] <=> (split(/\|/, $b))[0] || $a cmp $b } @owing),
	'ledger_health() finds nothing pending, and the buckets that owe most');

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
holds('every hold is as the model says, and ended as it says', @hold_problems);

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
push @{ $accounts_of_group{"$account{$_}{bucket} $account{$_}{currency}"} }, $_ foreach keys %account;

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

my @unjustified;
# (the EUR and MAL groups' rejections are the model's, above)
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
holds('every rejection was due', @unjustified);

### Order

# A session's events of one bucket are applied in the order it enqueued
# them (events without an idempotency key: their session is known), but
# for the debits that waited for credits sent earlier in their transaction
# from another bucket (order.c) and the events held back behind them.
#
# Which debits may have waited: those of a payer that an event queued
# earlier in the transaction (also one rolled back to a savepoint since)
# credits from another bucket.
my %call_of = map { ("$_->{session} $_->{n}" => $_) } @calls;
my %may_wait;
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
my %events_of_bucket;
push @{ $events_of_bucket{ $account{ $_->{account} }{bucket} } }, $_
  foreach sort { $a->{id} <=> $b->{id} } values %event;

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

my @disorder;
foreach my $s (1 .. $nsessions, $hostile)
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
holds('a session\'s events of a bucket are applied in the order it enqueued them', @disorder);

### Owners

# Only members of an account's owner role (and the superuser) debited it:
# every event paid out of an owned account (or holding its money) was
# returned to committed calls of such roles only.  And mallory's events
# pay out of its own accounts only.
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
holds('only the members of an account\'s owner debit it', @stolen);

### Coverage: the generator keeps reaching what it is meant to

$stats{"applied: $_->{kind}"}++ foreach grep { $_->{status} eq 'a' } values %event;
$stats{'EUR posts across buckets'} = grep {
	$_->{status} eq 'a' && $_->{kind} eq 'p'
	  && $account{ $_->{account} }{bucket} != $account{ $_->{to} }{bucket}
} values %event;
$stats{'applied cross-bucket transfers'} = grep {
	$_->{status} eq 'a' && $_->{kind} eq 't'
	  && $account{ $_->{account} }{bucket} != $account{ $_->{to} }{bucket}
} values %event;
note join("\n", map { "$_: $stats{$_}" } sort keys %stats);
if ($ncalls * $nsessions >= 2000)
{
	my %errors;
	$errors{ $_->{op}{expect} } = 1 foreach grep { defined $_->{op}{expect} } @calls;
	is( join(' ', sort keys %errors),
		'22001 22003 22004 22023 2202E 23503 23L01 42501 42704 42710 53400 54000',
		'the calls raised every kind of error');
	my @missing = grep { !$stats{$_} } (
		'calls rolled back', 'savepoints rolled back to', 'private key reused', 'retries',
		'keys used by two roles', 'batches that repeat a transfer under its key',
		'rejected: insufficient_funds', 'rejected: supply_limit',
		'applied: s', 'applied cross-bucket transfers', 'prop_a: 23L01', 'prop_b: 23L01',
		'prop_a: 42501', "debits of tenant's accounts",
		'buckets owing over 90% of the bound at the end');
	ok(!@missing,
		'rollbacks, savepoints, reused keys, both rejections, owners and cross-bucket payments happened')
	  or diag 'missing: ' . join(', ', @missing);

	# the hostile client: every refusal, and the guard's exemption
	@missing = grep { !$stats{$_} } (
		'mallory: ok', 'mallory: 42501', 'mallory: 23L01', 'mallory: 53400',
		'hostile: posts and voids let through past the limit', "debits of mallory's accounts",
		'MAL transfer: applied', 'MAL hold: applied', 'MAL post: applied', 'MAL void: applied',
		'MAL payments out of the relay applied');
	my %mal_outcomes;
	foreach my $k (keys %stats)
	{
		$mal_outcomes{$1} += $stats{$k} if $k =~ /^MAL \w+: (\w+)$/;
	}
	push @missing, grep { !$mal_outcomes{$_} }
	  qw(insufficient_funds hold_posted hold_voided hold_rejected exceeds_hold);
	ok(!@missing, 'mallory met every refusal, and its holds every end')
	  or diag 'missing: ' . join(', ', @missing);

	# the EUR group: every outcome, by reason whatever the kind of event
	my %euro_outcomes;
	foreach my $k (keys %stats)
	{
		$euro_outcomes{$1} += $stats{$k} if $k =~ /^EUR \w+: (\w+)$/;
	}
	@missing = grep { !$euro_outcomes{$_} }
	  qw(applied insufficient_funds overdraft_limit max_amount daily_debit_limit supply_limit
	  hold_posted hold_voided hold_rejected exceeds_hold);
	push @missing, grep { !$stats{$_} } (
		'EUR hold: applied', 'EUR post: applied', 'EUR void: applied',
		'EUR partial posts applied', 'EUR holds open at the end', 'EUR holds posted at the end',
		'EUR holds voided at the end', 'EUR holds rejected at the end',
		'EUR decisions under limits changed in the run', 'EUR posts across buckets');
	ok(!@missing, 'EUR events met every outcome, holds every end, and limits changed under them')
	  or diag 'missing: ' . join(', ', @missing);
}

$node->stop;
done_testing();
