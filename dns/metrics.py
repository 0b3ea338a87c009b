"""The DNS server's Prometheus metrics, with CoreDNS's names and labels.

One `DnsMetrics` per worker process holds every series the server, the cache and the forwarder
export. The other modules call the small methods below (`cache_hit`, `forward_response`, …) and
never touch label tuples of the server-wide labels themselves.

Two rules keep the hot path cheap:
- The server's fast path (wire-cache hits) does not call into this module per query. It counts
  hits with a plain int on the cache entry and `fold_fast_path` adds them here in bulk, at scrape
  time or when the entry is dropped (see netplane.dns.wire).
- Workers in other processes ship `snapshot()` (plain dicts, picklable) to the process that serves
  /metrics, which renders the sum with `render(extra=[...])`.
"""

from __future__ import annotations

import bisect
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence

from netplane import __version__
from netplane.metrics import Counter, Gauge, Histogram, Registry, _labels, _num

# CoreDNS: prometheus.ExponentialBuckets(0.00025, 2, 16) for durations (0.25 ms … 8.2 s).
DURATION_BUCKETS = tuple(0.00025 * 2**i for i in range(16))
# CoreDNS plugin/metrics/vars: sizes in bytes.
SIZE_BUCKETS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)

# Sentinel label value CoreDNS uses when it exports no view.
NO_VIEW = ""

Snapshot = dict[str, dict[tuple[str, ...], object]]


class _WeightedHistogram(Histogram):
    """A Histogram that can record `n` identical observations at once (for folded counts)."""

    def observe_n(self, value: float, n: int, *labels: str) -> None:
        if n <= 0:
            return
        key = self._key(labels)
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += n
            total[0] += value * n


class DnsMetrics:
    """Every coredns_* series of one worker. `server` is CoreDNS's server label (`dns://:53`)."""

    def __init__(self, server: str = "dns://:53") -> None:
        self.server = server
        r = self.registry = Registry()
        self._fold_hooks: list[Callable[[], None]] = []
        self._cache_entries_fn: Callable[[], Mapping[str, int]] | None = None
        self._cache_zones = "."

        # -- server (plugin/metrics) --------------------------------------------------------
        self.requests = Counter(r, "coredns_dns_requests_total", "Counter of DNS requests made per zone, protocol and family.",
                                ("server", "zone", "view", "proto", "family", "type"))
        self.responses = Counter(r, "coredns_dns_responses_total", "Counter of response status codes.",
                                 ("server", "zone", "view", "rcode", "plugin"))
        self.request_duration = _WeightedHistogram(
            r, "coredns_dns_request_duration_seconds", "Histogram of the time (in seconds) each request took.",
            ("server", "zone", "view", "type"), buckets=DURATION_BUCKETS)
        self.request_size = _WeightedHistogram(
            r, "coredns_dns_request_size_bytes", "Size of the EDNS0 UDP buffer in bytes (64K for TCP).",
            ("server", "zone", "view", "proto"), buckets=SIZE_BUCKETS)
        self.response_size = _WeightedHistogram(
            r, "coredns_dns_response_size_bytes", "Size of the returned response in bytes.",
            ("server", "zone", "view", "proto"), buckets=SIZE_BUCKETS)
        self.panics = Counter(r, "coredns_panics_total", "A metrics that counts the number of panics.")
        self.build_info = Gauge(r, "coredns_build_info", "A metric with a constant '1' value labeled by version, "
                                "revision, and goversion from which CoreDNS was built.",
                                ("version", "revision", "goversion"))
        self.build_info.set(1, __version__, "netplane", "python" + platform.python_version())
        self.reload_failed = Counter(r, "coredns_reload_failed_total",
                                     "Counter of the number of failed reload attempts.")

        # -- cache (plugin/cache) -----------------------------------------------------------
        labels = ("server", "type", "zones", "view")
        self.cache_entries = Gauge(r, "coredns_cache_entries", "The number of elements in the cache.", labels,
                                   fn=self._cache_entries_samples)
        self.cache_hits = Counter(r, "coredns_cache_hits_total", "The count of cache hits.", labels)
        self.cache_misses = Counter(r, "coredns_cache_misses_total", "The count of cache misses.",
                                    ("server", "zones", "view"))
        self.cache_requests = Counter(r, "coredns_cache_requests_total", "The count of cache requests.",
                                      ("server", "zones", "view"))
        self.cache_evictions = Counter(r, "coredns_cache_evictions_total", "The count of cache evictions.", labels)
        self.cache_prefetches = Counter(r, "coredns_cache_prefetch_total", "The number of times the cache has prefetched a cached item.",
                                        ("server", "zones", "view"))
        self.cache_served_stale_count = Counter(r, "coredns_cache_served_stale_total",
                                                "The number of requests served from stale cache entries.",
                                                ("server", "zones", "view"))

        # -- forward (plugin/forward) -------------------------------------------------------
        self.forward_requests = Counter(r, "coredns_forward_requests_total", "Counter of requests made per upstream.",
                                        ("to",))
        self.forward_responses = Counter(r, "coredns_forward_responses_total",
                                         "Counter of responses received per upstream.", ("to", "rcode"))
        self.forward_duration = _WeightedHistogram(
            r, "coredns_forward_request_duration_seconds", "Histogram of the time each request took.",
            ("to", "rcode"), buckets=DURATION_BUCKETS)
        self.forward_healthcheck_failures = Counter(
            r, "coredns_forward_healthcheck_failures_total", "Counter of the number of failed healthchecks.", ("to",))
        self.forward_max_concurrent_rejects = Counter(
            r, "coredns_forward_max_concurrent_rejects_total",
            "Counter of the number of queries rejected because the concurrent queries were at maximum.")

    # -- server side (called by netplane.dns.server) ------------------------------------------

    def request(self, *, zone: str, proto: str, family: str, qtype: str, request_size: int,
                rcode: str, plugin: str, response_size: int, seconds: float, count: int = 1) -> None:
        """Account `count` identical requests in one go (the slow path passes 1, folds pass n)."""
        s = self.server
        self.requests.inc(s, zone, NO_VIEW, proto, family, qtype, amount=count)
        self.responses.inc(s, zone, NO_VIEW, rcode, plugin, amount=count)
        self.request_duration.observe_n(seconds, count, s, zone, NO_VIEW, qtype)
        self.request_size.observe_n(request_size, count, s, zone, NO_VIEW, proto)
        self.response_size.observe_n(response_size, count, s, zone, NO_VIEW, proto)

    def add_fold_hook(self, hook: Callable[[], None]) -> None:
        """`hook()` runs before every snapshot/render: it moves lazily kept counts in here."""
        self._fold_hooks.append(hook)

    # -- cache side (called by netplane.dns.cache) ---------------------------------------------

    def set_cache_zones(self, zones: Sequence[str]) -> None:
        self._cache_zones = " ".join(zones) or "."

    def cache_request(self) -> None:
        self.cache_requests.inc(self.server, self._cache_zones, NO_VIEW)

    def cache_hit(self, kind: str) -> None:
        """kind: "success" or "denial"."""
        self.cache_hits.inc(self.server, kind, self._cache_zones, NO_VIEW)

    def cache_miss(self) -> None:
        self.cache_misses.inc(self.server, self._cache_zones, NO_VIEW)

    def cache_eviction(self, kind: str) -> None:
        self.cache_evictions.inc(self.server, kind, self._cache_zones, NO_VIEW)

    def cache_prefetch(self) -> None:
        self.cache_prefetches.inc(self.server, self._cache_zones, NO_VIEW)

    def cache_served_stale(self) -> None:
        self.cache_served_stale_count.inc(self.server, self._cache_zones, NO_VIEW)

    def set_cache_entries_source(self, fn: Callable[[], Mapping[str, int]]) -> None:
        """`fn()` returns {"success": n, "denial": m}; it is called at scrape time only."""
        self._cache_entries_fn = fn

    def _cache_entries_samples(self) -> Iterable[tuple[Sequence[str], float]]:
        if self._cache_entries_fn is None:
            return []
        return [((self.server, kind, self._cache_zones, NO_VIEW), n) for kind, n in self._cache_entries_fn().items()]

    # -- forward side (called by netplane.dns.forward) -----------------------------------------

    def forward_request(self, to: str) -> None:
        """`to` is the upstream as CoreDNS labels it, e.g. "8.8.8.8:53"."""
        self.forward_requests.inc(to)

    def forward_response(self, to: str, rcode: str, seconds: float) -> None:
        """rcode is the name (NOERROR, NXDOMAIN, …); use "timeout" when no answer came."""
        self.forward_responses.inc(to, rcode)
        self.forward_duration.observe(seconds, to, rcode)

    def forward_healthcheck_failure(self, to: str) -> None:
        self.forward_healthcheck_failures.inc(to)

    def forward_max_concurrent_reject(self) -> None:
        self.forward_max_concurrent_rejects.inc()

    # -- export --------------------------------------------------------------------------------

    def fold(self) -> None:
        for hook in self._fold_hooks:
            hook()

    def snapshot(self) -> Snapshot:
        """This worker's values as plain data (for shipping to the process serving /metrics)."""
        self.fold()
        out: Snapshot = {}
        for metric in self.registry._metrics:
            if isinstance(metric, Histogram):
                with metric._lock:
                    out[metric.name] = {k: (list(c), t[0]) for k, (c, t) in metric._data.items()}
            elif isinstance(metric, Counter):
                with metric._lock:
                    out[metric.name] = dict(metric._values)
            elif isinstance(metric, Gauge):
                out[metric.name] = {tuple(str(x) for x in k): v for k, v in _gauge_items(metric)}
        return out

    def render(self, extra: Sequence[Snapshot] = ()) -> bytes:
        """The exposition text for this worker plus `extra` workers' snapshots, summed.
        coredns_build_info is the same in every worker, so it is not summed."""
        if not extra:
            self.fold()
            return self.registry.render()
        merged = merge_snapshots([self.snapshot(), *extra])
        lines: list[str] = []
        for metric in self.registry._metrics:
            values = merged.get(metric.name, {})
            lines += [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.kind}"]
            if isinstance(metric, Histogram):
                lines += metric.sample_lines(sorted(values.items()))  # type: ignore[arg-type]
            else:
                lines += [f"{metric.name}{_labels(metric.label_names, k)} {_num(v)}"
                          for k, v in sorted(values.items())]
        return ("\n".join(lines) + "\n").encode()


def _gauge_items(gauge: Gauge) -> list[tuple[Sequence[str], float]]:
    if gauge._fn is not None:
        return list(gauge._fn())
    with gauge._lock:
        return list(gauge._values.items())


def merge_snapshots(snapshots: Sequence[Snapshot]) -> Snapshot:
    merged: Snapshot = {}
    for snap in snapshots:
        for name, series in snap.items():
            target = merged.setdefault(name, {})
            for key, value in series.items():
                if name == "coredns_build_info":
                    target[key] = value
                elif isinstance(value, tuple):
                    counts, total = value
                    if key in target:
                        old_counts, old_total = target[key]
                        target[key] = ([a + b for a, b in zip(old_counts, counts)], old_total + total)
                    else:
                        target[key] = (list(counts), total)
                else:
                    target[key] = target.get(key, 0) + value
    return merged
