"""The Provider seam and BaseProvider, the backend-neutral half of every proxier.

BaseProvider turns informer events into tracker changes, gates syncing until both Services and
EndpointSlices have synced ("don't sync rules till we've received services and endpoints"),
coalesces sync requests through a BoundedFrequencyRunner and hands each backend one immutable
ProxyState per sync. A backend subclasses it and implements `sync_state(state, full)`.

A sync is full (the backend rewrites everything it owns) on the first sync, every
`full_sync_interval`, after a failed sync and after `request_full_sync(reason)`; otherwise the
backend may limit itself to `state.changed`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
from dataclasses import dataclass
from typing import Protocol

from netplane.errors import NetplaneError
from netplane.k8s.objects import EndpointSlice, Node, Service
from netplane.proxy.healthcheck import PendingSince, ProxyHealth, ServiceHealthServer, ServiceKey
from netplane.proxy.metrics import ProxyMetrics
from netplane.proxy.model import NodeContext, ProxyState
from netplane.proxy.runner import REAL_CLOCK, BoundedFrequencyRunner, Clock
from netplane.proxy.tracker import (
    EndpointSliceChangeTracker,
    ProxyStateBuilder,
    ServiceChangeTracker,
)

log = logging.getLogger(__name__)


class Provider(Protocol):
    def on_service_add(self, svc: Service) -> None: ...
    def on_service_update(self, old: Service, new: Service) -> None: ...
    def on_service_delete(self, svc: Service) -> None: ...
    def on_services_synced(self) -> None: ...
    def on_endpoint_slice_add(self, s: EndpointSlice) -> None: ...
    def on_endpoint_slice_update(self, old: EndpointSlice, new: EndpointSlice) -> None: ...
    def on_endpoint_slice_delete(self, s: EndpointSlice) -> None: ...
    def on_endpoint_slices_synced(self) -> None: ...
    def on_node_update(self, node: Node) -> None: ...
    def sync(self) -> None: ...
    def sync_loop(self, stop: threading.Event) -> None: ...


class ProxySyncError(NetplaneError):
    """A backend reported a failed sync; the runner retries it (as a full sync)."""


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What `sync_state` may return; None means success. `ok=False` makes the next attempt a
    full sync after the retry interval, with `reason` logged."""

    ok: bool = True
    reason: str = ""


class BaseProvider:
    def __init__(
        self,
        node: NodeContext,
        *,
        min_sync_interval: float = 1.0,
        sync_period: float = 30.0,
        retry_interval: float = 5.0,
        full_sync_interval: float | None = None,
        clock: Clock = REAL_CLOCK,
        metrics: ProxyMetrics | None = None,
        proxy_health: ProxyHealth | None = None,
        service_health: ServiceHealthServer | None = None,
    ) -> None:
        self.node = node
        self.clock = clock
        self.metrics = metrics if metrics is not None else ProxyMetrics()
        self.proxy_health = proxy_health
        self.service_health = service_health
        self.service_changes = ServiceChangeTracker()
        self.slice_changes = EndpointSliceChangeTracker()
        self._builder = ProxyStateBuilder(self.service_changes, self.slice_changes)
        self.full_sync_interval = sync_period if full_sync_interval is None else full_sync_interval
        self.runner = BoundedFrequencyRunner(
            f"{type(self).__name__} sync", self._sync_once, min_interval=min_sync_interval,
            max_interval=sync_period, retry_interval=retry_interval, clock=clock)
        self._lock = threading.Lock()
        self._services_synced = False
        self._slices_synced = False
        self._full_reason: str | None = "first sync"
        self._last_full: float | None = None
        self.last_state: ProxyState | None = None
        self.last_sync_time: float | None = None  # wall time of the last successful sync
        self._pending = PendingSince()  # wall times of changes not yet synced

    # ----------------------------------------------------------------------- the backend's part

    def sync_state(self, state: ProxyState, full: bool) -> SyncResult | None:
        """Make the dataplane match `state`; raise (or return ok=False) on failure."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------- events

    def on_service_add(self, svc: Service) -> None:
        self._service_event(None, svc)

    def on_service_update(self, old: Service, new: Service) -> None:
        self._service_event(old, new)

    def on_service_delete(self, svc: Service) -> None:
        self._service_event(svc, None)

    def on_endpoint_slice_add(self, s: EndpointSlice) -> None:
        self._slice_event(None, s)

    def on_endpoint_slice_update(self, old: EndpointSlice, new: EndpointSlice) -> None:
        self._slice_event(old, new)

    def on_endpoint_slice_delete(self, s: EndpointSlice) -> None:
        self._slice_event(s, None)

    def on_services_synced(self) -> None:
        log.info("services synced")
        self._informer_synced(services=True)

    def on_endpoint_slices_synced(self) -> None:
        log.info("endpoint slices synced")
        self._informer_synced(services=False)

    def _informer_synced(self, *, services: bool) -> None:
        with self._lock:
            if services:
                self._services_synced = True
            else:
                self._slices_synced = True
        # The first sync is owed from now on: healthz starts counting.
        self._queued()

    def on_node_update(self, node: Node) -> None:
        """Our own Node changed: take its zone and addresses; both affect every service."""
        if node.name != self.node.name:
            return
        ips = tuple(dict.fromkeys(
            a for t, a in node.addresses
            if t in ("InternalIP", "ExternalIP") and _is_ipv4(a)))
        updated = dataclasses.replace(self.node, zone=node.zone,
                                      node_ips=ips or self.node.node_ips)
        if updated == self.node:
            return
        self.node = updated
        self.request_full_sync(f"node {node.name} changed (zone {node.zone!r}, IPs {ips})")

    @property
    def oldest_queued_time(self) -> float | None:
        """Wall time of the oldest change the dataplane does not reflect yet."""
        return self._pending.oldest

    @property
    def initialized(self) -> bool:
        with self._lock:
            return self._services_synced and self._slices_synced

    def _service_event(self, old: Service | None, new: Service | None) -> None:
        pending = self.service_changes.update(old, new)
        self.metrics.service_change(self.service_changes.pending())
        if pending:
            self._queued()

    def _slice_event(self, old: EndpointSlice | None, new: EndpointSlice | None) -> None:
        pending = self.slice_changes.update(old, new)
        self.metrics.endpoint_change(self.slice_changes.pending())
        if pending:
            self._queued()

    def _queued(self) -> None:
        if not self.initialized:
            return  # the first sync covers it; healthz does not count start-up as lag
        self._pending.queued(self.clock.time())
        if self.proxy_health is not None:
            self.proxy_health.queued_update()
        self.metrics.sync_queued(self.clock.time())
        self.runner.run()

    # ---------------------------------------------------------------------------------- syncs

    def sync(self) -> None:
        """Ask for a sync (coalesced; a no-op until both informers synced)."""
        if self.initialized:
            self.runner.run()

    def sync_loop(self, stop: threading.Event) -> None:
        self.runner.loop(stop)

    def request_full_sync(self, reason: str) -> None:
        """Make the next sync full (e.g. the canary chain vanished, a partial restore failed)."""
        log.info("full sync requested: %s", reason)
        with self._lock:
            if self._full_reason is None:
                self._full_reason = reason
        self.sync()

    def _take_full(self, now: float) -> str | None:
        with self._lock:
            reason, self._full_reason = self._full_reason, None
        if reason is None and (self._last_full is None
                               or now - self._last_full >= self.full_sync_interval):
            reason = "periodic resync"
        if reason is None:
            reason = self.full_sync_reason()
        return reason

    def full_sync_reason(self) -> str | None:
        """Backend hook, asked before each sync that would otherwise be partial: a reason to
        make it full (e.g. the iptables canary chain vanished), or None."""
        return None

    def _sync_once(self) -> None:
        if not self.initialized:
            log.debug("not syncing: waiting for services and endpoint slices to sync")
            return
        start = self.clock.monotonic()
        reason = self._take_full(start)
        self._pending.sync_started()
        if self.proxy_health is not None:
            self.proxy_health.sync_started()
        full = reason is not None
        state = self._builder.apply()
        self.metrics.changes_applied()
        log.debug("syncing (%s): %d service ports, %d changed", reason or "partial",
                  len(state.services), len(state.changed))
        try:
            result = self.sync_state(state, full)
            if result is not None and not result.ok:
                raise ProxySyncError(f"{type(self).__name__} sync failed: {result.reason}")
        except Exception:
            # What failed is unknown, and the changes are consumed: rewrite everything.
            with self._lock:
                if self._full_reason is None:
                    self._full_reason = "previous sync failed"
            raise
        if full:
            self._last_full = start
        self.last_state = state
        self.last_sync_time = self.clock.time()
        self._pending.synced()
        self.metrics.sync_done(self.clock.monotonic() - start, full=full,
                               wall_time=self.last_sync_time)
        if self.proxy_health is not None:
            self.proxy_health.updated()
        if self.service_health is not None:
            self._sync_service_health(state)

    def _sync_service_health(self, state: ProxyState) -> None:
        ports: dict[ServiceKey, int] = {}
        for name, info in state.services.items():
            if info.external_policy_local and info.health_check_node_port:
                ports[name.service_key] = info.health_check_node_port
        local: dict[ServiceKey, set[str]] = {key: set() for key in ports}
        for name, eps in state.endpoints.items():
            ips = local.get(name.service_key)
            if ips is not None:
                ips.update(ep.ip for ep in eps if ep.ready and ep.node_name == self.node.name)
        assert self.service_health is not None
        self.service_health.sync_services(ports)
        self.service_health.sync_endpoints({key: len(ips) for key, ips in local.items()})


def _is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True
