/*-------------------------------------------------------------------------
 *
 * fifo.h
 *	  An intrusive first-in first-out list, with its length.
 *
 * The pool's queue of statements (db_pool.c) and the transfers waiting to
 * be grouped (transfers.c) are both such lists of structs that carry their
 * own link, so that queueing never allocates and cannot fail.  fifo_entry()
 * goes back from a link to the struct around it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_HTTP_FIFO_H
#define LEDGER_HTTP_FIFO_H

#include <stddef.h>

typedef struct FifoLink
{
	struct FifoLink *next;
} FifoLink;

typedef struct Fifo
{
	FifoLink   *head;
	FifoLink   *tail;
	int			count;
} Fifo;

/* The struct of type type whose member member is the link given. */
#define fifo_entry(link, type, member) \
	((type *) ((char *) (link) - offsetof(type, member)))

static inline void
fifo_push(Fifo *fifo, FifoLink *link)
{
	link->next = NULL;
	if (fifo->tail != NULL)
		fifo->tail->next = link;
	else
		fifo->head = link;
	fifo->tail = link;
	fifo->count++;
}

/* Put a link at the head: it goes out next. */
static inline void
fifo_push_first(Fifo *fifo, FifoLink *link)
{
	link->next = fifo->head;
	fifo->head = link;
	if (fifo->tail == NULL)
		fifo->tail = link;
	fifo->count++;
}

/* Take the head's link out, or NULL if there is none. */
static inline FifoLink *
fifo_pop(Fifo *fifo)
{
	FifoLink   *link = fifo->head;

	if (link == NULL)
		return NULL;
	fifo->head = link->next;
	if (fifo->head == NULL)
		fifo->tail = NULL;
	fifo->count--;
	link->next = NULL;
	return link;
}

#endif							/* LEDGER_HTTP_FIFO_H */
