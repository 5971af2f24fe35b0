/*-------------------------------------------------------------------------
 *
 * caller.c
 *	  Running an enqueue function as the extension's owner, knowing its caller.
 *
 * Clients hold no rights on the ledger's tables, only EXECUTE on its
 * functions.  The read functions are SECURITY DEFINER.  The enqueue
 * functions are not: they must know who calls them, since a debit from an
 * account with an owner role is refused to anyone outside that role, and an
 * idempotency key names a request of one role.  Inside a SECURITY DEFINER
 * function the caller is gone (current_user is the owner), so these switch
 * to the owner themselves, as fmgr_security_definer() would, after noting
 * who called.
 *
 * They also pin the search path, as the SET clause of a SECURITY DEFINER
 * function would, but by pushing an override path of pg_catalog alone:
 * that costs no GUC save and restore at every call, and the plans the
 * library keeps were made under the same path, so they are not replanned.
 * An error unwinds both: the end of the (sub)transaction restores the user
 * and drops the override path.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/syscache.h"

#include "ledger.h"
#include "caller.h"

/* pg_catalog alone: every table the library names is schema-qualified */
static OverrideSearchPath pinned_path = {
	.schemas = NIL, .addCatalog = true, .addTemp = false
};

/*
 * Start running the enqueue function fcinfo calls as its owner, the
 * extension's.  The function's owner is looked up once per call site.
 */
void
ledger_call_begin(FunctionCallInfo fcinfo, LedgerCall *call)
{
	Oid		   *owner = (Oid *) fcinfo->flinfo->fn_extra;

	if (owner == NULL)
	{
		HeapTuple	tuple = SearchSysCache1(PROCOID,
											ObjectIdGetDatum(fcinfo->flinfo->fn_oid));

		if (!HeapTupleIsValid(tuple))
			elog(ERROR, "cache lookup failed for function %u", fcinfo->flinfo->fn_oid);
		owner = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(Oid));
		*owner = ((Form_pg_proc) GETSTRUCT(tuple))->proowner;
		ReleaseSysCache(tuple);
		fcinfo->flinfo->fn_extra = owner;
	}

	GetUserIdAndSecContext(&call->save_userid, &call->save_sec_context);
	call->caller = call->save_userid;
	SetUserIdAndSecContext(*owner,
						   call->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PushOverrideSearchPath(&pinned_path);
}

/* Back to the caller's user and search path. */
void
ledger_call_end(LedgerCall *call)
{
	PopOverrideSearchPath();
	SetUserIdAndSecContext(call->save_userid, call->save_sec_context);
}

/*
 * May the caller debit an account whose owner role is owner (InvalidOid:
 * none)?  Members of the owner role may, and superusers.
 */
void
ledger_check_debit(LedgerCall *call, int64 account_id, Oid owner)
{
	char	   *name;

	if (!OidIsValid(owner) || has_privs_of_role(call->caller, owner))
		return;
	name = GetUserNameFromId(owner, true);
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to debit account " INT64_FORMAT, account_id),
			 name ?
			 errdetail("The account belongs to role \"%s\"; only its members may move money out of it.",
					   name) :
			 errdetail("The account belonged to a role that was dropped; only superusers may move money out of it.")));
}
