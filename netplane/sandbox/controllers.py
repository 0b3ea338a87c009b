"""Control-plane-lite for the sandbox: node podCIDR IPAM, the EndpointSlice controller (with the
legacy Endpoints object) and a scheduler, sharing one set of informers.

Each controller is pure `compute_*` functions (in `controllers_ipam`, `controllers_slices`,
`controllers_scheduler`) plus a small loop: informer handlers enqueue a key, one worker thread
drains a de-duplicating, rate-limited queue with a periodic full resync and backoff on errors
(`controllers_base.Worker`). This module wires them together:

    plane = ControlPlane(client, cluster_cidr="10.244.0.0/16", node_cidr_mask=24).start()
    plane.wait_for_sync(30)
    ...
    plane.stop()

`start()` starts the informers, then the controllers (which wait for the caches to sync before
acting); `stop()` stops the controllers, then the informers. Controllers may also be built one
by one as `XController(client, informers, ...)` on a `ControllerInformers`, whose owner starts
and stops the informers around them.
"""

from __future__ import annotations

import logging
from typing import Any

from netplane.sandbox.controllers_base import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    SKIP_MIRROR_LABEL,
    ControllerInformers,
    WriteTracker,
    selector_matches,
)
from netplane.sandbox.controllers_worker import Requeue, WorkQueue, Worker
from netplane.sandbox.controllers_endpointslice import EndpointSliceController
from netplane.sandbox.controllers_ipam import NodeIpamController, compute_pod_cidrs
from netplane.sandbox.controllers_scheduler import (
    Decision,
    SchedulerController,
    choose_node,
    compute_bindings,
    needs_scheduling,
)
from netplane.sandbox.controllers_slices import (
    MAX_ENDPOINTS_PER_SLICE,
    compute_endpoint_slices,
    compute_endpoints,
    plan_slices,
    resolve_target_port,
)

log = logging.getLogger(__name__)

Scheduler = SchedulerController  # short alias

__all__ = [
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "MAX_ENDPOINTS_PER_SLICE",
    "SERVICE_NAME_LABEL",
    "SKIP_MIRROR_LABEL",
    "ControlPlane",
    "ControllerInformers",
    "Decision",
    "EndpointSliceController",
    "NodeIpamController",
    "Requeue",
    "Scheduler",
    "SchedulerController",
    "WorkQueue",
    "Worker",
    "WriteTracker",
    "choose_node",
    "compute_bindings",
    "compute_endpoint_slices",
    "compute_endpoints",
    "compute_pod_cidrs",
    "needs_scheduling",
    "plan_slices",
    "resolve_target_port",
    "selector_matches",
]


class ControlPlane:
    """The three controllers over one `ControllerInformers`; each can be switched off."""

    def __init__(
        self,
        client: Any,
        *,
        cluster_cidr: str,
        node_cidr_mask: int,
        resync_period: float = 30.0,
        relist_period: float | None = None,
        ipam: bool = True,
        endpoint_slices: bool = True,
        scheduler: bool = True,
    ) -> None:
        self.informers = ControllerInformers(client, relist_period=relist_period)
        self.ipam = (NodeIpamController(client, self.informers, cluster_cidr=cluster_cidr,
                                        node_cidr_mask=node_cidr_mask,
                                        resync_period=resync_period) if ipam else None)
        self.endpoint_slices = (EndpointSliceController(client, self.informers,
                                                        resync_period=resync_period)
                                if endpoint_slices else None)
        self.scheduler = (SchedulerController(client, self.informers, resync_period=resync_period)
                          if scheduler else None)

    @property
    def controllers(self) -> list[Any]:
        return [c for c in (self.ipam, self.endpoint_slices, self.scheduler) if c is not None]

    def start(self) -> ControlPlane:
        self.informers.start()
        for controller in self.controllers:
            controller.start()
        log.info("control plane: started %s",
                 ", ".join(c.worker.name for c in self.controllers) or "no controllers")
        return self

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        """True once every informer has listed (the controllers act from then on)."""
        return self.informers.wait_for_sync(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        for controller in self.controllers:
            controller.stop(timeout)
        self.informers.stop(timeout)
