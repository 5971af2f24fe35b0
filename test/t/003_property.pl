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
# can release a hold is let through).  See "The hostile client" in
# LedgerOps.pm.
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
#
# The calls, and the answer each must get, are LedgerOps.pm's; the model,
# and its comparisons with what the server holds, LedgerModel.pm's.  Each
# check below returns its counterexamples: none when the property holds.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);
use FindBin;
use lib $FindBin::RealBin;
use LedgerOps;
use LedgerModel;

my $seed      = $ENV{LEDGER_PROPERTY_SEED}     // 20261125;
my $nsessions = $ENV{LEDGER_PROPERTY_SESSIONS} // 4;
my $ncalls    = $ENV{LEDGER_PROPERTY_CALLS}    // 1500;
diag "LEDGER_PROPERTY_SEED=$seed, $nsessions sessions x $ncalls calls";
srand($seed);
my $nhostile = $ENV{LEDGER_PROPERTY_HOSTILE_CALLS} // int($ncalls / 4);
my $tmp      = PostgreSQL::Test::Utils::tempdir;

# The sessions: 0, the superuser's, opens the shared accounts; 1 ..
# $nsessions are the operators'; then prop_a's claims of shared keys
# before they begin, the hostile client's, and the closing deposit.
my $preclaim = $nsessions + 1;
my $hostile  = $nsessions + 2;
my $closing  = $nsessions + 3;

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

# Session 0, the superuser's: the shared accounts, the EUR and MAL groups'
# with the spenders' first limits, their first deposits, and a hold on
# each of the tenant's MAL accounts, which mallory tries to end.
my ($setup, $victim_holds) = setup_calls();
my %outputs;
$outputs{0} = $node->safe_psql('postgres', session_script(0, $setup));

# prop_a claims half of the shared keys before the sessions begin.
my $preclaimed = preclaimed_calls($preclaim);
$outputs{$preclaim} = $node->safe_psql('postgres', session_script($preclaim, $preclaimed),
	extra_params => [ '-U', 'prop_a' ]);

### The sessions, at the same time

my %ops = (0 => $setup, $preclaim => $preclaimed);
my %role_of = (0 => 'superuser', $preclaim => 'prop_a', $hostile => 'mallory');
foreach my $s (1 .. $nsessions)
{
	$ops{$s} = gen_session($s, $ncalls);
	$role_of{$s} = session_role($s);
	append_to_file("$tmp/session$s.sql", session_script($s, $ops{$s}));
}
$ops{$hostile} = gen_hostile($hostile, $nhostile, $victim_holds);
append_to_file("$tmp/session$hostile.sql", session_script($hostile, $ops{$hostile}));

# The operator: changes the limits of a spender now and then while the
# sessions run, and notes a time after each change committed.
append_to_file("$tmp/operator.sql", operator_script());

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
$role_of{$closing} = 'superuser';
$ops{$closing} = closing_calls($closing);
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

# Each session's output, along with its operations: which calls committed,
# what each returned.
my $record = record_calls(\%ops, \%outputs, \%role_of);

holds('every call succeeded or failed as predicted', @{ $record->{mispredicted} });
holds('a key the session holds returns its event, also after rollbacks', @{ $record->{key_problems} });
is(join(' ', @{ $record->{guard} }), $guard_limit,
	'mallory runs with the spam guard on');
holds(
	'mallory\'s events were applied or rejected before its next transaction',
	map { "a wait of mallory's returned $_" } grep { !/^(applied|rejected)$/ } @{ $record->{waits} });
ok(@{ $record->{waits} } > 0, 'mallory waited for its events');

# prop_log holds the outcome of exactly the calls that committed.
holds('prop_log holds the calls that committed, and only those', prop_log_problems($node));

### The ledger's state

read_ledger($node);

# Every event id a committed call returned exists, holding that call's
# arguments; no other event exists; ids returned only by rolled-back calls
# exist nowhere.
holds(
	'every event a committed call returned exists, with the arguments of a committed call that returned it',
	returned_event_problems());
holds('every event was returned by a committed call', unreturned_events());
holds('no event returned only by rolled-back calls exists', rolled_back_events());

# Idempotency keys: one event per key and role, the same id to every call
# of the role that used it (rollbacks undo a key's claim), and calls
# sharing an id share a key and a role.
holds('calls that got the same event id used the same idempotency key, as the same role',
	shared_id_problems());
holds('every idempotency key holds one existing event, the one every committed call with it got',
	idempotency_problems());

### Breakpoints

# Each breakpoint of an account covers the legs after the previous one, up
# to a leg of the account, and records the balances before and after them
# and their difference.  An account that may go negative can swing from near
# the smallest bigint to near the largest: its worker then closes a
# breakpoint early, so that every difference fits ledger.breakpoints'
# bigint amount_difference.
holds('breakpoints agree with the legs they cover', breakpoint_problems($node));

### The books

# ledger_verify() is clean, the balances of each currency sum to zero, no
# account that may not go negative has a negative balance or leg, each
# applied event has its legs (2, or 1 + payees), rejected ones none, and no
# event was rejected for overflow.
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

# The balances recomputed from the applied events are those
# ledger_balance() reports, for every account, and the legs are exactly
# those the applied events post.
holds('the model\'s balances are ledger_balance() of every account', balance_problems());
holds('the legs are exactly those the applied events post, each once', leg_problems());

### The EUR and MAL groups' model

# The limits the events were decided under: the setup's and the
# operator's changes, each in ledger.limits, and a time the operator noted
# after each of its own committed.
my ($nlimit_rows, $nnoted) = read_limits($node, $operator->{out});
is($nlimit_rows, scalar(keys %initial_limits) + $nchanges, 'every change of limits is in ledger.limits');
is($nnoted, $nchanges, 'the operator noted every change');

# Replayed in the order each bucket's worker decided them, the EUR and MAL
# groups' events: the model predicts each one's outcome (applied, or
# rejected and why, and the amount a post moved), under the limits the
# batch that decided it may have used; then the balances and available
# balances, and every hold's status and end.
holds('the model predicts the outcome of every EUR and MAL event', euro_problems());
holds('the EUR and MAL balances and available balances are the model\'s', euro_balance_problems());

# ledger_health(), once the queue drained: nothing pending, and a row for
# each bucket whose accounts owe more than 90% of the supply bound in a
# currency, with what they owe: max(0, -available) summed over them.
is( $node->safe_psql(
		'postgres', q{
SELECT problem, bucket, detail FROM ledger_health('0 seconds')
 WHERE problem <> 'supply'
UNION ALL
SELECT problem, bucket, detail FROM ledger_health()
 WHERE problem = 'supply' ORDER BY 1, 2, 3}),
	supply_warnings(),
	'ledger_health() finds nothing pending, and the buckets that owe most');

holds('every hold is as the model says, and ended as it says', hold_problems($node));

### Rejections

# Every rejection of the other events was due: for some balance the
# account could have had when its event was decided, the event would
# overdraw it, or (for supply_limit) what its bucket could have owed in
# the currency, but for the payer, and what the payer would owe once
# debited, pass the bound.  (The EUR and MAL groups' rejections are the
# model's, above.)
holds('every rejection was due', unjustified_rejections());

### Order

# A session's events of one bucket are applied in the order it enqueued
# them (events without an idempotency key: their session is known), but
# for the debits that waited for credits sent earlier in their transaction
# from another bucket (order.c) and the events held back behind them.
holds('a session\'s events of a bucket are applied in the order it enqueued them',
	disorder(1 .. $nsessions, $hostile));

### Owners

# Only members of an account's owner role (and the superuser) debited it:
# every event paid out of an owned account (or holding its money) was
# returned to committed calls of such roles only.  And mallory's events
# pay out of its own accounts only.
holds('only the members of an account\'s owner debit it', stolen_debits());

### Coverage: the generator keeps reaching what it is meant to

note join("\n", map { "$_: $stats{$_}" } sort keys %stats);
if ($ncalls * $nsessions >= 2000)
{
	is( join(' ', expected_errors()),
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
