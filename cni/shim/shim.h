/*
 * Shared pieces of the C CNI shim (cni/shim/netplane.c is the entry point; see its header).
 * buffers and JSON: json.c; HTTP over a unix socket: http.c.
 */
#ifndef NETPLANE_SHIM_H
#define NETPLANE_SHIM_H

#include <stddef.h>
#include <stdint.h>

#define CURRENT_VERSION "1.1.0"
#define MAX_REPLY (16u << 20)   /* bytes of the agent's reply we accept (header + body) */
#define MAX_DEPTH 1000          /* JSON nesting we parse */
#define CONNECT_TIMEOUT_MS 5000

/* A growable byte buffer, always NUL-terminated; out of memory ends the process (die_oom). */
struct buf {
    char *data;
    size_t len, cap;
};

void die_oom(void);
void buf_reserve(struct buf *b, size_t extra);
void buf_add(struct buf *b, const void *p, size_t n);
void buf_str(struct buf *b, const char *s);
void buf_chr(struct buf *b, char c);
void buf_fmt(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

/* JSON (json.c) */
enum jtype { J_NONE, J_OBJECT, J_ARRAY, J_STRING, J_NUMBER, J_TRUE, J_FALSE, J_NULL };

struct span {
    enum jtype type;
    const char *start; /* the value's text, quotes included for strings */
    size_t len;
};

struct wanted {
    const char *const *keys; /* top-level keys whose values we want */
    struct span *found;      /* one per key; type J_NONE when absent */
    size_t n;
};

void json_escape(struct buf *b, const char *str, size_t n);
int parse_one_object(const char *data, size_t len, const struct wanted *want);
size_t decode_string(const struct span *s, struct buf *out);
void base64_encode(struct buf *b, const unsigned char *s, size_t n);

/* HTTP over a unix socket (http.c) */
struct conn {
    int fd;
    long long deadline;   /* ms, CLOCK_MONOTONIC; 0 = none */
    long long timeout_ms;
    char reason[256];     /* why it failed, for the error message */
};

long long now_ms(void);
int http_post(struct conn *c, const char *sock_path, const struct buf *req, int *status, struct buf *body);

#endif
