"""The proxy's Prometheus metrics, named as kube-proxy's (pkg/proxy/metrics) so dashboards work.

`ProxyMetrics` owns a `netplane.metrics.Registry`; the provider and the backends call its
methods and `/metrics` serves `registry.render()`.
"""

from __future__ import annotations

from netplane.metrics import Counter, Gauge, Histogram, Registry

# kube-proxy's ExponentialBuckets(0.001, 2, 15): 1 ms … 16.384 s
SYNC_BUCKETS = tuple(0.001 * 2**k for k in range(15))

_P = "kubeproxy_"


class ProxyMetrics:
    def __init__(self, registry: Registry | None = None) -> None:
        r = self.registry = registry if registry is not None else Registry()
        self.sync_duration = Histogram(
            r, _P + "sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds",
            buckets=SYNC_BUCKETS)
        self.sync_full_duration = Histogram(
            r, _P + "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs", buckets=SYNC_BUCKETS)
        self.sync_partial_duration = Histogram(
            r, _P + "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs", buckets=SYNC_BUCKETS)
        self.last_sync_timestamp = Gauge(
            r, _P + "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced")
        self.last_queued_timestamp = Gauge(
            r, _P + "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued")
        self.iptables_rules_total = Gauge(
            r, _P + "sync_proxy_rules_iptables_total",
            "Total number of iptables rules owned by the proxy", labels=("table",))
        self.iptables_rules_last = Gauge(
            r, _P + "sync_proxy_rules_iptables_last",
            "Number of iptables rules written by the proxy in the last sync", labels=("table",))
        self.restore_failures = Counter(
            r, _P + "sync_proxy_rules_iptables_restore_failures_total",
            "Cumulative proxy iptables restore failures")
        self.partial_restore_failures = Counter(
            r, _P + "sync_proxy_rules_iptables_partial_restore_failures_total",
            "Cumulative proxy iptables partial restore failures")
        self.service_changes_pending = Gauge(
            r, _P + "sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes")
        self.service_changes_total = Counter(
            r, _P + "sync_proxy_rules_service_changes_total",
            "Cumulative proxy rules Service changes")
        self.endpoint_changes_pending = Gauge(
            r, _P + "sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes")
        self.endpoint_changes_total = Counter(
            r, _P + "sync_proxy_rules_endpoint_changes_total",
            "Cumulative proxy rules Endpoint changes")
        self.no_local_endpoints = Gauge(
            r, _P + "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            labels=("traffic_policy",))
        self.healthz_total = Counter(
            r, _P + "proxy_healthz_total", "Cumulative proxy healthz HTTP status", labels=("code",))
        self.livez_total = Counter(
            r, _P + "proxy_livez_total", "Cumulative proxy livez HTTP status", labels=("code",))
        self.syncs_total = Counter(
            r, "netplane_proxy_syncs_total", "Successful proxy syncs by kind", labels=("kind",))

    # -- called by the provider --------------------------------------------------------------

    def sync_done(self, seconds: float, *, full: bool, wall_time: float) -> None:
        self.sync_duration.observe(seconds)
        (self.sync_full_duration if full else self.sync_partial_duration).observe(seconds)
        self.last_sync_timestamp.set(wall_time)
        self.syncs_total.inc("full" if full else "partial")

    def sync_queued(self, wall_time: float) -> None:
        self.last_queued_timestamp.set(wall_time)

    def service_change(self, pending: int) -> None:
        self.service_changes_total.inc()
        self.service_changes_pending.set(pending)

    def endpoint_change(self, pending: int) -> None:
        self.endpoint_changes_total.inc()
        self.endpoint_changes_pending.set(pending)

    def changes_applied(self) -> None:
        self.service_changes_pending.set(0)
        self.endpoint_changes_pending.set(0)

    # -- called by backends ------------------------------------------------------------------

    def iptables_rules(self, table: str, *, total: int, written: int) -> None:
        self.iptables_rules_total.set(total, table)
        self.iptables_rules_last.set(written, table)

    def restore_failed(self, *, partial: bool) -> None:
        (self.partial_restore_failures if partial else self.restore_failures).inc()

    def no_local_endpoints_count(self, *, internal: int, external: int) -> None:
        self.no_local_endpoints.set(internal, "internal")
        self.no_local_endpoints.set(external, "external")

    # -- called by the health servers ---------------------------------------------------------

    def healthz(self, code: int) -> None:
        self.healthz_total.inc(str(code))

    def livez(self, code: int) -> None:
        self.livez_total.inc(str(code))

    def render(self) -> bytes:
        return self.registry.render()
