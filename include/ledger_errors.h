/*-------------------------------------------------------------------------
 *
 * ledger_errors.h
 *	  The parts of the ledger's error reports that clients may parse.
 *
 * This is a documented client contract (README.md, "The SQL API"): what is
 * defined here is the one definition used both by the extension, to report,
 * and by its clients, to parse (bench/http does), so that neither side
 * depends on the other's copy of a wording.  Changing a definition breaks
 * clients in the field; add a new one instead.  The wording is never
 * translated: the extension ships no message catalog.
 *
 * No PostgreSQL include here, so that any client can include it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LEDGER_ERRORS_H
#define LEDGER_ERRORS_H

/*
 * The line an error about one element of ledger_transfer_many() adds to the
 * error's context (PG_DIAG_CONTEXT, "CONTEXT:" in psql): N is the element's
 * position in the arrays, counting from 1.  It is the whole context of a
 * direct call; a call from a function gets that function's context lines
 * after it.  A printf format for errcontext(), and a scanf format that
 * reads N back from the line.
 */
#define LEDGER_ELEMENT_CONTEXT "transfer %d of the batch"

#endif							/* LEDGER_ERRORS_H */
