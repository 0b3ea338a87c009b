"""Informer → Provider fan-out (kube-proxy's pkg/proxy/config): no logic lives here.

Handlers only forward events to the provider, whose trackers just record them. Once an informer
has synced, its `on_*_synced` is called exactly once, from a small waiter thread so that the
caller does not block; the provider ignores everything but recording until both have synced.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from netplane.k8s.informer import Informer
from netplane.k8s.objects import EndpointSlice, Node, Service
from netplane.proxy.provider import Provider

log = logging.getLogger(__name__)

# kube-proxy's informer selectors: services claimed by another proxy are not ours, and headless
# services never get rules. Use them when building the informers.
SERVICE_LABEL_SELECTOR = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
ENDPOINT_SLICE_LABEL_SELECTOR = (
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless")

_SYNC_POLL = 1.0  # seconds between stop checks while waiting for an informer to sync


def _when_synced(informer: Informer[Any], callback: Callable[[], None],
                 stop: threading.Event, what: str) -> threading.Thread:
    def wait() -> None:
        while not informer.wait_for_sync(_SYNC_POLL):
            if stop.is_set():
                return
        log.debug("%s informer synced", what)
        callback()

    thread = threading.Thread(target=wait, name=f"proxy {what} synced", daemon=True)
    thread.start()
    return thread


def connect_informers(
    provider: Provider,
    services: Informer[Service],
    slices: Informer[EndpointSlice],
    node: Informer[Node] | None,
    node_name: str,
    *,
    stop: threading.Event | None = None,
) -> list[threading.Thread]:
    """Register the provider's handlers; returns the waiter threads (join them to know both
    `on_*_synced` calls happened). Setting `stop` abandons waiting."""
    stop = stop if stop is not None else threading.Event()
    services.add_handler(provider.on_service_add, provider.on_service_update,
                         provider.on_service_delete)
    slices.add_handler(provider.on_endpoint_slice_add, provider.on_endpoint_slice_update,
                       provider.on_endpoint_slice_delete)
    if node is not None:
        def own_node(n: Node) -> None:
            if n.name == node_name:
                provider.on_node_update(n)

        node.add_handler(own_node, lambda _old, new: own_node(new), None)
    return [
        _when_synced(services, provider.on_services_synced, stop, "service"),
        _when_synced(slices, provider.on_endpoint_slices_synced, stop, "endpointslice"),
    ]
