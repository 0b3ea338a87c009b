/* Buffers, JSON in and out, base64: the pure half of the C CNI shim (see netplane.c). */

#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"

/* ------------------------------------------------------------------------------------ buffers */

void die_oom(void)
{
    /* Nothing sensible is left to do; the runtime sees a non-zero exit and retries. */
    static const char msg[] =
        "{\"cniVersion\":\"" CURRENT_VERSION "\",\"code\":5,\"msg\":\"netplane CNI shim: out of memory\"}\n";
    ssize_t ignored = write(STDOUT_FILENO, msg, sizeof(msg) - 1);
    (void)ignored;
    _exit(1);
}

void buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2)
            die_oom();
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p)
        die_oom();
    b->data = p;
    b->cap = cap;
}

void buf_add(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

void buf_chr(struct buf *b, char c) { buf_add(b, &c, 1); }

void buf_fmt(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}


/* ------------------------------------------------------------------------------------ UTF-8/JSON out */

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when it is not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2; cp = c & 0x1f; min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3; cp = c & 0x0f; min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4; cp = c & 0x07; min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static void utf8_put(struct buf *b, uint32_t cp)
{
    unsigned char out[4];
    size_t n;
    if (cp < 0x80) {
        out[0] = (unsigned char)cp; n = 1;
    } else if (cp < 0x800) {
        out[0] = (unsigned char)(0xc0 | (cp >> 6)); out[1] = (unsigned char)(0x80 | (cp & 0x3f)); n = 2;
    } else if (cp < 0x10000) {
        out[0] = (unsigned char)(0xe0 | (cp >> 12)); out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (unsigned char)(0x80 | (cp & 0x3f)); n = 3;
    } else {
        out[0] = (unsigned char)(0xf0 | (cp >> 18)); out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f)); out[3] = (unsigned char)(0x80 | (cp & 0x3f)); n = 4;
    }
    buf_add(b, out, n);
}

#define REPLACEMENT 0xfffd

/* s (n bytes) as the inside of a JSON string, the way jq -c writes it: \" \\ \b \f \n \r \t,
 * other controls and DEL as \u00xx, UTF-8 as is, invalid bytes as U+FFFD. */
void json_escape(struct buf *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        switch (c) {
        case '"': buf_str(b, "\\\""); i++; continue;
        case '\\': buf_str(b, "\\\\"); i++; continue;
        case '\b': buf_str(b, "\\b"); i++; continue;
        case '\f': buf_str(b, "\\f"); i++; continue;
        case '\n': buf_str(b, "\\n"); i++; continue;
        case '\r': buf_str(b, "\\r"); i++; continue;
        case '\t': buf_str(b, "\\t"); i++; continue;
        default: break;
        }
        if (c < 0x20 || c == 0x7f) {
            buf_fmt(b, "\\u%04x", c);
            i++;
        } else if (c < 0x80) {
            buf_chr(b, (char)c);
            i++;
        } else {
            size_t len = utf8_len(s + i, n - i);
            if (len) {
                buf_add(b, s + i, len);
                i += len;
            } else {
                utf8_put(b, REPLACEMENT);
                i++;
            }
        }
    }
}

/* -------------------------------------------------------------------------------------- JSON in */

struct jparser {
    const char *p, *end;
};

static void skip_ws(struct jparser *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int hex4(const char *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* A string at j->p (the opening quote); 0 when well formed. Raw bytes >= 0x80 are accepted
 * here (decoding replaces invalid UTF-8), raw control characters are not (RFC 8259, and jq). */
static int parse_string(struct jparser *j)
{
    if (j->p >= j->end || *j->p != '"')
        return -1;
    j->p++;
    while (j->p < j->end) {
        unsigned char c = (unsigned char)*j->p;
        if (c == '"') {
            j->p++;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            if (j->end - j->p < 2)
                return -1;
            char e = j->p[1];
            if (e == 'u') {
                uint32_t ignored;
                if (j->end - j->p < 6 || hex4(j->p + 2, &ignored))
                    return -1;
                j->p += 6;
                continue;
            }
            if (!strchr("\"\\/bfnrt", e) || e == '\0')
                return -1;
            j->p += 2;
            continue;
        }
        j->p++;
    }
    return -1;
}

static int parse_number(struct jparser *j)
{
    const char *p = j->p;
    if (p < j->end && *p == '-')
        p++;
    if (p >= j->end)
        return -1;
    if (*p == '0') {
        p++;
    } else if (is_digit(*p)) {
        while (p < j->end && is_digit(*p))
            p++;
    } else {
        return -1;
    }
    if (p < j->end && *p == '.') {
        p++;
        if (p >= j->end || !is_digit(*p))
            return -1;
        while (p < j->end && is_digit(*p))
            p++;
    }
    if (p < j->end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < j->end && (*p == '+' || *p == '-'))
            p++;
        if (p >= j->end || !is_digit(*p))
            return -1;
        while (p < j->end && is_digit(*p))
            p++;
    }
    j->p = p;
    return 0;
}

static int parse_literal(struct jparser *j, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
        return -1;
    j->p += n;
    return 0;
}

static int parse_value(struct jparser *j, int depth, struct span *out, const struct wanted *want);

static int parse_container(struct jparser *j, int depth, int object, const struct wanted *want)
{
    if (depth > MAX_DEPTH)
        return -1;
    char close = object ? '}' : ']';
    j->p++;
    skip_ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        return 0;
    }
    for (;;) {
        struct span key = {J_NONE, NULL, 0};
        if (object) {
            skip_ws(j);
            key.start = j->p;
            if (parse_string(j))
                return -1;
            key.type = J_STRING;
            key.len = (size_t)(j->p - key.start);
            skip_ws(j);
            if (j->p >= j->end || *j->p != ':')
                return -1;
            j->p++;
        }
        struct span value;
        if (parse_value(j, depth + 1, &value, NULL))
            return -1;
        if (object && want) {
            /* Keys we look for are short ASCII: decode (escapes included) and compare. */
            struct buf name = {0};
            decode_string(&key, &name);
            for (size_t i = 0; i < want->n; i++) {
                if (name.len == strlen(want->keys[i]) && memcmp(name.data, want->keys[i], name.len) == 0)
                    want->found[i] = value; /* the last occurrence wins, as in jq */
            }
            free(name.data);
        }
        skip_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return 0;
        }
        return -1;
    }
}

static int parse_value(struct jparser *j, int depth, struct span *out, const struct wanted *want)
{
    skip_ws(j);
    if (j->p >= j->end)
        return -1;
    const char *start = j->p;
    int rc;
    enum jtype type;
    switch (*j->p) {
    case '{': type = J_OBJECT; rc = parse_container(j, depth, 1, want); break;
    case '[': type = J_ARRAY; rc = parse_container(j, depth, 0, NULL); break;
    case '"': type = J_STRING; rc = parse_string(j); break;
    case 't': type = J_TRUE; rc = parse_literal(j, "true"); break;
    case 'f': type = J_FALSE; rc = parse_literal(j, "false"); break;
    case 'n': type = J_NULL; rc = parse_literal(j, "null"); break;
    default: type = J_NUMBER; rc = parse_number(j); break;
    }
    if (rc)
        return -1;
    out->type = type;
    out->start = start;
    out->len = (size_t)(j->p - start);
    return 0;
}

/* 0 when data is exactly one JSON object (whitespace around it allowed, as jq -s sees "one
 * value"); want->found then holds the wanted top-level keys' values. */
int parse_one_object(const char *data, size_t len, const struct wanted *want)
{
    for (size_t i = 0; i < want->n; i++)
        want->found[i].type = J_NONE;
    struct jparser j = {data, data + len};
    skip_ws(&j);
    if (j.p >= j.end || *j.p != '{')
        return -1;
    struct span top;
    if (parse_value(&j, 0, &top, want))
        goto bad;
    skip_ws(&j);
    if (j.p != j.end)
        goto bad;
    return 0;
bad:
    for (size_t i = 0; i < want->n; i++)
        want->found[i].type = J_NONE;
    return -1;
}

/* A validated string span → its UTF-8 text (appended to out); returns the decoded length. */
size_t decode_string(const struct span *s, struct buf *out)
{
    const unsigned char *p = (const unsigned char *)s->start + 1;
    const unsigned char *end = (const unsigned char *)s->start + s->len - 1;
    size_t before = out->len;
    buf_reserve(out, s->len);
    while (p < end) {
        if (*p != '\\') {
            if (*p < 0x80) {
                buf_chr(out, (char)*p++);
                continue;
            }
            size_t len = utf8_len(p, (size_t)(end - p));
            if (len) {
                buf_add(out, p, len);
                p += len;
            } else {
                utf8_put(out, REPLACEMENT);
                p++;
            }
            continue;
        }
        char e = (char)p[1];
        p += 2;
        switch (e) {
        case '"': buf_chr(out, '"'); break;
        case '\\': buf_chr(out, '\\'); break;
        case '/': buf_chr(out, '/'); break;
        case 'b': buf_chr(out, '\b'); break;
        case 'f': buf_chr(out, '\f'); break;
        case 'n': buf_chr(out, '\n'); break;
        case 'r': buf_chr(out, '\r'); break;
        case 't': buf_chr(out, '\t'); break;
        case 'u': {
            uint32_t cp, lo;
            hex4((const char *)p, &cp);
            p += 4;
            if (cp >= 0xd800 && cp <= 0xdbff && end - p >= 6 && p[0] == '\\' && p[1] == 'u'
                && hex4((const char *)p + 2, &lo) == 0 && lo >= 0xdc00 && lo <= 0xdfff) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            } else if (cp >= 0xd800 && cp <= 0xdfff) {
                cp = REPLACEMENT; /* a lone surrogate */
            }
            utf8_put(out, cp);
            break;
        }
        default: break; /* not reached: the span was validated */
        }
    }
    return out->len - before;
}

/* ------------------------------------------------------------------------------------- base64 */

void base64_encode(struct buf *b, const unsigned char *s, size_t n)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    buf_reserve(b, (n + 2) / 3 * 4);
    char *o = b->data + b->len;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *o++ = tbl[v >> 18]; *o++ = tbl[(v >> 12) & 63]; *o++ = tbl[(v >> 6) & 63]; *o++ = tbl[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
}

