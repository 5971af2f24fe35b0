/*-------------------------------------------------------------------------
 *
 * http_conn.h
 *	  The client connections of ledger-http: HTTP/1.1 framing, keep-alive,
 *	  timeouts, and the writing of answers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_HTTP_HTTP_CONN_H
#define LEDGER_HTTP_HTTP_CONN_H

extern int	http_listen(void);
extern void http_stop_accepting(void);
extern int	http_client_count(void);

#endif							/* LEDGER_HTTP_HTTP_CONN_H */
