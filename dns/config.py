"""The DNS configuration file: a Corefile subset (format and plugin list in docs/dns.md).

    parse_config(text, source) -> DnsConfig     pure: tokens → directives → validated frozen values
    load_config(path) / default_config(...)     read a file / the kubeadm-like default
    DnsConfig.build(zone, metrics) -> DnsPipeline   kubernetes → cache → loop → forward handlers
    ConfigWatcher                               re-reads the file when its SHA-512 changes; a bad
                                                file keeps the old configuration (`reload`)

Errors are ConfigError naming the file, the line and the directive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dnslib

from netplane.dns.chain import Handler, Plugin, Request, Response, build_chain, make_reply
from netplane.dns.cache import STALE_MODES, CacheOptions, CachePlugin
from netplane.dns.corefile import Context, Directive, ListenAddress, parse_directives, tokenize
from netplane.dns.forward import POLICIES, ForwardOptions, ForwardPlugin, resolve_upstreams
from netplane.dns.loop import LoopDetector
from netplane.errors import ConfigError

if TYPE_CHECKING:
    from netplane.dns.zone import ClusterZone

log = logging.getLogger(__name__)

DEFAULT_COREFILE = """\
.:{port} {{
    errors
    health {{
        lameduck 5s
    }}
    ready
    kubernetes {zone} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    prometheus :9153
    forward . {resolv_conf} {{
        max_concurrent 1000
    }}
    cache 30 {{
        disable success {zone}
        disable denial {zone}
    }}
    loop
    reload
}}
"""

DIRECTIVES = ("errors", "health", "ready", "kubernetes", "prometheus", "forward", "cache", "loop", "reload")


# -- values --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubernetesConfig:
    zone: str = "cluster.local"
    reverse_zones: tuple[str, ...] = ()      # in-addr.arpa. / ip6.arpa. as written (informational)
    reverse_cidrs: tuple[str, ...] = ()      # networks written as zones: authoritative reverse ranges
    ttl: int = 5
    pods: str = "disabled"
    endpoint_pod_names: bool = False
    fallthrough: tuple[str, ...] = ()

    def options(self, ns_addresses: Sequence[str] = ()):
        from netplane.dns.kubernetes import KubernetesOptions

        return KubernetesOptions(zone=self.zone, ttl=self.ttl, pods=self.pods,
                                 endpoint_pod_names=self.endpoint_pod_names, fallthrough=self.fallthrough,
                                 ns_addresses=tuple(ns_addresses), reverse_cidrs=self.reverse_cidrs)


@dataclass(frozen=True)
class ReloadConfig:
    interval: float = 30.0
    jitter: float = 15.0


@dataclass(frozen=True)
class DnsConfig:
    source: str = "<default>"
    digest: str = ""                              # SHA-512 of the text it was parsed from
    zones: tuple[str, ...] = (".",)               # the server block's zones
    port: int = 53
    errors: bool = False
    health: ListenAddress | None = None
    lameduck: float = 0.0
    ready: ListenAddress | None = None
    prometheus: ListenAddress | None = None
    kubernetes: KubernetesConfig | None = None
    forward: ForwardOptions | None = None
    cache: CacheOptions | None = None
    loop: bool = False
    reload: ReloadConfig | None = None

    @property
    def cluster_zone(self) -> str:
        return self.kubernetes.zone if self.kubernetes else "cluster.local"

    def build(self, zone: ClusterZone, metrics=None, *, exchanger=None,
              on_loop: Callable[[str], None] | None = None,
              kubernetes_plugin: Callable[..., Plugin] | None = None,
              ns_addresses: Sequence[str] = ()) -> DnsPipeline:
        """The handlers in CoreDNS's order: [zone gate] → kubernetes → cache → loop → forward.
        The cache never stores answers for the cluster zone, whatever the file says.
        `exchanger` (forward's transport) and `kubernetes_plugin` may be replaced in tests;
        `on_loop(message)` is called once if the loop detector finds a forwarding loop;
        `ns_addresses` are this server's addresses (the zone's NS glue).
        ExternalName targets outside the zone are resolved through the handlers after
        kubernetes (cache → forward), as CoreDNS's kubernetes plugin does through its server."""
        plugins: list = []
        if self.zones != (".",):
            plugins.append(_ZoneGate(self.zones))
        upstream = _RestOfChain()
        if self.kubernetes is not None:
            if kubernetes_plugin is None:
                from netplane.dns.kubernetes import kubernetes_plugin
            plugins.append(kubernetes_plugin(zone, self.kubernetes.options(ns_addresses), upstream))
        after_kubernetes = len(plugins)
        cache = forward = loop = None
        if self.cache is not None:
            cluster = (self.cluster_zone.rstrip(".") + ".",) if self.kubernetes else ()
            options = dataclasses.replace(self.cache, disable_success=_union(self.cache.disable_success, cluster),
                                          disable_denial=_union(self.cache.disable_denial, cluster))
            cache = CachePlugin(options, metrics=metrics)
            plugins.append(cache)
        if self.forward is not None:
            forward = ForwardPlugin(self.forward, metrics=metrics, exchanger=exchanger, log_errors=self.errors)
            if self.loop:
                upstreams = ", ".join(u.label for u in self.forward.upstreams)
                loop = LoopDetector(self.zones[0], upstreams=upstreams, on_loop=forward.disable)
                if on_loop is not None:
                    loop.add_callback(on_loop)
                plugins.append(loop)
            plugins.append(forward)
        handler = build_chain(plugins)
        if plugins[after_kubernetes:]:
            upstream.handler = build_chain(plugins[after_kubernetes:])
        return DnsPipeline(handler=handler, forward=forward, cache=cache, loop=loop)

    def build_chain(self, zone: ClusterZone, metrics=None) -> Handler:
        return self.build(zone, metrics).handler


@dataclass
class DnsPipeline:
    """A built chain plus the parts the server's main drives: the loop probe at startup, and
    `close()` when a reload replaces it."""

    handler: Handler
    forward: ForwardPlugin | None = None
    cache: CachePlugin | None = None
    loop: LoopDetector | None = None

    def probe_loop(self, *, tries: int = 10, interval: float = 1.0) -> bool:
        """Run the loop detector's startup probe (blocking; run it after the server listens).
        True when a loop was found (forwarding is then disabled and on_loop was called)."""
        if self.loop is None or self.forward is None:
            return False
        return self.loop.probe(self.forward.exchange, tries=tries, interval=interval)

    def close(self) -> None:
        if self.forward is not None:
            self.forward.close()


class _RestOfChain:
    """The kubernetes plugin's `upstream`: resolves a name through the handlers after it.
    Returns the answer records, or None when there is nothing after kubernetes or it failed."""

    def __init__(self) -> None:
        self.handler: Handler | None = None

    def __call__(self, name: str, qtype: int) -> list[dnslib.RR] | None:
        if self.handler is None:
            return None
        query = dnslib.DNSRecord.question(name, dnslib.QTYPE.get(qtype))
        response = self.handler.serve(Request(record=query, proto="udp", client=("127.0.0.1", 0), max_size=65535))
        if response is None or response.record.header.rcode != dnslib.RCODE.NOERROR:
            return None
        return list(response.record.rr)


class _ZoneGate:
    """Queries outside the server block's zones get REFUSED (CoreDNS: no matching block)."""

    name = "zones"

    def __init__(self, zones: tuple[str, ...]) -> None:
        self._zones = tuple(z.rstrip(".") for z in zones)
        self._next: Handler | None = None

    def __call__(self, next_handler: Handler | None) -> _ZoneGate:
        self._next = next_handler
        return self

    def serve(self, req: Request) -> Response | None:
        name = str(req.record.q.qname).lower().rstrip(".")
        if any(not z or name == z or name.endswith("." + z) for z in self._zones):
            return None                                  # the chain asks the next handler
        return Response(record=make_reply(req, dnslib.RCODE.REFUSED), plugin=self.name)


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return a + tuple(z for z in b if z not in a)


def parse_config(text: str, source: str = "Corefile", base_dir: Path | None = None) -> DnsConfig:
    """Parse a Corefile subset into a validated DnsConfig (pure, except that `forward` reads
    the resolv.conf files it names)."""
    ctx = Context(source, base_dir)
    blocks = parse_directives(tokenize(text, source), source)
    if not blocks:
        raise ConfigError(f"{source}: no server block (e.g. '.:53 {{ … }}')")
    if len(blocks) > 1:
        raise ConfigError(f"{source}:{blocks[1].line}: only one server block is supported")
    server = blocks[0]
    if server.block is None:
        raise ConfigError(f"{source}:{server.line}: server block {server.name!r} needs '{{ … }}'")
    zones, port = _server_key(ctx, server)
    values: dict[str, object] = {"source": source, "digest": hashlib.sha512(text.encode()).hexdigest(),
                                 "zones": zones, "port": port}
    seen: dict[str, int] = {}
    for d in server.block:
        if d.name not in DIRECTIVES:
            raise ctx.error(d, f"unknown or unsupported directive (supported: {', '.join(DIRECTIVES)})")
        if d.name in seen:
            raise ctx.error(d, f"given twice (first on line {seen[d.name]})")
        seen[d.name] = d.line
        values.update(_PARSERS[d.name](ctx, d, zones))
    return DnsConfig(**values)


def _server_key(ctx: Context, server: Directive) -> tuple[tuple[str, ...], int]:
    zones, ports = [], set()
    for key in [server.name, *server.args]:
        text = key.removeprefix("dns://")
        if "://" in text:
            raise ConfigError(f"{ctx.source}:{server.line}: server block {key!r}: only dns:// is supported")
        zone, sep, port = text.rpartition(":") if ":" in text else (text, "", "53")
        where = Directive(key, [], server.line)
        zones.append(ctx.zone(where, zone))
        ports.add(ctx.integer(where, port, "port", 0, 65535))
    if len(ports) > 1:
        raise ConfigError(f"{ctx.source}:{server.line}: server block: every zone must use the same port")
    return tuple(zones), ports.pop()


def _flag(name: str):
    def parse(ctx: Context, d: Directive, zones) -> dict:
        ctx.nargs(d, 0, 0)
        ctx.no_block(d)
        return {name: True}
    return parse


def _health(ctx: Context, d: Directive, zones) -> dict:
    ctx.nargs(d, 0, 1)
    lameduck = 0.0
    for sub in d.block or ():
        if sub.name != "lameduck":
            raise ctx.error(sub, "unknown health option (supported: lameduck)")
        ctx.nargs(sub, 1, 1)
        lameduck = ctx.duration(sub, sub.args[0], "lameduck")
    return {"health": ctx.listen(d, d.args[0] if d.args else ":8080", 8080), "lameduck": lameduck}


def _listener(name: str, default: str, default_port: int):
    def parse(ctx: Context, d: Directive, zones) -> dict:
        ctx.nargs(d, 0, 1)
        ctx.no_block(d)
        return {name: ctx.listen(d, d.args[0] if d.args else default, default_port)}
    return parse


def _kubernetes(ctx: Context, d: Directive, zones: tuple[str, ...]) -> dict:
    cidrs = tuple(_network(ctx, d, z) for z in d.args if "/" in z)
    names = [ctx.zone(d, z) for z in d.args if "/" not in z] or [z for z in zones if z != "."]
    reverse = tuple(z for z in names if z.endswith(("in-addr.arpa.", "ip6.arpa.")))
    forward = [z for z in names if z not in reverse]
    if len(forward) != 1:
        raise ctx.error(d, "needs exactly one cluster zone (plus optional reverse zones), "
                           f"got {', '.join(forward) or 'none'}")
    values: dict[str, object] = {"zone": forward[0].rstrip("."), "reverse_zones": reverse, "reverse_cidrs": cidrs}
    for sub in d.block or ():
        option = sub.name
        sub.name = f"kubernetes {option}"
        if option in values:
            raise ctx.error(sub, "given twice")
        if option == "pods":
            ctx.nargs(sub, 1, 1)
            if sub.args[0] not in ("disabled", "insecure"):
                raise ctx.error(sub, f"mode must be disabled or insecure (verified is not supported), got {sub.args[0]!r}")
            values["pods"] = sub.args[0]
        elif option == "endpoint_pod_names":
            ctx.nargs(sub, 0, 0)
            values["endpoint_pod_names"] = True
        elif option == "ttl":
            ctx.nargs(sub, 1, 1)
            values["ttl"] = ctx.integer(sub, sub.args[0], "ttl", 0, 3600)
        elif option == "fallthrough":
            # Without zones: every zone ("."). Zones are given without the final dot.
            values["fallthrough"] = tuple(ctx.zone(sub, z).rstrip(".") or "." for z in sub.args) or (".",)
        else:
            raise ctx.error(sub, "unsupported option (supported: pods, endpoint_pod_names, ttl, fallthrough)")
    return {"kubernetes": KubernetesConfig(**values)}


def _network(ctx: Context, d: Directive, text: str) -> str:
    """A reverse range written as a network (CoreDNS accepts `kubernetes cluster.local 10.96.0.0/12`)."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ctx.error(d, f"bad network {text!r}") from None


def _forward(ctx: Context, d: Directive, zones) -> dict:
    if len(d.args) < 2:
        raise ctx.error(d, "needs FROM and at least one upstream (e.g. 'forward . /etc/resolv.conf')")
    where = f"{ctx.source}:{d.line}: forward"
    values: dict[str, object] = {"from_zone": ctx.zone(d, d.args[0]),
                                 "upstreams": resolve_upstreams(d.args[1:], ctx.base_dir, where)}
    for sub in d.block or ():
        option = sub.name
        sub.name = f"forward {option}"
        if option in values:
            raise ctx.error(sub, "given twice")
        if option == "policy":
            ctx.nargs(sub, 1, 1)
            if sub.args[0] not in POLICIES:
                raise ctx.error(sub, f"must be one of {', '.join(POLICIES)}, got {sub.args[0]!r}")
            values["policy"] = sub.args[0]
        elif option in ("max_concurrent", "max_fails"):
            ctx.nargs(sub, 1, 1)
            values[option] = ctx.integer(sub, sub.args[0], option)
        elif option in ("health_check", "expire", "timeout", "deadline"):
            ctx.nargs(sub, 1, 1)
            seconds = ctx.duration(sub, sub.args[0], option)
            if seconds <= 0:
                raise ctx.error(sub, "must be > 0")
            values[option] = seconds
        elif option == "force_tcp":
            ctx.nargs(sub, 0, 0)
            values["force_tcp"] = True
        elif option == "except":
            ctx.nargs(sub, 1, 64)
            values["except_zones"] = tuple(ctx.zone(sub, z) for z in sub.args)
        else:
            raise ctx.error(sub, "unsupported option (supported: policy, max_concurrent, max_fails, "
                                 "health_check, expire, timeout, deadline, force_tcp, except)")
    try:
        options = ForwardOptions(**values)
    except ConfigError as e:
        raise ctx.error(d, str(e)) from None
    if options.deadline < options.timeout:
        raise ctx.error(d, f"deadline ({options.deadline:g}s) is shorter than timeout ({options.timeout:g}s)")
    return {"forward": options}


def _cache(ctx: Context, d: Directive, zones: tuple[str, ...]) -> dict:
    args = list(d.args)
    values: dict[str, object] = {}
    if args and re.fullmatch(r"\d+", args[0]):
        ttl = ctx.integer(d, args.pop(0), "TTL", 1)
        values.update(success_max_ttl=ttl, denial_max_ttl=ttl, success_min_ttl=min(5, ttl), denial_min_ttl=min(5, ttl))
    cache_zones = tuple(ctx.zone(d, z) for z in args) or zones
    values["zones"] = cache_zones
    seen: set[str] = set()
    for sub in d.block or ():
        option = sub.name
        sub.name = f"cache {option}"
        if option in seen and option != "disable":
            raise ctx.error(sub, "given twice")
        seen.add(option)
        if option in ("success", "denial"):
            ctx.nargs(sub, 1, 3)
            values[f"{option}_capacity"] = ctx.integer(sub, sub.args[0], "capacity", 1)
            if len(sub.args) > 1:
                values[f"{option}_max_ttl"] = ctx.integer(sub, sub.args[1], "TTL", 0)
                values[f"{option}_min_ttl"] = min(int(values.get(f"{option}_min_ttl", 5)), int(values[f"{option}_max_ttl"]))
            if len(sub.args) > 2:
                values[f"{option}_min_ttl"] = ctx.integer(sub, sub.args[2], "MINTTL", 0)
        elif option == "prefetch":
            ctx.nargs(sub, 1, 3)
            values["prefetch_amount"] = ctx.integer(sub, sub.args[0], "amount", 1)
            rest = sub.args[1:]
            if rest and rest[-1].endswith("%"):
                values["prefetch_percentage"] = ctx.integer(sub, rest.pop()[:-1], "percentage", 10, 90)
            if rest:
                values["prefetch_duration"] = ctx.duration(sub, rest[0], "duration")
        elif option == "serve_stale":
            ctx.nargs(sub, 0, 2)
            values["serve_stale"] = ctx.duration(sub, sub.args[0], "duration") if sub.args else 3600.0
            if len(sub.args) > 1:
                if sub.args[1] not in STALE_MODES:
                    raise ctx.error(sub, f"mode must be immediate or verify, got {sub.args[1]!r}")
                values["serve_stale_mode"] = sub.args[1]
        elif option == "stale_ttl":
            ctx.nargs(sub, 1, 1)
            values["stale_ttl"] = ctx.integer(sub, sub.args[0], "stale_ttl", 0, 3600)
        elif option == "servfail":
            ctx.nargs(sub, 1, 1)
            seconds = ctx.duration(sub, sub.args[0], "servfail")
            if seconds > 300:
                raise ctx.error(sub, "must be at most 5m")
            values["servfail_ttl"] = int(seconds)
        elif option == "disable":
            ctx.nargs(sub, 1, 64)
            if sub.args[0] not in ("success", "denial"):
                raise ctx.error(sub, f"first argument must be success or denial, got {sub.args[0]!r}")
            key = f"disable_{sub.args[0]}"
            listed = tuple(ctx.zone(sub, z) for z in sub.args[1:]) or cache_zones
            values[key] = _union(tuple(values.get(key, ())), listed)
        else:
            raise ctx.error(sub, "unsupported option (supported: success, denial, prefetch, serve_stale, "
                                 "stale_ttl, servfail, disable)")
    try:
        return {"cache": CacheOptions(**values)}
    except ConfigError as e:
        raise ctx.error(d, str(e)) from None


def _reload(ctx: Context, d: Directive, zones) -> dict:
    ctx.nargs(d, 0, 2)
    ctx.no_block(d)
    interval = ctx.duration(d, d.args[0], "interval") if d.args else 30.0
    jitter = ctx.duration(d, d.args[1], "jitter") if len(d.args) > 1 else 15.0
    if interval < 2:
        raise ctx.error(d, f"interval must be at least 2s, got {interval:g}s")
    if jitter < 1:
        raise ctx.error(d, f"jitter must be at least 1s, got {jitter:g}s")
    return {"reload": ReloadConfig(interval, min(jitter, interval / 2))}


_PARSERS = {
    "errors": _flag("errors"),
    "loop": _flag("loop"),
    "health": _health,
    "ready": _listener("ready", ":8181", 8181),
    "prometheus": _listener("prometheus", "localhost:9153", 9153),
    "kubernetes": _kubernetes,
    "forward": _forward,
    "cache": _cache,
    "reload": _reload,
}


def load_config(path: str | Path) -> DnsConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror or e}") from None
    return parse_config(text, str(path), path.parent)


def default_config(resolv_conf: str = "/etc/resolv.conf", zone: str = "cluster.local", port: int = 53) -> DnsConfig:
    """The kubeadm-like Corefile (without loadbalance), forwarding to `resolv_conf`."""
    text = DEFAULT_COREFILE.format(port=port, zone=zone, resolv_conf=resolv_conf)
    return parse_config(text, "<default>")


# -- reload --------------------------------------------------------------------------------------


class ConfigWatcher:
    """Re-reads `path` every interval ± jitter; when its SHA-512 differs from the running
    configuration's, parses it and calls `on_change(new_config)`. A file that does not parse
    (or an on_change that raises) is logged and the old configuration stays; the same bad
    content is not reported twice. The interval follows the running config's `reload`."""

    def __init__(self, path: str | Path, on_change: Callable[[DnsConfig], None], *, current: DnsConfig | None = None,
                 interval: float = 30.0, jitter: float = 15.0, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, metrics=None) -> None:
        self.path = Path(path)
        self._on_change = on_change
        self._clock = clock
        self._rng = rng or random.Random()
        self._metrics = metrics
        if current is not None and current.reload is not None:
            interval, jitter = current.reload.interval, current.reload.jitter
        self.interval, self.jitter = interval, jitter
        self._digest = current.digest if current is not None else self._read_digest()
        self._due = clock() + self._delay()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _delay(self) -> float:
        return max(0.0, self.interval + self._rng.uniform(-self.jitter, self.jitter))

    def _read_digest(self) -> str:
        try:
            return hashlib.sha512(self.path.read_bytes()).hexdigest()
        except OSError:
            return ""

    def check(self) -> DnsConfig | None:
        """Look at the file now. Returns the new configuration when one was applied."""
        try:
            data = self.path.read_bytes()
        except OSError as e:
            log.error("reload: cannot read %s, keeping the running configuration: %s", self.path, e.strerror or e)
            return None
        digest = hashlib.sha512(data).hexdigest()
        if digest == self._digest:
            return None
        self._digest = digest
        try:
            config = parse_config(data.decode("utf-8", errors="replace"), str(self.path), self.path.parent)
            self._on_change(config)
        except Exception as e:  # a bad file or a failed rebuild must not stop the server
            log.error("reload: %s changed but is not usable, keeping the running configuration: %s", self.path, e)
            if self._metrics is not None:
                self._metrics.reload_failed.inc()
            return None
        log.info("reload: applied the new configuration from %s", self.path)
        if config.reload is not None:
            self.interval, self.jitter = config.reload.interval, config.reload.jitter
        return config

    def poll(self) -> DnsConfig | None:
        """check() if the interval has passed (the background thread calls this)."""
        now = self._clock()
        if now < self._due:
            return None
        self._due = now + self._delay()
        return self.check()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dns-config-reload", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, max(0.05, self._due - self._clock()))):
            try:
                self.poll()
            except Exception:
                log.exception("reload: checking %s failed", self.path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
