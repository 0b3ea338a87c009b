"""How every netplane component talks to and watches the apiserver.

* `config`: where the apiserver is (kubeconfig, in-cluster service account) and writing kubeconfigs;
* `client`: a lean JSON-over-HTTP client with streaming watches;
* `objects`: slim immutable values of the fields netplane uses, converted at ingest;
* `informer`: list-then-watch caches with indexes and change handlers.
"""

from __future__ import annotations

from netplane.k8s.client import PATCH_CONTENT_TYPES, Client, Watch, WatchEvent, resource_path
from netplane.k8s.config import (
    ClusterConfig,
    load_config,
    load_incluster,
    load_kubeconfig,
    write_kubeconfig,
)
from netplane.k8s.informer import Backoff, Informer, ListWatcher, WatchStream, object_key
from netplane.k8s.objects import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Namespace,
    Node,
    Pod,
    Service,
    ServicePort,
    TargetRef,
    pairs_get,
)

__all__ = [
    "PATCH_CONTENT_TYPES",
    "Backoff",
    "Client",
    "ClusterConfig",
    "Endpoint",
    "EndpointPort",
    "EndpointSlice",
    "Informer",
    "ListWatcher",
    "Namespace",
    "Node",
    "Pod",
    "Service",
    "ServicePort",
    "TargetRef",
    "Watch",
    "WatchEvent",
    "WatchStream",
    "load_config",
    "load_incluster",
    "load_kubeconfig",
    "object_key",
    "pairs_get",
    "resource_path",
    "write_kubeconfig",
]
