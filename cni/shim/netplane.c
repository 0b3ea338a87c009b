/*
 * netplane CNI plugin shim, in C: the same contract as the bash shim next to this file
 * (cni/shim/netplane, the reference implementation; read its header first), without starting
 * bash, jq, curl or base64. It depends on libc only and is linked statically when the toolchain
 * allows, so the one file runs on any x86-64 node (kind nodes have glibc but no compiler).
 *
 * Why: a runtime starts the plugin once per pod and verb. bash + jq + curl cost ~20 ms of CPU
 * per call before the agent even sees the request; this costs well under a millisecond.
 *
 * Behaviour (identical to the bash shim; tests/unit/test_cni_shim.py runs every case against
 * both):
 *   - VERSION is answered here, without reading stdin; no CNI_COMMAND prints what this is.
 *   - Everything else: POST http://netplane-agent/v1/cni over the agent's unix socket, body
 *     {"env": {the six CNI_* variables, unset = ""}, "stdin": "<base64 of stdin>"}, and print
 *     the reply's "stdout" verbatim and exit with its "exitCode".
 *   - Socket: $NETPLANE_AGENT_SOCKET, else the config's top-level "socket" string, else
 *     /run/netplane/agent.sock. Timeout: $NETPLANE_CNI_TIMEOUT seconds (0 = none), else per verb
 *     (ADD 60, STATUS 5, others 30); connecting gives up after 5 s.
 *   - Agent unreachable (no socket, refused, timeout, non-200, malformed reply): ADD/CHECK/GC
 *     error code 11, STATUS 50, DEL exit 0 after spooling the request body to
 *     $NETPLANE_CNI_SPOOL/<containerid>-<ifname>.json (default: the socket's directory +
 *     /cni-pending-del); 11 if even that fails.
 *   - Errors are one JSON line on stdout with the config's cniVersion (when stdin is exactly one
 *     JSON object with a MAJOR.MINOR.PATCH "cniVersion" string; else 1.1.0).
 *   - Diagnostics on stderr only when NETPLANE_CNI_DEBUG is set.
 *
 * JSON: a small strict parser (RFC 8259, nesting up to MAX_DEPTH) that validates the whole
 * document and records where a few top-level keys' values are (last occurrence wins, as in jq).
 * Strings are decoded with every escape, including surrogate pairs; invalid UTF-8 and lone
 * surrogates become U+FFFD, which is what jq does. Strings we write are escaped the way jq -c
 * writes them.
 *
 * Limits (bounded memory): stdin at most MAX_STDIN bytes (error code 5 otherwise), the agent's
 * reply at most MAX_REPLY bytes (counts as a malformed reply).
 *
 * Files: this one (the CNI side: verbs, errors, spool), json.c (buffers, JSON, base64), http.c
 * (HTTP/1.1 over the unix socket), shim.h. Build: `make setup` (Makefile rule for
 * cni/shim/netplane-c): gcc -O2 -static with every .c file here, or dynamic against libc when static
 * linking is not available.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "shim.h"

/* Keep identical to netplane.cni.protocol.SUPPORTED_VERSIONS (a unit test compares them). */
#define SUPPORTED "[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\",\"1.1.0\"]"
#define DEFAULT_SOCKET "/run/netplane/agent.sock"
#define MAX_STDIN (64u << 20)
#define MAX_IFNAME 15

static const char *const ENV_KEYS[] = {
    "CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH",
};
#define N_ENV_KEYS (sizeof(ENV_KEYS) / sizeof(ENV_KEYS[0]))

static const char *env_or_empty(const char *name)
{
    const char *v = getenv(name);
    return v ? v : "";
}

/* --------------------------------------------------------------------------------- process state */

static const char *cmd = "";
static const char *sock_path = DEFAULT_SOCKET;
static struct buf stdin_data;   /* the exact stdin bytes */
static int stdin_ok;
static int debug;
/* The one temporary file we may create (the spool entry before its rename) never outlives us. */
static char tmp_path[PATH_MAX];

static void log_debug(const char *fmt, ...)
{
    if (!debug)
        return;
    struct buf line = {0};
    buf_fmt(&line, "netplane-cni[%ld]: ", (long)getpid());
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n > 0) {
        buf_reserve(&line, (size_t)n);
        va_start(ap, fmt);
        vsnprintf(line.data + line.len, (size_t)n + 1, fmt, ap);
        va_end(ap);
        line.len += (size_t)n;
    }
    buf_chr(&line, '\n');
    fwrite(line.data, 1, line.len, stderr);
    free(line.data);
}

static void on_signal(int sig)
{
    if (tmp_path[0])
        unlink(tmp_path);
    _exit(128 + sig);
}

/* ------------------------------------------------------------------------------------ errors */

/* The config's cniVersion when stdin is exactly one JSON object and it is MAJOR.MINOR.PATCH. */
static void config_version(struct buf *out)
{
    static const char *const keys[] = {"cniVersion"};
    struct span found[1];
    struct wanted want = {keys, found, 1};
    if (stdin_ok && parse_one_object(stdin_data.data, stdin_data.len, &want) == 0
        && found[0].type == J_STRING) {
        struct buf v = {0};
        decode_string(&found[0], &v);
        /* ^[0-9]+\.[0-9]+\.[0-9]+$ */
        int parts = 0, digits = 0, ok = v.len > 0;
        for (size_t i = 0; ok && i < v.len; i++) {
            if (is_digit(v.data[i])) {
                digits++;
            } else if (v.data[i] == '.' && digits && parts < 2) {
                parts++;
                digits = 0;
            } else {
                ok = 0;
            }
        }
        if (ok && parts == 2 && digits) {
            buf_add(out, v.data, v.len);
            free(v.data);
            return;
        }
        free(v.data);
    }
    buf_str(out, CURRENT_VERSION);
}

/* Error JSON on stdout and exit 1; details may be NULL or "". */
static void fail(int code, const char *msg, const char *details)
{
    struct buf out = {0}, version = {0};
    config_version(&version);
    buf_str(&out, "{\"cniVersion\":\"");
    json_escape(&out, version.data, version.len);
    buf_fmt(&out, "\",\"code\":%d,\"msg\":\"", code);
    json_escape(&out, msg, strlen(msg));
    buf_chr(&out, '"');
    if (details && *details) {
        buf_str(&out, ",\"details\":\"");
        json_escape(&out, details, strlen(details));
        buf_chr(&out, '"');
    }
    buf_str(&out, "}\n");
    fwrite(out.data, 1, out.len, stdout);
    fflush(stdout);
    if (tmp_path[0])
        unlink(tmp_path);
    exit(1);
}

/* ------------------------------------------------------------------------------------ request */

static void build_request(struct buf *body)
{
    buf_str(body, "{\"env\":{");
    for (size_t i = 0; i < N_ENV_KEYS; i++) {
        const char *v = env_or_empty(ENV_KEYS[i]);
        buf_fmt(body, "%s\"%s\":\"", i ? "," : "", ENV_KEYS[i]);
        json_escape(body, v, strlen(v));
        buf_chr(body, '"');
    }
    buf_str(body, "},\"stdin\":\"");
    base64_encode(body, (const unsigned char *)stdin_data.data, stdin_data.len);
    buf_str(body, "\"}\n");
}

/* ---------------------------------------------------------------------------------- DEL spool */

static int valid_container_id(const char *s)
{
    /* ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ (ASCII) */
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c);
        if (!alnum && (i == 0 || (c != '_' && c != '.' && c != '-')))
            return 0;
    }
    return s[0] != '\0';
}

static int valid_ifname(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_IFNAME || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return 0;
    return strpbrk(s, "/: \t\n\v\f\r") == NULL;
}

static int mkdir_p(const char *path)
{
    char tmp[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(tmp))
        return -1;
    memcpy(tmp, path, n + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
        return -1;
    struct stat st;
    return stat(tmp, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* DEL must not block pod teardown: record it for the agent and report success. */
static void spool_del(const char *reason)
{
    const char *cid = env_or_empty("CNI_CONTAINERID");
    const char *ifname = env_or_empty("CNI_IFNAME");
    /* Both go into a file name: validate like libcni so nothing can escape the spool dir. */
    if (!valid_container_id(cid))
        fail(4, "invalid characters in CNI_CONTAINERID", cid);
    if (!valid_ifname(ifname))
        fail(4, "CNI_IFNAME: invalid interface name", ifname);

    struct buf spool = {0}, dest = {0}, body = {0};
    const char *configured = getenv("NETPLANE_CNI_SPOOL");
    if (configured && *configured) {
        buf_str(&spool, configured);
    } else {
        /* like bash's ${sock%/...}: everything before the last '/', or the whole path without one */
        const char *slash = strrchr(sock_path, '/');
        buf_add(&spool, sock_path, slash ? (size_t)(slash - sock_path) : strlen(sock_path));
        buf_str(&spool, "/cni-pending-del");
    }
    buf_fmt(&dest, "%s/%s-%s.json", spool.data, cid, ifname);
    build_request(&body);

    int ok = 0;
    if (mkdir_p(spool.data) == 0
        && (size_t)snprintf(tmp_path, sizeof(tmp_path), "%s/.tmp.XXXXXXXXXX", spool.data) < sizeof(tmp_path)) {
        int fd = mkstemp(tmp_path); /* O_EXCL, mode 0600 */
        if (fd < 0) {
            tmp_path[0] = '\0';
        } else {
            ok = write_all(fd, body.data, body.len) == 0;
            ok = close(fd) == 0 && ok;
            ok = ok && rename(tmp_path, dest.data) == 0;
            if (ok)
                tmp_path[0] = '\0';
        }
    } else {
        tmp_path[0] = '\0';
    }
    if (ok) {
        log_debug("agent down (%s): DEL recorded in %s", reason, dest.data);
        exit(0);
    }
    struct buf msg = {0};
    buf_fmt(&msg, "netplane agent unreachable at %s: %s; could not record the DEL in %s",
            sock_path, reason, spool.data);
    fail(11, msg.data, "the runtime should retry the DEL");
}

/* The agent could not be asked (or gave no usable answer): the verb's fallback. */
static void unreachable(const char *reason)
{
    log_debug("agent at %s unreachable: %s", sock_path, reason);
    if (strcmp(cmd, "DEL") == 0)
        spool_del(reason);
    struct buf msg = {0};
    buf_fmt(&msg, "netplane agent unreachable at %s: %s", sock_path, reason);
    fail(strcmp(cmd, "STATUS") == 0 ? 50 : 11, msg.data, NULL);
}

/* ---------------------------------------------------------------------------------------- main */

static int read_stdin(void)
{
    for (;;) {
        if (stdin_data.len > MAX_STDIN)
            return -2;
        buf_reserve(&stdin_data, 65536);
        ssize_t r = read(STDIN_FILENO, stdin_data.data + stdin_data.len, stdin_data.cap - stdin_data.len - 1);
        if (r > 0) {
            stdin_data.len += (size_t)r;
            stdin_data.data[stdin_data.len] = '\0';
        } else if (r == 0) {
            return 0;
        } else if (errno != EINTR) {
            return -1;
        }
    }
}

/* ^[0-9]+(\.[0-9]+)?$ → milliseconds; -1 when it does not match. */
static long long parse_timeout(const char *s)
{
    const char *p = s;
    long long whole = 0;
    if (!is_digit(*p))
        return -1;
    while (is_digit(*p)) {
        if (whole < 100000000)
            whole = whole * 10 + (*p - '0');
        p++;
    }
    long long ms = whole * 1000;
    if (*p == '.') {
        p++;
        if (!is_digit(*p))
            return -1;
        long long scale = 100;
        while (is_digit(*p)) {
            ms += (*p - '0') * scale;
            scale /= 10;
            p++;
        }
    }
    return *p ? -1 : ms;
}

int main(void)
{
    umask(077);
    cmd = env_or_empty("CNI_COMMAND");
    debug = *env_or_empty("NETPLANE_CNI_DEBUG") != '\0';

    if (strcmp(cmd, "VERSION") == 0) {
        fputs("{\"cniVersion\":\"" CURRENT_VERSION "\",\"supportedVersions\":" SUPPORTED "}\n", stdout);
        return 0;
    }
    if (!*cmd) {
        /* skel's behaviour for a human running the binary: say what it is, succeed. */
        fputs("CNI plugin netplane (shim for the netplane node agent)\n"
              "CNI protocol versions supported: " SUPPORTED "\n", stderr);
        return 0;
    }

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = read_stdin();
    stdin_ok = rc == 0;
    if (rc == -2)
        fail(5, "netplane CNI shim: stdin is larger than 64 MiB", NULL);
    if (rc != 0)
        fail(5, "netplane CNI shim: error reading from stdin", NULL);

    const char *from_env = getenv("NETPLANE_AGENT_SOCKET");
    struct buf from_config = {0};
    if (from_env && *from_env) {
        sock_path = from_env;
    } else {
        static const char *const keys[] = {"socket"};
        struct span found[1];
        struct wanted want = {keys, found, 1};
        if (parse_one_object(stdin_data.data, stdin_data.len, &want) == 0 && found[0].type == J_STRING
            && decode_string(&found[0], &from_config) > 0 && strlen(from_config.data) == from_config.len)
            sock_path = from_config.data;
    }

    long long timeout_ms = strcmp(cmd, "ADD") == 0 ? 60000 : strcmp(cmd, "STATUS") == 0 ? 5000 : 30000;
    const char *t = getenv("NETPLANE_CNI_TIMEOUT");
    if (t && *t) {
        timeout_ms = parse_timeout(t);
        if (timeout_ms < 0)
            timeout_ms = 30000;
    }

    struct stat st;
    if (stat(sock_path, &st) != 0)
        unreachable("no such socket (is the netplane agent running on this node?)");
    if (!S_ISSOCK(st.st_mode))
        unreachable("not a unix socket");

    struct buf request = {0}, body = {0};
    build_request(&request);
    struct conn c = {.fd = -1, .timeout_ms = timeout_ms, .deadline = timeout_ms ? now_ms() + timeout_ms : 0};
    int status = 0;
    if (http_post(&c, sock_path, &request, &status, &body))
        unreachable(c.reason);
    if (status != 200) {
        char reason[64];
        snprintf(reason, sizeof(reason), "HTTP %03d from the agent", status);
        unreachable(reason);
    }

    /* Exactly one object: an integral "exitCode" 0..255 and "stdout" a string (null, false or
     * absent mean empty), as the bash shim's jq program requires. */
    static const char *const keys[] = {"exitCode", "stdout"};
    struct span found[2];
    struct wanted want = {keys, found, 2};
    if (parse_one_object(body.data ? body.data : "", body.len, &want) || found[0].type != J_NUMBER)
        unreachable("malformed reply from the agent");
    char number[64];
    if (found[0].len >= sizeof(number))
        unreachable("malformed reply from the agent");
    memcpy(number, found[0].start, found[0].len);
    number[found[0].len] = '\0';
    double code = strtod(number, NULL);
    if (!(code >= 0 && code <= 255) || code != (double)(int)code)
        unreachable("malformed reply from the agent");
    struct buf out = {0};
    if (found[1].type == J_STRING)
        decode_string(&found[1], &out);
    else if (found[1].type != J_NONE && found[1].type != J_NULL && found[1].type != J_FALSE)
        unreachable("malformed reply from the agent");

    log_debug("%s %s %s: agent answered exit %d", cmd, env_or_empty("CNI_CONTAINERID"),
              env_or_empty("CNI_IFNAME"), (int)code);
    if (out.len && (fwrite(out.data, 1, out.len, stdout) != out.len || fflush(stdout) != 0))
        return 1;
    return (int)code;
}
