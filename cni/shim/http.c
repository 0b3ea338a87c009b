/* HTTP/1.1 over the agent's unix socket, with one deadline for the whole exchange. */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"


long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for `events` on the socket until the deadline; 0 ready, -1 with c->reason set. */
static int wait_fd(struct conn *c, short events)
{
    for (;;) {
        int wait = -1;
        if (c->deadline) {
            long long left = c->deadline - now_ms();
            if (left <= 0) {
                snprintf(c->reason, sizeof(c->reason),
                         "operation timed out after %lld milliseconds", c->timeout_ms);
                return -1;
            }
            wait = left > INT_MAX ? INT_MAX : (int)left;
        }
        struct pollfd p = {c->fd, events, 0};
        int n = poll(&p, 1, wait);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR) {
            snprintf(c->reason, sizeof(c->reason), "poll: %s", strerror(errno));
            return -1;
        }
    }
}

/* Connect to the agent. A unix socket whose backlog is full makes a non-blocking connect fail
 * at once (EAGAIN), so connect blocking, bounded by SO_SNDTIMEO, then switch to non-blocking. */
static int http_connect(struct conn *c, const char *sock_path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(sock_path) >= sizeof(addr.sun_path)) {
        snprintf(c->reason, sizeof(c->reason), "socket path longer than %zu bytes", sizeof(addr.sun_path) - 1);
        return -1;
    }
    strcpy(addr.sun_path, sock_path);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        snprintf(c->reason, sizeof(c->reason), "socket: %s", strerror(errno));
        return -1;
    }
    long long limit = CONNECT_TIMEOUT_MS;
    if (c->deadline && c->deadline - now_ms() < limit)
        limit = c->deadline - now_ms();
    if (limit < 1)
        limit = 1;
    struct timeval tv = {.tv_sec = limit / 1000, .tv_usec = (limit % 1000) * 1000};
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    while (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EINPROGRESS || errno == ETIMEDOUT)
            snprintf(c->reason, sizeof(c->reason), "connection timed out after %lld milliseconds", limit);
        else
            snprintf(c->reason, sizeof(c->reason), "connecting: %s", strerror(errno));
        return -1;
    }
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    return 0;
}

static int http_send(struct conn *c, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (wait_fd(c, POLLOUT))
                    return -1;
                continue;
            }
            snprintf(c->reason, sizeof(c->reason), "sending the request: %s", strerror(errno));
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read until EOF (the request said Connection: close) or until `want` bytes are buffered. */
static int http_read(struct conn *c, struct buf *in, size_t want, int *eof)
{
    while (in->len < want) {
        if (in->len >= MAX_REPLY) {
            snprintf(c->reason, sizeof(c->reason), "malformed reply from the agent (more than %u bytes)", MAX_REPLY);
            return -1;
        }
        buf_reserve(in, 65536);
        size_t room = in->cap - in->len - 1;
        if (room > MAX_REPLY - in->len)
            room = MAX_REPLY - in->len;
        ssize_t r = recv(c->fd, in->data + in->len, room, 0);
        if (r > 0) {
            in->len += (size_t)r;
            in->data[in->len] = '\0';
            continue;
        }
        if (r == 0) {
            *eof = 1;
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            if (wait_fd(c, POLLIN))
                return -1;
            continue;
        }
        snprintf(c->reason, sizeof(c->reason), "reading the reply: %s", strerror(errno));
        return -1;
    }
    return 0;
}

static const char *find_header_end(const struct buf *in)
{
    return in->len ? memmem(in->data, in->len, "\r\n\r\n", 4) : NULL;
}

/* The value of header `name` (case-insensitive) inside head[0..n), copied to out. */
static int header_value(const char *head, size_t n, const char *name, char *out, size_t outsz)
{
    size_t nl = strlen(name);
    const char *p = head, *end = head + n;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol)
            eol = end;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            size_t len = (size_t)(ve - v);
            if (len >= outsz)
                len = outsz - 1;
            memcpy(out, v, len);
            out[len] = '\0';
            return 1;
        }
        p = eol + 2;
    }
    return 0;
}

/* Decode a chunked body in place; -1 when malformed or incomplete. */
static int dechunk(struct buf *body)
{
    size_t r = 0, w = 0;
    for (;;) {
        char *eol = memmem(body->data + r, body->len - r, "\r\n", 2);
        if (!eol)
            return -1;
        char *endp;
        errno = 0;
        unsigned long long size = strtoull(body->data + r, &endp, 16);
        if (endp == body->data + r || errno || (*endp != '\r' && *endp != ';'))
            return -1;
        r = (size_t)(eol - body->data) + 2;
        if (size == 0)
            break;
        if (size > body->len - r || body->len - r - size < 2 || memcmp(body->data + r + size, "\r\n", 2))
            return -1;
        memmove(body->data + w, body->data + r, size);
        w += size;
        r += size + 2;
    }
    body->len = w;
    body->data[w] = '\0';
    return 0;
}

/* POST the request; the reply body in `body`, its status in *status. -1 with c->reason set. */
int http_post(struct conn *c, const char *sock_path, const struct buf *req, int *status, struct buf *body)
{
    if (http_connect(c, sock_path))
        return -1;
    struct buf head = {0};
    buf_fmt(&head,
            "POST /v1/cni HTTP/1.1\r\nHost: netplane-agent\r\nUser-Agent: netplane-cni-shim\r\n"
            "Accept: */*\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n", req->len);
    if (http_send(c, head.data, head.len) || http_send(c, req->data, req->len))
        return -1;

    struct buf in = {0};
    int eof = 0;
    const char *hend;
    for (;;) {
        while (!(hend = find_header_end(&in)) && !eof) {
            if (http_read(c, &in, in.len + 1, &eof))
                return -1;
        }
        if (!hend)
            break;
        /* Skip interim 1xx responses (we never send Expect:, but a proxy in between might). */
        if (in.len >= 12 && memcmp(in.data, "HTTP/1.", 7) == 0 && in.data[9] == '1') {
            size_t skip = (size_t)(hend + 4 - in.data);
            memmove(in.data, in.data + skip, in.len - skip);
            in.len -= skip;
            continue;
        }
        break;
    }
    if (!hend || in.len < 12 || memcmp(in.data, "HTTP/1.", 7) != 0 || in.data[8] != ' '
        || !is_digit(in.data[9]) || !is_digit(in.data[10]) || !is_digit(in.data[11])) {
        snprintf(c->reason, sizeof(c->reason), "malformed reply from the agent (not an HTTP response)");
        return -1;
    }
    *status = (in.data[9] - '0') * 100 + (in.data[10] - '0') * 10 + (in.data[11] - '0');
    size_t head_len = (size_t)(hend + 4 - in.data);
    char value[64];
    int chunked = header_value(in.data, head_len, "Transfer-Encoding", value, sizeof(value))
                  && strcasestr(value, "chunked") != NULL;
    long long length = -1;
    if (!chunked && header_value(in.data, head_len, "Content-Length", value, sizeof(value))) {
        char *endp;
        errno = 0;
        length = strtoll(value, &endp, 10);
        if (errno || *endp || endp == value || length < 0) {
            snprintf(c->reason, sizeof(c->reason), "malformed reply from the agent (Content-Length %s)", value);
            return -1;
        }
        if (length > (long long)MAX_REPLY) {
            snprintf(c->reason, sizeof(c->reason), "malformed reply from the agent (more than %u bytes)", MAX_REPLY);
            return -1;
        }
    }
    if (length >= 0) {
        if (http_read(c, &in, head_len + (size_t)length, &eof))
            return -1;
        if (in.len < head_len + (size_t)length) {
            snprintf(c->reason, sizeof(c->reason), "the agent closed the connection mid-reply");
            return -1;
        }
        in.len = head_len + (size_t)length;
    } else {
        if (!eof && http_read(c, &in, SIZE_MAX, &eof))
            return -1;
    }
    buf_add(body, in.data + head_len, in.len - head_len);
    if (chunked && dechunk(body)) {
        snprintf(c->reason, sizeof(c->reason), "malformed reply from the agent (chunked encoding)");
        return -1;
    }
    return 0;
}

