/*
 * ledger--1.3--1.4.sql: a lighter queue.
 *
 * Every enqueue writes one queue row and every index entry of it, and every
 * applied event deletes the row again: on a queue that has churned through
 * millions of events, each index costs enqueue dearly.  1.2 gave the queue
 * two more indexes, and 1.4 takes them back:
 * - the spam guard (ledger.max_pending_per_account) counted a payer's
 *   queue rows through queue_account_id_idx; it now keeps its counts in
 *   shared memory (see the README), and the library does so for every
 *   schema version;
 * - ledger_find_events() searched the pending events by
 *   queue_metadata_idx; it now reads the queue, which holds only the
 *   events not yet applied, while applied events are still found through
 *   events_metadata_idx.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION ledger UPDATE TO '1.4'" to load this file. \quit

DROP INDEX ledger.queue_account_id_idx;
DROP INDEX ledger.queue_metadata_idx;
