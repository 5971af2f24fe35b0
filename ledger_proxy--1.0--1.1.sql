/*
 * ledger_proxy--1.0--1.1.sql: the API of ledger 1.5 through the proxy.
 * Accounts gain an owner role; the roles are the nodes' (the proxy connects
 * to them as its caller).
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION ledger_proxy UPDATE TO '1.1'" to load this file. \quit

DROP FUNCTION ledger_open_account(bigint, boolean, text);
CREATE FUNCTION ledger_open_account(account_id bigint,
									allow_negative boolean DEFAULT false,
									currency text DEFAULT NULL,
									owner regrole DEFAULT NULL)
RETURNS void AS $$
	CLUSTER 'ledger';
	RUN ON ledger_proxy.account_bucket(account_id);
$$ LANGUAGE plproxy;
