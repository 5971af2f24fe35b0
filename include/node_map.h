/*-------------------------------------------------------------------------
 *
 * node_map.h
 *	  Which workers of a cluster node the node map leaves without accounts
 *	  (node_map.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_NODE_MAP_H
#define LEDGER_NODE_MAP_H

#include "nodes/pg_list.h"
#include "ledger.h"

extern List *ledger_unmapped_workers(int node);

#endif							/* LEDGER_NODE_MAP_H */
