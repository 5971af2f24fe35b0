/*-------------------------------------------------------------------------
 *
 * pgtext.c
 *	  Values in PostgreSQL's text format, for the statements of routes.c
 *	  and transfers.c: bigints, arrays of bigints and of text as
 *	  parameters, and arrays of bigints read back from results.
 *
 *-------------------------------------------------------------------------
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgtext.h"

/* A growing string, for array literals; NULL at the end if memory ran out. */
typedef struct StrBuf
{
	char	   *data;
	size_t		len;
	size_t		size;
	bool		failed;
} StrBuf;

static void
strbuf_append(StrBuf *sb, const char *s, size_t n)
{
	if (sb->failed)
		return;
	if (sb->len + n + 1 > sb->size)
	{
		size_t		size = sb->size ? sb->size : 64;
		char	   *data;

		while (sb->len + n + 1 > size)
			size *= 2;
		data = realloc(sb->data, size);
		if (data == NULL)
		{
			sb->failed = true;
			return;
		}
		sb->data = data;
		sb->size = size;
	}
	memcpy(sb->data + sb->len, s, n);
	sb->len += n;
	sb->data[sb->len] = '\0';
}

static char *
strbuf_finish(StrBuf *sb)
{
	if (sb->failed)
	{
		free(sb->data);
		return NULL;
	}
	return sb->data;
}

char *
int_to_text(long long value)
{
	char		buf[32];

	snprintf(buf, sizeof(buf), "%lld", value);
	return strdup(buf);
}

/* '{1,2,3}': a bigint[] in text form. */
char *
bigint_array_literal(const long long *values, int n)
{
	StrBuf		sb = {0};
	char		buf[32];
	int			i;

	strbuf_append(&sb, "{", 1);
	for (i = 0; i < n; i++)
	{
		int			len = snprintf(buf, sizeof(buf), "%s%lld",
								   i > 0 ? "," : "", values[i]);

		strbuf_append(&sb, buf, len);
	}
	strbuf_append(&sb, "}", 1);
	return strbuf_finish(&sb);
}

/* '{"a",NULL,"b\"c"}': a text[] in text form; NULL elements stay NULL. */
char *
text_array_literal(char *const *values, int n)
{
	StrBuf		sb = {0};
	int			i;

	strbuf_append(&sb, "{", 1);
	for (i = 0; i < n; i++)
	{
		const char *p;

		if (i > 0)
			strbuf_append(&sb, ",", 1);
		if (values[i] == NULL)
		{
			strbuf_append(&sb, "NULL", 4);
			continue;
		}
		strbuf_append(&sb, "\"", 1);
		for (p = values[i]; *p; p++)
		{
			if (*p == '"' || *p == '\\')
				strbuf_append(&sb, "\\", 1);
			strbuf_append(&sb, p, 1);
		}
		strbuf_append(&sb, "\"", 1);
	}
	strbuf_append(&sb, "}", 1);
	return strbuf_finish(&sb);
}

/*
 * Read a bigint[] in text form, as the server sends it ('{1,2,3}'), one
 * element at a time: *pos starts at the text, and each call stores the next
 * element in *value and moves past it.  False at the end, or at anything
 * that is not a number (a NULL element, say).
 */
bool
bigint_array_next(const char **pos, long long *value)
{
	const char *p = *pos;
	char	   *end;

	if (*p == '{')
		p++;
	if (*p == '\0' || *p == '}')
		return false;
	*value = strtoll(p, &end, 10);
	if (end == p)
		return false;
	*pos = *end == ',' ? end + 1 : end;
	return true;
}
