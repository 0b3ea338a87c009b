"""Pure: a pod's API status from what kubelet-lite knows about its containers.

`ContainerRuntime` is the kubelet's record of one container (also what state.json stores);
`pod_status` turns the records into the `status` the kubelet PUTs to pods/status, with the
phase rules of the kubelet's getPhase and conditions whose lastTransitionTime only moves when the
condition's status changes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

TERMINAL_PHASES = ("Succeeded", "Failed")


def rfc3339(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


@dataclass
class ContainerRuntime:
    """One container (process) as kubelet-lite tracks it.

    state: "waiting" (reason says why: ContainerCreating, PodInitializing, CrashLoopBackOff, ...),
    "running" (pid, started_at) or "terminated" (exit_code, reason Completed/Error/..., times).
    """

    name: str
    init: bool = False
    state: str = "waiting"
    reason: str = "ContainerCreating"
    message: str = ""
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    restart_count: int = 0
    last_terminated: dict[str, Any] | None = None
    ready: bool = False
    started: bool = False
    pid: int | None = None
    pid_start: int | None = None  # /proc/<pid>/stat starttime, guards against pid reuse
    container_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ContainerRuntime:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def succeeded(self) -> bool:
        return self.state == "terminated" and self.exit_code == 0

    def terminated_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"exitCode": self.exit_code if self.exit_code is not None else 0,
                               "reason": self.reason or ("Completed" if self.exit_code == 0
                                                         else "Error")}
        if self.message:
            out["message"] = self.message
        if self.started_at:
            out["startedAt"] = self.started_at
        if self.finished_at:
            out["finishedAt"] = self.finished_at
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def exit_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


def container_status(spec: Mapping[str, Any], rt: ContainerRuntime) -> dict[str, Any]:
    """A v1.ContainerStatus."""
    if rt.state == "running":
        state: dict[str, Any] = {"running": {"startedAt": rt.started_at or rfc3339()}}
    elif rt.state == "terminated":
        state = {"terminated": rt.terminated_dict()}
    else:
        waiting: dict[str, Any] = {"reason": rt.reason or "ContainerCreating"}
        if rt.message:
            waiting["message"] = rt.message
        state = {"waiting": waiting}
    image = spec.get("image") if isinstance(spec.get("image"), str) else ""
    out: dict[str, Any] = {
        "name": rt.name,
        "state": state,
        "lastState": {"terminated": dict(rt.last_terminated)} if rt.last_terminated else {},
        "ready": rt.ready,
        "restartCount": rt.restart_count,
        "image": image,
        "imageID": image,
        "started": rt.started if not rt.init else rt.state == "running",
    }
    if rt.container_id:
        out["containerID"] = rt.container_id
    return out


def compute_phase(
    spec: Mapping[str, Any],
    init: Sequence[ContainerRuntime],
    regular: Sequence[ContainerRuntime],
    *,
    terminating: bool = False,
    previous: str = "Pending",
) -> str:
    """The kubelet's getPhase. A terminal phase never changes back. A terminating pod whose
    processes all stopped is Succeeded when every one exited 0, else Failed."""
    if previous in TERMINAL_PHASES:
        return previous
    policy = spec.get("restartPolicy") or "Always"
    for c in init:
        if c.state == "terminated" and c.exit_code != 0 and policy == "Never":
            return "Failed"
    if init and not all(c.succeeded for c in init):
        if terminating and not any(c.state == "running" for c in init + list(regular)):
            return "Failed"
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for c in regular:
        if c.state == "running":
            running += 1
        elif c.state == "terminated":
            stopped += 1
            succeeded += c.exit_code == 0
        elif c.last_terminated is not None:
            stopped += 1  # waiting to restart after a run
            succeeded += c.last_terminated.get("exitCode") == 0
        else:
            waiting += 1
    if terminating and running == 0:
        return "Succeeded" if regular and succeeded == len(regular) else "Failed"
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"  # OnFailure: the failed ones restart
    return "Pending"


def _condition(ctype: str, ok: bool, old: Mapping[str, Mapping[str, Any]], now: str,
               reason: str = "", message: str = "") -> dict[str, Any]:
    status = "True" if ok else "False"
    prev = old.get(ctype) or {}
    ltt = prev.get("lastTransitionTime") if prev.get("status") == status else None
    cond: dict[str, Any] = {"type": ctype, "status": status, "lastProbeTime": None,
                            "lastTransitionTime": ltt or now}
    if not ok and reason:
        cond["reason"] = reason
        if message:
            cond["message"] = message
    return cond


def qos_class(spec: Mapping[str, Any]) -> str:
    containers = [c for key in ("initContainers", "containers")
                  for c in (spec.get(key) or []) if isinstance(c, dict)]
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") if isinstance(c.get("resources"), dict) else {}
        req = res.get("requests") if isinstance(res.get("requests"), dict) else {}
        lim = res.get("limits") if isinstance(res.get("limits"), dict) else {}
        if req or lim:
            any_set = True
        for r in ("cpu", "memory"):
            if r not in lim or (r in req and req[r] != lim[r]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


@dataclass
class PodRuntime:
    """Pod-level facts for the status besides the containers."""

    pod_ips: Sequence[str] = ()
    host_ip: str = ""
    start_time: str | None = None
    sandbox_ready: bool = False
    terminating: bool = False
    init: Sequence[ContainerRuntime] = field(default_factory=list)
    containers: Sequence[ContainerRuntime] = field(default_factory=list)


def pod_status(pod: Mapping[str, Any], rt: PodRuntime, *, now: str | None = None,
               previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The pod's status. `previous` is the last status (for lastTransitionTime and phase);
    default: the one in `pod`."""
    now = now or rfc3339()
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    if previous is None:
        previous = pod.get("status") if isinstance(pod.get("status"), dict) else {}
    old_conditions = {c.get("type"): c for c in previous.get("conditions") or []
                      if isinstance(c, dict)}
    phase = compute_phase(spec, rt.init, rt.containers, terminating=rt.terminating,
                          previous=str(previous.get("phase") or "Pending"))
    init_specs = {c.get("name"): c for c in spec.get("initContainers") or [] if isinstance(c, dict)}
    specs = {c.get("name"): c for c in spec.get("containers") or [] if isinstance(c, dict)}

    incomplete = [c.name for c in rt.init if not c.succeeded]
    unready = [c.name for c in rt.containers if not c.ready]
    initialized = not incomplete
    containers_ready = initialized and not unready
    if phase == "Succeeded":
        ready_reason, ready_msg = "PodCompleted", ""
    elif not initialized:
        ready_reason = "ContainersNotInitialized"
        ready_msg = f"containers with incomplete status: [{' '.join(incomplete)}]"
    else:
        ready_reason = "ContainersNotReady"
        ready_msg = f"containers with unready status: [{' '.join(unready)}]"
    conditions = [
        _condition("PodReadyToStartContainers", rt.sandbox_ready, old_conditions, now),
        _condition("Initialized", initialized, old_conditions, now, "ContainersNotInitialized",
                   f"containers with incomplete status: [{' '.join(incomplete)}]"),
        _condition("Ready", containers_ready, old_conditions, now, ready_reason, ready_msg),
        _condition("ContainersReady", containers_ready, old_conditions, now, ready_reason,
                   ready_msg),
        _condition("PodScheduled", True, old_conditions, now),
    ]
    status: dict[str, Any] = {"phase": phase, "conditions": conditions}
    if rt.host_ip:
        status["hostIP"] = rt.host_ip
        status["hostIPs"] = [{"ip": rt.host_ip}]
    if rt.pod_ips:
        status["podIP"] = rt.pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in rt.pod_ips]
    if rt.start_time:
        status["startTime"] = rt.start_time
    if rt.init:
        status["initContainerStatuses"] = [container_status(init_specs.get(c.name, {}), c)
                                           for c in rt.init]
    status["containerStatuses"] = [container_status(specs.get(c.name, {}), c)
                                   for c in rt.containers]
    status["qosClass"] = qos_class(spec)
    return status
