/*-------------------------------------------------------------------------
 *
 * transfers.h
 *	  Concurrent transfers grouped into one ledger_transfer_many() call.
 *
 * transfers_init() makes the grouping the pool's source of statements
 * (db_set_source): the pool asks for a group whenever a connection is free.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_HTTP_TRANSFERS_H
#define LEDGER_HTTP_TRANSFERS_H

#include <stdbool.h>

#include "request.h"

extern int	transfers_init(void);
extern void transfers_add(Request *req);
extern void transfers_flush(void);
extern bool transfers_idle(void);
extern void transfers_close(void);
extern void transfers_report(void);

#endif							/* LEDGER_HTTP_TRANSFERS_H */
