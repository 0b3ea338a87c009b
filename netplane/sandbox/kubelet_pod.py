"""One pod's worker: converges what runs on the node to the pod in the apiserver.

A worker is a thread per pod uid (the kopf model: events for one pod are handled in order, by one
thread). Each iteration reads the newest pod the informer delivered and takes one step:

    sandbox (netns, CNI ADD, resolv.conf/hosts) → init containers in order → containers,
    restarts with crash-loop backoff, probes → status PUT when it changed

and, once the pod has a deletionTimestamp: SIGTERM, grace period, SIGKILL, CNI DEL, netns and
files removed, DELETE with gracePeriodSeconds=0. The per-pod state file lets a restarted kubelet
adopt the processes it left running.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from netplane.errors import NetplaneError
from netplane.sandbox import kubelet_process as proc
from netplane.sandbox.kubelet_probes import (
    ProbeResult,
    ProbeState,
    exec_check,
    http_check,
    run_in_netns,
    tcp_check,
)
from netplane.sandbox.kubelet_sandbox import create_sandbox, netns_path, teardown_sandbox
from netplane.sandbox.kubelet_spec import (
    ProbeError,
    container_argv,
    container_env,
    grace_period,
    parse_probe,
    pod_netns_name,
    restart_delay,
    should_restart,
    wrap_argv,
)
from netplane.sandbox.kubelet_status import (
    TERMINAL_PHASES,
    ContainerRuntime,
    PodRuntime,
    compute_phase,
    exit_reason,
    pod_status,
    rfc3339,
)

if TYPE_CHECKING:
    from netplane.sandbox.kubelet import Kubelet

log = logging.getLogger("netplane.sandbox.kubelet")

# A container that ran this long before exiting restarts without backoff (kubelet: 2x max).
BACKOFF_RESET_AFTER = 600.0
# After SIGKILL, how long to wait for a process to vanish before tearing down regardless.
KILL_WAIT = 10.0
# The shortest grace a pod deleted outright from the apiserver gets (kubelet's minimum).
MIN_FORCE_GRACE = 2.0


def _d(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


class PodWorker:
    def __init__(self, kubelet: Kubelet, pod: dict[str, Any]) -> None:
        self.k = kubelet
        meta = _d(pod.get("metadata"))
        self.uid: str = meta.get("uid") or ""
        self.namespace: str = meta.get("namespace") or "default"
        self.name: str = meta.get("name") or ""
        self.pod = pod
        self.gone = False
        self.wake = threading.Event()
        spec = _d(pod.get("spec"))
        self.host_network = spec.get("hostNetwork") is True
        self.netns = None if self.host_network else pod_netns_name(kubelet.cluster, self.uid)
        self.dir = os.path.join(kubelet.pods_dir, self.uid)
        self.thread = threading.Thread(
            target=self.run, daemon=True,
            name=f"kubelet {kubelet.node_name} {self.namespace}/{self.name}")
        # runtime
        self.sandbox_ready = False
        self.sandbox_failures = 0
        self.next_sandbox_try = 0.0
        self.pod_ips: list[str] = []
        self.start_time: str | None = None
        self.init = [ContainerRuntime(c.get("name", ""), init=True, reason="PodInitializing")
                     for c in spec.get("initContainers") or [] if isinstance(c, dict)]
        first_reason = "PodInitializing" if self.init else "ContainerCreating"
        self.containers = [ContainerRuntime(c.get("name", ""), reason=first_reason)
                           for c in spec.get("containers") or [] if isinstance(c, dict)]
        self.handles: dict[str, proc.ProcessHandle] = {}
        self.probes: dict[str, dict[str, ProbeState]] = {}
        self.run_started: dict[str, float] = {}
        self.backoff_level: dict[str, int] = {}
        self.restart_at: dict[str, float] = {}
        self.kill_at: dict[str, float] = {}  # container being stopped (probe failure): SIGKILL then
        self.terminating = False
        self.grace_seen: float | None = None
        self.kill_deadline = 0.0
        self.killed_at: float | None = None
        self.frozen = False  # a finished pod found at start: report nothing, run nothing
        self.last_status: dict[str, Any] | None = None
        self.finished = False

    # ----------------------------------------------------------------------------- helpers

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def spec(self) -> dict[str, Any]:
        return _d(self.pod.get("spec"))

    def _cspec(self, c: ContainerRuntime) -> dict[str, Any]:
        for item in self.spec.get("initContainers" if c.init else "containers") or []:
            if isinstance(item, dict) and item.get("name") == c.name:
                return item
        return {}

    def _exec_netns(self) -> str | None:
        return self.netns or self.k.node_netns or None

    def _all(self) -> list[ContainerRuntime]:
        return self.init + self.containers

    def _running(self) -> list[ContainerRuntime]:
        return [c for c in self._all() if c.state == "running"]

    def _phase(self) -> str:
        prev = _d(self.last_status).get("phase") or "Pending"
        return compute_phase(self.spec, self.init, self.containers,
                             terminating=self.terminating, previous=prev)

    def _event(self, etype: str, reason: str, message: str) -> None:
        self.k.record_event(self.pod, etype, reason, message)

    def _save(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        proc.write_json(os.path.join(self.dir, "state.json"), {
            "uid": self.uid, "namespace": self.namespace, "name": self.name,
            "netns": self.netns, "hostNetwork": self.host_network,
            "sandboxReady": self.sandbox_ready, "podIPs": self.pod_ips,
            "startTime": self.start_time, "terminating": self.terminating,
            "init": [c.to_json() for c in self.init],
            "containers": [c.to_json() for c in self.containers],
        })

    # -------------------------------------------------------------------------------- loop

    def run(self) -> None:
        try:
            self._recover()
        except Exception:
            log.exception("pod %s: recovering its state failed; starting afresh", self.key)
        try:
            while True:
                if self.k.stopping.is_set():
                    if self.k.kill_pods:
                        self._teardown(self.k.stop_grace)
                    return
                try:
                    if self.gone:
                        self._teardown(max(MIN_FORCE_GRACE, min(grace_period(self.pod), 30.0)))
                        return
                    if _d(self.pod.get("metadata")).get("deletionTimestamp"):
                        if self._step_deletion():
                            return
                    else:
                        self._step()
                    self._report()
                except Exception:
                    log.exception("pod %s: sync failed; retrying", self.key)
                    self.wake.wait(1.0)
                self.wake.wait(self.k.sync_interval)
                self.wake.clear()
        finally:
            self.k.worker_done(self)

    # ------------------------------------------------------------------------- start-up

    def _recover(self) -> None:
        """Adopt what a previous kubelet left for this pod, or clear it away."""
        api_status = _d(self.pod.get("status"))
        self.last_status = dict(api_status) if api_status else None
        state = proc.read_json(os.path.join(self.dir, "state.json"))
        terminal = api_status.get("phase") in TERMINAL_PHASES
        if not isinstance(state, dict):
            if self.netns and os.path.exists(netns_path(self.netns)):
                self._teardown_sandbox()
            self.frozen = terminal
            self.start_time = api_status.get("startTime")
            return
        try:
            init = [ContainerRuntime.from_json(c) for c in state.get("init") or []]
            containers = [ContainerRuntime.from_json(c) for c in state.get("containers") or []]
        except TypeError:
            init, containers = [], []
        names_ok = ([c.name for c in init] == [c.name for c in self.init]
                    and [c.name for c in containers] == [c.name for c in self.containers])
        handles = {}
        alive = names_ok
        for c in init + containers:
            if c.state == "running":
                h = proc.adopt(c.pid, c.pid_start)
                if h is None:
                    alive = False
                else:
                    handles[c.name] = h
        netns_ok = self.host_network or (
            bool(self.netns) and os.path.exists(netns_path(self.netns)))
        if alive and netns_ok and state.get("sandboxReady"):
            self.init, self.containers, self.handles = init, containers, handles
            self.sandbox_ready = True
            self.pod_ips = list(state.get("podIPs") or [])
            self.start_time = state.get("startTime")
            now = time.monotonic()
            # Readiness carries over from the reported status (no endpoint flaps because the
            # kubelet restarted); the probes go on from there.
            was_ready = {cs.get("name"): cs.get("ready") is True
                         for cs in api_status.get("containerStatuses") or []
                         if isinstance(cs, dict)}
            for c in self.containers:
                c.ready = False
                if c.state == "running":
                    self.run_started[c.name] = now
                    self._setup_probes(c, now, ready=was_ready.get(c.name, False),
                                       started=c.started)
                    c.ready = was_ready.get(c.name, False)
            log.info("pod %s: adopted %d running processes", self.key, len(handles))
            return
        log.info("pod %s: leftovers of a previous run are not adoptable; recreating", self.key)
        for h in handles.values():
            h.signal_group(signal.SIGKILL)
        for c in init + containers:
            proc.kill_recorded(c.pid, c.pid_start)
        self._teardown_sandbox()
        proc.remove_tree(self.dir)
        self.frozen = terminal
        self.start_time = api_status.get("startTime")

    # ------------------------------------------------------------------------------- sync

    def _step(self) -> None:
        if self.frozen:
            return
        if self.start_time is None:
            self.start_time = rfc3339()
        if self._phase() in TERMINAL_PHASES:
            if self.sandbox_ready and not self.host_network:
                log.info("pod %s finished; releasing its network", self.key)
                self._teardown_sandbox()
                self._save()
            return
        if not self.sandbox_ready:
            if time.monotonic() < self.next_sandbox_try:
                return
            self._create_sandbox()
            if not self.sandbox_ready:
                return
        for c in self.init:
            if c.succeeded:
                continue
            self._drive(c)
            if not c.succeeded:
                return
        for c in self.containers:
            self._drive(c)
        self._probe_all()

    def _drive(self, c: ContainerRuntime) -> None:
        """Move one container on: reap an exit, restart per restartPolicy, start it."""
        now = time.monotonic()
        if c.state == "running":
            if not self._reap(c, now):
                return
        policy = self.spec.get("restartPolicy") or "Always"
        if c.state == "terminated" or (c.state == "waiting" and c.last_terminated):
            code = c.exit_code if c.state == "terminated" else c.last_terminated.get("exitCode", 1)
            if self.terminating:
                return
            if c.init:
                restart = code != 0 and policy != "Never"
            else:
                restart = should_restart(policy, code if code is not None else 1)
            if not restart:
                return
            if c.state == "terminated":
                c.last_terminated = c.terminated_dict()
            wait = self.restart_at.get(c.name, 0.0) - now
            if wait > 0:
                if c.state != "waiting" or c.reason != "CrashLoopBackOff":
                    c.state, c.reason = "waiting", "CrashLoopBackOff"
                    c.message = (f"back-off {wait:.0f}s restarting failed container={c.name} "
                                 f"pod={self.name}_{self.namespace}({self.uid})")
                    self._event("Warning", "BackOff", "Back-off restarting failed container "
                                f"{c.name} in pod {self.name}_{self.namespace}({self.uid})")
                    self._save()
                return
            c.restart_count += 1
            self._start(c)
        elif c.state == "waiting" and not self.terminating:
            self._start(c)

    def _reap(self, c: ContainerRuntime, now: float) -> bool:
        """True when the container's process has exited (its record is updated)."""
        h = self.handles.get(c.name)
        code = h.poll() if h is not None else proc.ProcessHandle.UNKNOWN_EXIT
        if code is None:
            deadline = self.kill_at.get(c.name)
            if deadline is not None and now >= deadline and h is not None:
                h.signal_group(signal.SIGKILL)
            return False
        c.state, c.exit_code, c.finished_at = "terminated", code, rfc3339()
        c.reason = exit_reason(code) if (h is None or h.exit_known) else "ContainerStatusUnknown"
        c.message = "" if (h is None or h.exit_known) else \
            "The container could not be located when the pod was terminated"
        c.ready = c.started = False
        self.handles.pop(c.name, None)
        self.probes.pop(c.name, None)
        self.kill_at.pop(c.name, None)
        ran = now - self.run_started.pop(c.name, now)
        level = 0 if ran >= BACKOFF_RESET_AFTER else self.backoff_level.get(c.name, 0)
        initial, maximum = self.k.restart_backoff
        self.restart_at[c.name] = now + restart_delay(level, initial, maximum)
        self.backoff_level[c.name] = level + 1
        log.info("pod %s container %s (pid %s) exited with %d", self.key, c.name, c.pid, code)
        self._save()
        return True

    def _start(self, c: ContainerRuntime) -> None:
        cspec = self._cspec(c)
        env, problems = container_env(cspec, self.pod, pod_ips=self.pod_ips,
                                      node_ip=self.k.node_ip, base_env=self.k.base_env)
        for p in problems:
            log.warning("pod %s container %s: %s", self.key, c.name, p)
        argv = container_argv(cspec, env)
        now_s = rfc3339()
        c.message, c.exit_code, c.finished_at = "", None, None
        try:
            if not argv:
                raise OSError("no command: netplane runs host programs and has no image "
                              "entrypoint; set the container's command")
            wrapped = wrap_argv(argv, netns=self._exec_netns(), cgroup_procs=self.k.cgroup_procs)
            h = proc.spawn(wrapped, env=env, cwd=cspec.get("workingDir") or None,
                           log_path=os.path.join(self.dir, f"{c.name}.log"))
        except OSError as e:
            c.state, c.exit_code, c.reason = "terminated", 128, "StartError"
            c.message = str(e)
            c.started_at = c.finished_at = now_s
            c.pid = None
            self.restart_at[c.name] = time.monotonic() + restart_delay(
                self.backoff_level.get(c.name, 0), *self.k.restart_backoff)
            self.backoff_level[c.name] = self.backoff_level.get(c.name, 0) + 1
            log.warning("pod %s container %s failed to start: %s", self.key, c.name, e)
            self._event("Warning", "Failed", f"Error: {e}")
            self._save()
            return
        now = time.monotonic()
        self.handles[c.name] = h
        c.state, c.reason, c.started_at = "running", "", now_s
        c.pid, c.pid_start, c.container_id = h.pid, h.start_time, f"netplane://{h.pid}"
        c.ready = False
        self.run_started[c.name] = now
        self._setup_probes(c, now)
        c.started = "startup" not in self.probes.get(c.name, {})
        log.info("pod %s container %s started (pid %d): %s", self.key, c.name, h.pid,
                 " ".join(argv))
        self._save()

    # ----------------------------------------------------------------------------- probes

    def _setup_probes(self, c: ContainerRuntime, now: float, *, ready: bool | None = None,
                      started: bool | None = None) -> None:
        """Fresh probe states for a (re)started container; `ready`/`started` seed them for an
        adopted one."""
        if c.init:
            return
        cspec = self._cspec(c)
        probes: dict[str, ProbeState] = {}
        for kind, field in (("startup", "startupProbe"), ("liveness", "livenessProbe"),
                            ("readiness", "readinessProbe")):
            try:
                probe = parse_probe(cspec.get(field), cspec, liveness=kind != "readiness")
            except ProbeError as e:
                log.warning("pod %s container %s: %s: %s", self.key, c.name, field, e)
                self._event("Warning", "Unhealthy", f"{kind.capitalize()} probe errored: {e}")
                continue
            if probe is not None:
                # liveness starts healthy, readiness and startup start undecided
                initial = {"liveness": True, "readiness": ready or None,
                           "startup": started or None}[kind]
                probes[kind] = ProbeState(probe, now, initial=initial)
        self.probes[c.name] = probes

    def _probe_all(self) -> None:
        for c in self.containers:
            if c.state != "running" or c.name in self.kill_at:
                continue
            probes = self.probes.get(c.name, {})
            startup = probes.get("startup")
            if startup is not None and startup.result is not True:
                self._probe(c, "startup", startup)
                if startup.result is True:
                    c.started = True
                elif startup.result is False:
                    self._kill_container(c, "failed startup probe")
                continue
            c.started = True
            liveness = probes.get("liveness")
            if liveness is not None:
                self._probe(c, "liveness", liveness)
                if liveness.result is False:
                    self._kill_container(c, "failed liveness probe")
                    continue
            readiness = probes.get("readiness")
            if readiness is not None:
                self._probe(c, "readiness", readiness)
                c.ready = readiness.result is True
            else:
                c.ready = True

    def _probe(self, c: ContainerRuntime, kind: str, state: ProbeState) -> None:
        now = time.monotonic()
        if not state.due(now):
            return
        res = self._run_probe(c, state)
        changed = state.record(res, time.monotonic())
        if not res.ok and (changed or state.failures == 1):
            self._event("Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {res.message}")
        if changed:
            log.info("pod %s container %s: %s probe now %s (%s)", self.key, c.name, kind,
                     "succeeding" if state.result else "failing", res.message)

    def _run_probe(self, c: ContainerRuntime, state: ProbeState) -> ProbeResult:
        probe = state.probe
        if probe.kind == "exec":
            cspec = self._cspec(c)
            env, _ = container_env(cspec, self.pod, pod_ips=self.pod_ips,
                                   node_ip=self.k.node_ip, base_env=self.k.base_env)
            argv = wrap_argv(probe.command, netns=self._exec_netns(),
                             cgroup_procs=self.k.cgroup_procs)
            return exec_check(argv, probe.timeout, env=env, cwd=cspec.get("workingDir"))
        host = probe.host or (self.pod_ips[0] if self.pod_ips else self.k.node_ip or "127.0.0.1")
        if probe.kind == "tcp":
            fn = partial(tcp_check, host, probe.port, probe.timeout)
        else:
            fn = partial(http_check, host, probe.port, probe.path, probe.timeout,
                         scheme=probe.scheme, headers=probe.headers)
        return run_in_netns(self.k.node_netns, fn, probe.timeout + 1.0)

    def _kill_container(self, c: ContainerRuntime, why: str) -> None:
        h = self.handles.get(c.name)
        if h is None:
            return
        log.info("pod %s container %s %s; restarting it", self.key, c.name, why)
        self._event("Normal", "Killing", f"Container {c.name} {why}, will be restarted")
        c.ready = False
        h.signal_group(signal.SIGTERM)
        self.kill_at[c.name] = time.monotonic() + grace_period({"spec": self.spec})

    # ---------------------------------------------------------------------------- sandbox

    def _create_sandbox(self) -> None:
        if self.host_network:
            self.pod_ips = [self.k.node_ip] if self.k.node_ip else []
            self.sandbox_ready = True
            self._save()
            return
        assert self.netns is not None
        try:
            ips = create_sandbox(self.k.cni, self.pod, self.netns, dns_ip=self.k.dns_ip,
                                 cluster_domain=self.k.cluster_domain,
                                 host_resolv=self.k.host_resolv_conf())
        except (NetplaneError, OSError) as e:
            self.sandbox_failures += 1
            initial, maximum = self.k.sandbox_backoff
            delay = min(maximum, initial * 2 ** min(self.sandbox_failures - 1, 20))
            self.next_sandbox_try = time.monotonic() + delay
            message = f"Failed to create pod sandbox: {e}"
            log.warning("pod %s: %s; retrying in %.1fs", self.key, message, delay)
            self._event("Warning", "FailedCreatePodSandBox", message[:1000])
            return
        self.pod_ips = ips
        self.sandbox_ready = True
        self.sandbox_failures = 0
        log.info("pod %s: sandbox %s ready with %s", self.key, self.netns, ", ".join(ips))
        self._save()

    def _teardown_sandbox(self) -> None:
        """CNI DEL (retried), delete the netns and /etc/netns/<netns>. Idempotent."""
        self.sandbox_ready = False
        if not self.host_network and self.netns:
            teardown_sandbox(self.k.cni, self.uid, self.netns, self.key)

    # --------------------------------------------------------------------------- deletion

    def _signal_all(self, sig: int) -> None:
        for c in self._running():
            h = self.handles.get(c.name)
            if h is not None:
                h.signal_group(sig)

    def _step_deletion(self) -> bool:
        """One step of graceful deletion; True once the pod is gone."""
        now = time.monotonic()
        grace = grace_period(self.pod)
        if not self.terminating:
            self.terminating = True
            self.grace_seen = grace
            self.kill_deadline = now + grace
            log.info("pod %s: deleting (grace %.0fs): SIGTERM to %d processes", self.key, grace,
                     len(self._running()))
            self._signal_all(signal.SIGTERM)
            self._save()
        elif self.grace_seen is not None and grace < self.grace_seen:
            self.grace_seen = grace
            self.kill_deadline = min(self.kill_deadline, now + grace)
        for c in self._all():
            if c.state == "running":
                self._reap(c, now)
        self._probe_all()
        running = self._running()
        if running:
            if now >= self.kill_deadline and self.killed_at is None:
                log.info("pod %s: grace period over; SIGKILL to %d processes", self.key,
                         len(running))
                self._signal_all(signal.SIGKILL)
                self.killed_at = now
            if self.killed_at is None or now - self.killed_at < KILL_WAIT:
                return False
            log.warning("pod %s: processes survived SIGKILL for %.0fs; tearing down anyway",
                        self.key, KILL_WAIT)
        self._report()
        self._teardown_sandbox()
        proc.remove_tree(self.dir)
        self._delete_from_api()
        self.finished = True
        return True

    def _delete_from_api(self) -> None:
        self.k.api.delete_pod(self.uid, self.namespace, self.name)

    def _teardown(self, grace: float) -> None:
        """Stop every process (SIGTERM, `grace`, SIGKILL) and remove the sandbox and files."""
        self.terminating = True
        if self._running():
            self._signal_all(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self._running() and time.monotonic() < deadline:
                for c in self._running():
                    self._reap(c, time.monotonic())
                if self._running():
                    time.sleep(0.05)
            if self._running():
                self._signal_all(signal.SIGKILL)
                deadline = time.monotonic() + KILL_WAIT
                while self._running() and time.monotonic() < deadline:
                    for c in self._running():
                        self._reap(c, time.monotonic())
                    if self._running():
                        time.sleep(0.05)
        self._teardown_sandbox()
        proc.remove_tree(self.dir)
        self.finished = True
        log.info("pod %s: torn down", self.key)

    # ----------------------------------------------------------------------------- status

    def _report(self) -> None:
        if self.frozen:
            return
        rt = PodRuntime(pod_ips=self.pod_ips, host_ip=self.k.node_ip, start_time=self.start_time,
                        sandbox_ready=self.sandbox_ready, terminating=self.terminating,
                        init=self.init, containers=self.containers)
        status = pod_status(self.pod, rt, previous=self.last_status or {})
        if status == self.last_status:
            return
        self.k.api.put_status(self.uid, self.namespace, self.name, status)
        self.last_status = status
