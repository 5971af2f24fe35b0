/*-------------------------------------------------------------------------
 *
 * http_conn.c
 *	  Client connections of ledger-http: HTTP/1.1 framing, keep-alive,
 *	  timeouts and responses.
 *
 * Requests are parsed with the http_parser library.  A connection handles
 * one request at a time: the parser pauses at the end of each message, and
 * resumes on the bytes already received (pipelined requests) only once the
 * response has been written.  While a request is being answered, reading
 * goes on until the input buffer is full, then stops: a client cannot make
 * us buffer more than one request's worth ahead.
 *
 * Limits: --max-header bytes of request line and headers (431), --max-body
 * bytes of body (413), --timeout-ms to receive a request once its first
 * byte has come or to write a response (408, then close),
 * --idle-timeout-ms between requests (close).  After an error that leaves
 * the stream unusable, the connection answers, stops writing, and drains
 * its input for a moment before closing, so that the client reads the
 * answer rather than a reset.
 *
 * A parsed request goes to routes.c; its answer comes back through
 * client_answer(), the function the request was created with, so that
 * neither routes.c nor request.c calls into this file.
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>

#include "common.h"
#include "http_conn.h"
#include "request.h"
#include "routes.h"

#define READ_CHUNK		16384
#define MAX_URL			2048
#define LINGER_MS		2000

typedef enum ClientState
{
	CS_READING,					/* waiting for, or receiving, a request */
	CS_PROCESSING,				/* a request is being answered */
	CS_WRITING,					/* its response is being written */
	CS_LINGERING				/* done: draining input before closing */
} ClientState;

struct Client
{
	uv_tcp_t	tcp;
	uv_timer_t	timer;
	uv_shutdown_t shutdown;
	http_parser parser;
	ClientState state;
	int			open_handles;	/* freed when both handles have closed */
	bool		closing;
	bool		eof;			/* the client has sent all it will */
	bool		reading;
	bool		in_message;		/* part of a request has been parsed */
	bool		keep_alive;
	int			error_status;	/* why a parser callback failed */
	const char *error_message;

	char	   *in;				/* received, not yet parsed */
	size_t		in_len;
	size_t		in_size;

	/* the request being parsed */
	char		url[MAX_URL + 1];
	size_t		url_len;
	char	   *body;
	size_t		body_len;
	size_t		body_size;
	char		field[16];		/* the only header we need is Expect */
	size_t		field_len;
	char		value[16];
	size_t		value_len;
	bool		in_value;
	bool		expect_continue;

	Request    *pending;		/* the request being answered */
	Client	   *prev;
	Client	   *next;
};

typedef struct WriteReq
{
	uv_write_t	req;
	char	   *data;
	bool		close_after;
} WriteReq;

static uv_tcp_t server;
static Client *clients;
static int	nclients;
static http_parser_settings parser_settings;

static void client_parse(Client *c);
static void client_start_reading(Client *c);
static void on_timer(uv_timer_t *timer);

static const char *
reason_phrase(int status)
{
	switch (status)
	{
		case 200:
			return "OK";
		case 202:
			return "Accepted";
		case 400:
			return "Bad Request";
		case 404:
			return "Not Found";
		case 405:
			return "Method Not Allowed";
		case 408:
			return "Request Timeout";
		case 409:
			return "Conflict";
		case 413:
			return "Payload Too Large";
		case 414:
			return "URI Too Long";
		case 422:
			return "Unprocessable Entity";
		case 431:
			return "Request Header Fields Too Large";
		case 503:
			return "Service Unavailable";
		default:
			return "Internal Server Error";
	}
}

static void
on_handle_closed(uv_handle_t *handle)
{
	Client	   *c = handle->data;

	if (--c->open_handles > 0)
		return;
	free(c->in);
	free(c->body);
	free(c);
	nclients--;
}

static void
client_close(Client *c)
{
	if (c->closing)
		return;
	c->closing = true;
	if (c->pending != NULL)
	{
		/* the request lives on until the database answers */
		request_client_gone(c->pending);
		c->pending = NULL;
	}
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		clients = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	uv_close((uv_handle_t *) &c->tcp, on_handle_closed);
	uv_close((uv_handle_t *) &c->timer, on_handle_closed);
}

static void
client_stop_reading(Client *c)
{
	if (c->reading)
		uv_read_stop((uv_stream_t *) &c->tcp);
	c->reading = false;
}

static void
on_shutdown(uv_shutdown_t *req, int status)
{
}

/* The response that ends the connection is out: drain, then close. */
static void
client_linger(Client *c)
{
	c->state = CS_LINGERING;
	c->in_len = 0;
	if (c->eof ||
		uv_shutdown(&c->shutdown, (uv_stream_t *) &c->tcp, on_shutdown) != 0)
	{
		client_close(c);
		return;
	}
	uv_timer_start(&c->timer, on_timer, LINGER_MS, 0);
	client_start_reading(c);
}

static void
on_write(uv_write_t *req, int status)
{
	WriteReq   *w = (WriteReq *) req;
	Client	   *c = req->handle->data;
	bool		close_after = w->close_after;

	free(w->data);
	free(w);
	if (c->closing)
		return;
	if (status < 0)
		client_close(c);
	else if (close_after)
		client_linger(c);
	else
	{
		/* ready for the next request, maybe received already */
		c->state = CS_READING;
		uv_timer_start(&c->timer, on_timer, settings.idle_timeout_ms, 0);
		if (!c->eof)
			client_start_reading(c);
		client_parse(c);
	}
}

/* Write a whole response; the connection closes after it if asked. */
static void
client_send(Client *c, int status, const char *body, const char *allow,
			bool close_after)
{
	WriteReq   *w = malloc(sizeof(WriteReq));
	size_t		body_len = strlen(body);
	size_t		size = body_len + 256;
	uv_buf_t	buf;
	int			len;

	close_after |= !c->keep_alive || shutting_down;
	if (w == NULL || (w->data = malloc(size)) == NULL)
	{
		free(w);
		client_close(c);
		return;
	}
	len = snprintf(w->data, size,
				   "HTTP/1.1 %d %s\r\n"
				   "Content-Type: application/json\r\n"
				   "Content-Length: %zu\r\n"
				   "%s%s%s%s"
				   "\r\n%s",
				   status, reason_phrase(status), body_len,
				   close_after ? "Connection: close\r\n" : "",
				   allow ? "Allow: " : "", allow ? allow : "", allow ? "\r\n" : "",
				   body);
	w->close_after = close_after;
	buf = uv_buf_init(w->data, len);
	c->state = CS_WRITING;
	uv_timer_start(&c->timer, on_timer, settings.timeout_ms, 0);
	if (uv_write(&w->req, (uv_stream_t *) &c->tcp, &buf, 1, on_write) != 0)
	{
		free(w->data);
		free(w);
		client_close(c);
	}
}

/*
 * Send a JSON response, with a newline after it for people reading with
 * curl.  A response that cannot be built closes the connection instead.
 */
static void
client_send_json(Client *c, int status, json_t *body, const char *allow,
				 bool close_after)
{
	char	   *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	char	   *line = text ? realloc(text, strlen(text) + 2) : NULL;

	if (line == NULL)
	{
		free(text);
		client_close(c);
		return;
	}
	strcat(line, "\n");
	client_send(c, status, line, allow, close_after);
	free(line);
}

/* An error found before there is a request: answer, then close. */
static void
client_reject(Client *c, int status, const char *message)
{
	json_t	   *body = json_pack("{s:s}", "error", message);

	c->in_len = 0;
	client_send_json(c, status, body, NULL, true);
	json_decref(body);
}

/* The answer to the client's request, from request_respond(). */
static void
client_answer(Client *c, int status, json_t *body, const char *allow)
{
	c->pending = NULL;
	client_send_json(c, status, body, allow, false);
}

/* A whole request has been parsed: hand it over. */
static void
client_dispatch(Client *c)
{
	Request    *req = request_new(c, client_answer);

	uv_timer_stop(&c->timer);
	c->in_message = false;
	c->state = CS_PROCESSING;
	if (req == NULL)
	{
		client_reject(c, 500, "out of memory");
		return;
	}
	c->pending = req;
	c->url[c->url_len] = '\0';
	route_request(req, c->parser.method, c->url,
				  c->body ? c->body : "", c->body_len);

	/* a big body's buffer goes; a small one serves the next request */
	if (c->body_size > READ_CHUNK)
	{
		free(c->body);
		c->body = NULL;
		c->body_size = 0;
	}
	c->url_len = 0;
	c->body_len = 0;
}

static void
client_parse_error(Client *c)
{
	enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
	char		message[128];

	if (c->error_status != 0)
		client_reject(c, c->error_status, c->error_message);
	else if (err == HPE_HEADER_OVERFLOW)
		client_reject(c, 431, "request headers too large");
	else
	{
		snprintf(message, sizeof(message), "malformed request: %s",
				 http_errno_description(err));
		client_reject(c, 400, message);
	}
}

/* Parse what has been received, up to the end of the next request. */
static void
client_parse(Client *c)
{
	while (c->state == CS_READING && c->in_len > 0)
	{
		size_t		n = http_parser_execute(&c->parser, &parser_settings,
											c->in, c->in_len);
		enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);

		memmove(c->in, c->in + n, c->in_len - n);
		c->in_len -= n;
		if (err == HPE_PAUSED)
		{
			http_parser_pause(&c->parser, 0);
			client_dispatch(c);
		}
		else if (err != HPE_OK || c->in_len > 0)
		{
			client_parse_error(c);
			return;
		}
	}
	/* the client has finished sending and we have answered all of it */
	if (c->state == CS_READING && c->eof)
		client_close(c);
}

static void
on_timer(uv_timer_t *timer)
{
	Client	   *c = timer->data;

	if (c->state == CS_READING && c->in_message)
		client_reject(c, 408, "request timeout");
	else
		client_close(c);
}

static size_t
input_limit(void)
{
	return settings.max_header + settings.max_body + READ_CHUNK;
}

static void
on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
	static char discard[READ_CHUNK];
	Client	   *c = handle->data;

	if (c->state == CS_LINGERING)
	{
		*buf = uv_buf_init(discard, sizeof(discard));
		return;
	}
	if (c->in_size - c->in_len < READ_CHUNK && c->in_size < input_limit())
	{
		size_t		size = c->in_size ? c->in_size * 2 : READ_CHUNK;
		char	   *in;

		if (size > input_limit())
			size = input_limit();
		in = realloc(c->in, size);
		if (in != NULL)
		{
			c->in = in;
			c->in_size = size;
		}
	}
	/* a full buffer gives a zero-length read: UV_ENOBUFS */
	*buf = uv_buf_init(c->in + c->in_len, c->in_size - c->in_len);
}

static void
on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	Client	   *c = stream->data;

	if (nread > 0)
	{
		if (c->state == CS_LINGERING)
			return;
		c->in_len += nread;
		if (c->state == CS_READING)
			client_parse(c);
	}
	else if (nread == UV_EOF)
	{
		c->eof = true;
		client_stop_reading(c);
		if (c->state == CS_READING || c->state == CS_LINGERING)
			client_close(c);
	}
	else if (nread == UV_ENOBUFS)
		client_stop_reading(c);
	else if (nread < 0)
		client_close(c);
}

static void
client_start_reading(Client *c)
{
	if (!c->reading && !c->closing &&
		uv_read_start((uv_stream_t *) &c->tcp, on_alloc, on_read) == 0)
		c->reading = true;
}

/* parser callbacks */

static int
on_message_begin(http_parser *p)
{
	Client	   *c = p->data;

	c->in_message = true;
	c->url_len = 0;
	c->body_len = 0;
	c->field_len = 0;
	c->value_len = 0;
	c->in_value = false;
	c->expect_continue = false;
	c->error_status = 0;
	uv_timer_start(&c->timer, on_timer, settings.timeout_ms, 0);
	return 0;
}

static int
callback_error(Client *c, int status, const char *message)
{
	c->error_status = status;
	c->error_message = message;
	return -1;
}

static int
on_url(http_parser *p, const char *at, size_t len)
{
	Client	   *c = p->data;

	if (c->url_len + len > MAX_URL)
		return callback_error(c, 414, "URL too long");
	memcpy(c->url + c->url_len, at, len);
	c->url_len += len;
	return 0;
}

/* Append to a small header buffer; too long to be one we want: poisoned. */
static void
header_append(char *dst, size_t size, size_t *len, const char *at, size_t n)
{
	if (*len + n < size)
		memcpy(dst + *len, at, n);
	*len += n;
}

static void
header_done(Client *c)
{
	if (c->field_len == 6 && c->value_len == 12 &&
		strncasecmp(c->field, "expect", 6) == 0 &&
		strncasecmp(c->value, "100-continue", 12) == 0)
		c->expect_continue = true;
	c->field_len = 0;
	c->value_len = 0;
	c->in_value = false;
}

static int
on_header_field(http_parser *p, const char *at, size_t len)
{
	Client	   *c = p->data;

	if (c->in_value)
		header_done(c);
	header_append(c->field, sizeof(c->field), &c->field_len, at, len);
	return 0;
}

static int
on_header_value(http_parser *p, const char *at, size_t len)
{
	Client	   *c = p->data;

	c->in_value = true;
	header_append(c->value, sizeof(c->value), &c->value_len, at, len);
	return 0;
}

static void
free_write(uv_write_t *req, int status)
{
	free(req);
}

static int
on_headers_complete(http_parser *p)
{
	static char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";
	Client	   *c = p->data;
	uv_write_t *req;
	uv_buf_t	buf;

	if (c->in_value)
		header_done(c);
	/* an upgrade is not taken up: the connection ends after the answer */
	c->keep_alive = http_should_keep_alive(p) && !p->upgrade;
	if ((p->flags & F_CONTENTLENGTH) && p->content_length > settings.max_body)
		return callback_error(c, 413, "request body too large");

	/* a client waiting for our go-ahead before sending the body */
	if (c->expect_continue &&
		((p->flags & F_CHUNKED) ||
		 ((p->flags & F_CONTENTLENGTH) && p->content_length > 0)) &&
		(req = malloc(sizeof(uv_write_t))) != NULL)
	{
		buf = uv_buf_init(continue_line, strlen(continue_line));
		if (uv_write(req, (uv_stream_t *) &c->tcp, &buf, 1, free_write) != 0)
			free(req);
	}
	return 0;
}

static int
on_body(http_parser *p, const char *at, size_t len)
{
	Client	   *c = p->data;

	if (c->body_len + len > settings.max_body)
		return callback_error(c, 413, "request body too large");
	if (c->body_len + len > c->body_size)
	{
		size_t		size = c->body_size ? c->body_size : 1024;
		char	   *body;

		while (size < c->body_len + len)
			size *= 2;
		if (size > settings.max_body)
			size = settings.max_body;
		body = realloc(c->body, size);
		if (body == NULL)
			return callback_error(c, 500, "out of memory");
		c->body = body;
		c->body_size = size;
	}
	memcpy(c->body + c->body_len, at, len);
	c->body_len += len;
	return 0;
}

static int
on_message_complete(http_parser *p)
{
	/* one request at a time: stop here until it has been answered */
	http_parser_pause(p, 1);
	return 0;
}

static void
on_connection(uv_stream_t *listener, int status)
{
	Client	   *c;

	if (status < 0)
	{
		log_message("accept: %s", uv_strerror(status));
		return;
	}
	c = calloc(1, sizeof(Client));
	if (c == NULL)
	{
		log_message("out of memory accepting a connection");
		return;
	}
	uv_tcp_init(loop, &c->tcp);
	uv_timer_init(loop, &c->timer);
	c->tcp.data = c;
	c->timer.data = c;
	c->open_handles = 2;
	nclients++;
	c->next = clients;
	if (clients != NULL)
		clients->prev = c;
	clients = c;
	if (uv_accept(listener, (uv_stream_t *) &c->tcp) != 0 || shutting_down)
	{
		client_close(c);
		return;
	}

	uv_tcp_nodelay(&c->tcp, 1);
	http_parser_init(&c->parser, HTTP_REQUEST);
	c->parser.data = c;
	c->state = CS_READING;
	c->keep_alive = true;
	uv_timer_start(&c->timer, on_timer, settings.idle_timeout_ms, 0);
	client_start_reading(c);
}

int
http_listen(void)
{
	struct sockaddr_storage addr;
	int			rc;

	http_parser_settings_init(&parser_settings);
	parser_settings.on_message_begin = on_message_begin;
	parser_settings.on_url = on_url;
	parser_settings.on_header_field = on_header_field;
	parser_settings.on_header_value = on_header_value;
	parser_settings.on_headers_complete = on_headers_complete;
	parser_settings.on_body = on_body;
	parser_settings.on_message_complete = on_message_complete;
	http_parser_set_max_header_size(settings.max_header);

	if (strchr(settings.listen, ':') != NULL)
		rc = uv_ip6_addr(settings.listen, settings.port, (struct sockaddr_in6 *) &addr);
	else
		rc = uv_ip4_addr(settings.listen, settings.port, (struct sockaddr_in *) &addr);
	if (rc == 0)
		rc = uv_tcp_init(loop, &server);
	if (rc == 0)
		rc = uv_tcp_bind(&server, (const struct sockaddr *) &addr, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *) &server, 1024, on_connection);
	if (rc != 0)
		log_message("cannot listen on %s port %lld: %s",
					settings.listen, settings.port, uv_strerror(rc));
	return rc;
}

/*
 * Shutting down: no new connections; those between requests close now, the
 * others once their request is answered (responses then say close).
 */
void
http_stop_accepting(void)
{
	Client	   *c = clients;

	uv_close((uv_handle_t *) &server, NULL);
	while (c != NULL)
	{
		Client	   *next = c->next;

		if ((c->state == CS_READING && !c->in_message) ||
			c->state == CS_LINGERING)
			client_close(c);
		c = next;
	}
}

int
http_client_count(void)
{
	return nclients;
}
