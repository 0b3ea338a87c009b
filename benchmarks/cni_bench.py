"""Benchmark (issue 4): netplane's CNI against Debian's reference plugins, side by side in one run.

    .venv/bin/python benchmarks/cni_bench.py [--pods 50] [--parallel 20] [--runs 3] [--iperf-runs 5]
        [--only all|latency|iperf] [--out DIR]

Brings up a 2-node sandbox (`netplane up`, cluster "cnib", default CNI netplane: an agent per node)
and measures, as the runtime sees it (the sandbox's CniRunner: libcni/containerd behaviour, each
plugin run through `ip netns exec <node>`):

1. ADD and DEL latency, p50/p99 over N pods, serially and `--parallel` at a time:
   * netplane: a conflist with only the netplane plugin: the shim `netplane.cni.shim_path()` picks
     (the C shim when built, as `make setup` does; else the bash one), installed in a bin dir of
     this run, forwarding to the node's running agent over its unix socket;
   * reference: Debian's bridge + host-local (/usr/lib/cni), bridge `npbench0` with its own
     subnet, host-local dataDir in a temp dir, in the SAME node namespace.
   Pod namespaces are made here with the sandbox's prefix (np-cnib-p-<hex>, so `netplane down`
   would find leftovers) and deleted after each measurement. The two plugins alternate which goes
   first from run to run. For netplane, the agent's own handle time comes from its /metrics
   histogram (netplane_cni_request_duration_seconds sum/count, delta over each phase). netplane
   answers a DEL before its veth is deleted (netplane.cni.teardown): after the DELs the script
   waits until the agent reports no teardown running, and reports how long the teardowns took
   (netplane_cni_teardown_duration_seconds) and when the last one ended; the agent's CPU for DEL
   includes them.
2. Where one netplane ADD spends its time: the exec prefix, the shim (the C one and, for
   comparison, the bash one on the same agent), the agent's handler (its /metrics), and the
   handler split into IPAM, the namespace socket, the netlink requests and the waits (veth
   oper-up, the pod ARPing its gateway), from the same library code (netplane.cni.ipam / wiring)
   run in a child process inside the node namespace with timers wrapped around those functions
   (nothing in the product is changed).
3. iperf3 TCP throughput (one stream, `--iperf-seconds` each): pod on node1 → pod on node2 (VXLAN
   overlay), node1 → node2 (underlay), the underlay again with the pods' MSS (separates the MTU from
   the encapsulation) and, for context, pod → pod on the same node; the paths alternate run by run.
   One thing at a time (2 CPUs); CPU per GB of the whole machine from /proc/stat. The pods are
   measured once the agents have admitted them to the overlay fast path (when it is loaded), and
   its packet counters over the runs are recorded.

Others may be running tests on the same machine: before each measurement the script waits (within
`--quiet-budget` seconds in all) for the CPUs to be mostly idle, and records what it saw. A netplane
ADD refused with "try again later" (11) is retried at once with a new sandbox ID and counted.

Median and min–max over `--runs` runs go to benchmarks/results/cni_bench.{json,md} (`--out DIR`:
DIR/cni_bench.{json,md} instead, for experiments that must not replace the recorded results).
`--only latency` runs parts 1-2, `--only iperf` only part 3 (the table then has only those
sections). Needs root.
Not a test: run by hand. Everything it creates is removed at the end (netplane down included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (  # noqa: E402
    Quiet, children_cpu_seconds, machine_cpu_seconds, pct, process_cpu_seconds, rss_mb, summary,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NETPLANE = str(Path(sys.executable).with_name("netplane"))
CLUSTER = "cnib"
REF_BIN_DIR = "/usr/lib/cni"
REF_BRIDGE = "npbench0"
REF_SUBNET = "10.99.0.0/24"  # outside the cluster CIDR (10.244.0.0/16): no clash with netplane's pods
PROFILE_SUBNET = "10.98.0"  # the in-process profile's pods (10.98.0.10..), gateway 10.98.0.1
POD_MTU = 1450
IPERF_PORT = 5299
MAX_ADD_ATTEMPTS = 20
RUN_DIR = "/run/netplane"


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)





def other_sandboxes() -> dict:
    others = sorted(e for e in os.listdir(RUN_DIR) if e != CLUSTER) if os.path.isdir(RUN_DIR) else []
    return {"other_sandboxes": others}


QUIET = Quiet(0, context=other_sandboxes)



# -- the sandbox ----------------------------------------------------------------------------------


class Sandbox:
    def __init__(self, tmp: str):
        from netplane.sandbox.names import ClusterNames

        self.names = ClusterNames(CLUSTER)
        self.tmp = tmp
        self.pod_netns: set[str] = set()

    def up(self) -> None:
        topo = os.path.join(self.tmp, "cnib.yaml")
        Path(topo).write_text(f"name: {CLUSTER}\nnodes:\n  - name: node1\n  - name: node2\n")
        t0 = time.perf_counter()
        sh([NETPLANE, "up", topo, "--name", CLUSTER, "--timeout", "120"])
        self.up_s = time.perf_counter() - t0
        self.state = json.loads(Path(self.names.state_file).read_text())

    def down(self) -> None:
        subprocess.run([NETPLANE, "down", "--name", CLUSTER], capture_output=True, text=True)

    def node_ns(self, node: str) -> str:
        return self.names.node(node)

    def node_ip(self, node: str) -> str:
        return self.state["nodes"][node]["ip"]

    def node_dir(self, node: str) -> str:
        return self.names.node_dir(node)

    def socket(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "agent.sock")

    def shim(self, node: str) -> str:
        """The shim this run installed for `node` (make_runners)."""
        return os.path.join(self.tmp, f"np-{node}", "bin", "netplane")

    # pod namespaces, named as the sandbox names them so teardown finds leftovers
    def make_pods(self, count: int) -> list[str]:
        out = []
        for _ in range(count):
            ns = self.names.pod(str(uuid.uuid4()))
            sh(["ip", "netns", "add", ns])
            self.pod_netns.add(ns)
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            out.append(ns)
        return out

    def drop_pods(self, namespaces: list[str]) -> None:
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            self.pod_netns.discard(ns)

    def metrics_text(self, node: str) -> str:
        """The node agent's Prometheus /metrics page."""
        return sh(["ip", "netns", "exec", self.node_ns(node), "curl", "-sf", "-m", "5",
                   f"http://{self.node_ip(node)}:9650/metrics"]).stdout

    def agent_metrics(self, node: str) -> dict[str, tuple[float, int]]:
        """{verb: (sum seconds, count)} of netplane_cni_request_duration_seconds, plus "TEARDOWN":
        the same of netplane_cni_teardown_duration_seconds (a deferred DEL's veth deletion and IP
        release after its answer) and "PENDING": (teardowns still running, 0)."""
        text = self.metrics_text(node)
        out: dict[str, list] = {}
        for m in re.finditer(r'^netplane_cni_request_duration_seconds_(sum|count)\{verb="(\w+)"\} (\S+)$',
                             text, re.M):
            kind, verb, value = m.groups()
            out.setdefault(verb, [0.0, 0])[0 if kind == "sum" else 1] = float(value)
        for m in re.finditer(r"^netplane_cni_teardown_duration_seconds_(sum|count) (\S+)$", text, re.M):
            out.setdefault("TEARDOWN", [0.0, 0])[0 if m.group(1) == "sum" else 1] = float(m.group(2))
        pending = re.search(r"^netplane_cni_deferred_deletes (\S+)$", text, re.M)
        out["PENDING"] = [float(pending.group(1)) if pending else 0.0, 0]
        return {k: (v[0], int(v[1])) for k, v in out.items()}

    def fastpath_packets(self, node: str) -> dict[str, int]:
        """The agent's overlay fast path counters (netplane_overlay_fastpath_packets_total by what);
        empty when the fast path is not loaded."""
        text = self.metrics_text(node)
        return {m.group(1): int(float(m.group(2))) for m in
                re.finditer(r'^netplane_overlay_fastpath_packets_total\{what="(\w+)"\} (\S+)$', text, re.M)}

    def wait_fastpath_pods(self, wanted: dict[str, int], timeout: float = 10.0) -> None:
        """Until each node's agent has admitted that many pods to the overlay fast path (about a
        second after their ADD); at once when the fast path is not loaded."""
        deadline = time.monotonic() + timeout
        for node, count in wanted.items():
            while True:
                text = self.metrics_text(node)
                m = re.search(r"^netplane_overlay_fastpath_pods (\S+)$", text, re.M)
                if m is None or float(m.group(1)) >= count:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{node}: the overlay fast path admitted {m.group(1)} of {count} pods")
                time.sleep(0.1)

    def wait_teardowns(self, node: str, timeout: float = 60.0) -> None:
        """Until the agent has no deferred DEL teardown running (so the next phase starts clean)."""
        deadline = time.monotonic() + timeout
        while self.agent_metrics(node)["PENDING"][0]:
            if time.monotonic() > deadline:
                raise SystemExit(f"the agent on {node} still has DEL teardowns running after {timeout:.0f} s")
            time.sleep(0.01)

    def spooled(self, node: str) -> int:
        """DELs the shim recorded because the agent was unreachable (files in its spool dir)."""
        spool = os.path.join(self.node_dir(node), "cni-pending-del")
        return len([e for e in os.listdir(spool) if not e.startswith(".")]) if os.path.isdir(spool) else 0

    def agent_pid(self, node: str) -> int | None:
        want = f"--node-name\0{node}\0--kubeconfig\0{self.names.state_dir}/"
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "netplane\0agent\0" in cmdline and want in cmdline:
                return int(pid)
        return None



def metrics_delta(before: dict, after: dict, verb: str) -> float | None:
    """Mean agent handle time (ms) of `verb` between two scrapes."""
    s0, c0 = before.get(verb, (0.0, 0))
    s1, c1 = after.get(verb, (0.0, 0))
    return (s1 - s0) / (c1 - c0) * 1000 if c1 > c0 else None


# -- runners --------------------------------------------------------------------------------------


def install_shim(tmp: str, node: str) -> str:
    """The shim the sandbox installs (netplane.cni.shim_path()), as `netplane` in a bin dir of
    this run, by temp file + rename as the installers do; returns the bin dir."""
    import shutil

    import netplane.cni

    bin_dir = os.path.join(tmp, f"np-{node}", "bin")
    os.makedirs(bin_dir, exist_ok=True)
    shutil.copyfile(netplane.cni.shim_path(), os.path.join(bin_dir, ".netplane.tmp"))
    os.chmod(os.path.join(bin_dir, ".netplane.tmp"), 0o755)
    os.replace(os.path.join(bin_dir, ".netplane.tmp"), os.path.join(bin_dir, "netplane"))
    return bin_dir


def shim_kind() -> str:
    import netplane.cni

    return "C" if netplane.cni.shim_path().endswith("-c") else "bash"


def make_runners(sb: Sandbox, node: str, tmp: str):
    from netplane.sandbox.cni_runner import CniRunner

    prefix = ["ip", "netns", "exec", sb.node_ns(node)]
    bin_dir = install_shim(tmp, node)
    np_conf = os.path.join(tmp, f"np-{node}", "net.d")
    os.makedirs(np_conf)
    Path(np_conf, "10-netplane.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "netplane",
        "plugins": [{"type": "netplane", "socket": sb.socket(node)}],
    }))
    netplane = CniRunner(np_conf, [bin_dir, REF_BIN_DIR],
                         os.path.join(tmp, f"np-{node}", "cache"), exec_prefix=prefix)
    ref_conf = os.path.join(tmp, f"ref-{node}", "net.d")
    os.makedirs(ref_conf)
    Path(ref_conf, "10-bridge.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "refbridge",
        "plugins": [{"type": "bridge", "bridge": REF_BRIDGE, "isGateway": True, "ipMasq": False,
                     "hairpinMode": True, "mtu": POD_MTU,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": REF_SUBNET}]],
                              "routes": [{"dst": "0.0.0.0/0"}],
                              "dataDir": os.path.join(tmp, f"ref-{node}", "ipam")}}],
    }))
    reference = CniRunner(ref_conf, [REF_BIN_DIR], os.path.join(tmp, f"ref-{node}", "cache"), exec_prefix=prefix)
    return netplane, reference


def cni_args(cid: str, i: int) -> dict[str, str]:
    return {"K8S_POD_NAMESPACE": "bench", "K8S_POD_NAME": f"pod-{i}", "K8S_POD_INFRA_CONTAINER_ID": cid,
            "K8S_POD_UID": cid[:36]}


def timed_calls(calls: list, parallel: int) -> list[float]:
    def one(call) -> float:
        t = time.perf_counter()
        call()
        return (time.perf_counter() - t) * 1000

    if parallel <= 1:
        return [one(c) for c in calls]
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, calls))


def children_cpu_ms() -> float:
    """CPU time of this process's waited-for descendants (the plugins and all they ran)."""
    return children_cpu_seconds() * 1000


def proc_cpu_ms(pid: int | None) -> float:
    """utime + stime of a process (all threads) and of its waited-for children (pyroute2's forks)."""
    if pid is None:
        return 0.0
    return process_cpu_seconds([pid], waited_children=True) * 1000


def measure(sb: Sandbox, runner, count: int, parallel: int, node: str | None) -> dict:
    """ADD `count` pods (`parallel` at a time), then DEL them; ms per call. `node`: scrape that
    node's agent metrics around each phase (netplane)."""
    from netplane.sandbox.cni_runner import CniError

    nss = sb.make_pods(count)
    cids = [secrets.token_hex(32) for _ in nss]
    added: list[str] = []
    results: dict[int, dict] = {}
    retries = [0] * count
    errors: list[str] = []

    def add(i: int):
        def call():
            # A "try again later" (11) is retried at once with a new sandbox ID, as the kubelet
            # retries RunPodSandbox (it would back off for seconds); the time counts for the pod.
            for attempt in range(MAX_ADD_ATTEMPTS):
                if attempt:
                    cids[i] = secrets.token_hex(32)
                try:
                    results[i] = runner.add(cids[i], f"/var/run/netns/{nss[i]}", "eth0", cni_args(cids[i], i))
                    added.append(cids[i])
                    return
                except CniError as e:
                    if e.code != 11 or attempt == MAX_ADD_ATTEMPTS - 1:
                        raise
                    retries[i] += 1
                    errors.append(e.msg)
        return call

    def delete(i: int):
        return lambda: runner.delete(cids[i], f"/var/run/netns/{nss[i]}", "eth0", cni_args(cids[i], i))

    agent = sb.agent_pid(node) if node else None
    if node and agent is None:
        raise SystemExit(f"cannot find the netplane agent of {node}")
    try:
        m0 = sb.agent_metrics(node) if node else {}
        spooled0 = sb.spooled(node) if node else 0
        c0, a0, w0 = children_cpu_ms(), proc_cpu_ms(agent), time.perf_counter()
        add_ms = timed_calls([add(i) for i in range(count)], parallel)
        c1, a1, w1 = children_cpu_ms(), proc_cpu_ms(agent), time.perf_counter()
        m1 = sb.agent_metrics(node) if node else {}
        ips = {r["ips"][0]["address"] for r in results.values()}
        if len(ips) != count:
            raise SystemExit(f"expected {count} distinct pod IPs, got {len(ips)}")
        c1b, a1b, w1b = children_cpu_ms(), proc_cpu_ms(agent), time.perf_counter()
        del_ms = timed_calls([delete(i) for i in range(count)], parallel)
        c2, w2 = children_cpu_ms(), time.perf_counter()
        added.clear()
        if node:  # netplane answers a DEL before its veth is gone (netplane.cni.teardown)
            sb.wait_teardowns(node)
        a2, w3 = proc_cpu_ms(agent), time.perf_counter()
        m2 = sb.agent_metrics(node) if node else {}
        spooled = sb.spooled(node) if node else 0
    finally:
        for cid in list(added):  # a failure half-way: release what was added
            i = cids.index(cid)
            try:
                delete(i)()
            except Exception as e:  # noqa: BLE001
                print(f"cleanup DEL {cid[:12]}: {e}", file=sys.stderr)
        sb.drop_pods(nss)
    out = {"add_ms": add_ms, "del_ms": del_ms, "add_wall_s": w1 - w0, "del_wall_s": w2 - w1b,
           "del_settled_s": w3 - w1b,
           "add_pods_retried": sum(1 for r in retries if r), "add_failed_attempts": sum(retries),
           "add_errors": sorted(set(errors)), "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]), "dels_spooled": spooled - spooled0 if node else 0,
           "plugin_cpu_add_ms": (c1 - c0) / count, "plugin_cpu_del_ms": (c2 - c1b) / count}
    if node:
        out["agent_add_ms"] = metrics_delta(m0, m1, "ADD")
        out["agent_del_ms"] = metrics_delta(m1, m2, "DEL")
        out["agent_teardown_ms"] = metrics_delta(m1, m2, "TEARDOWN") or 0.0
        out["agent_cpu_add_ms"] = (a1 - a0) / count
        out["agent_cpu_del_ms"] = (a2 - a1b) / count
    return out


def latency(sb: Sandbox, runners: dict, args) -> dict:
    modes = {"serial": 1, f"{args.parallel}_at_a_time": args.parallel}
    raw: dict = {m: {"netplane": [], "reference": []} for m in modes}
    # warm-up: the bridge gets created, plugin versions get cached, files are in the page cache
    for impl in ("netplane", "reference"):
        measure(sb, runners[impl], 2, 1, None)
    for r in range(args.runs):
        for mode, parallel in modes.items():
            order = ("netplane", "reference") if r % 2 == 0 else ("reference", "netplane")
            for impl in order:
                QUIET.wait(f"latency run {r + 1} {mode} {impl}")
                res = measure(sb, runners[impl], args.pods, parallel, "node1" if impl == "netplane" else None)
                raw[mode][impl].append(res)
                print(f"  run {r + 1} {mode:>14} {impl:>9}: ADD p50 {pct(res['add_ms'], 50):6.1f} ms "
                      f"p99 {pct(res['add_ms'], 99):6.1f} | DEL p50 {pct(res['del_ms'], 50):6.1f} ms "
                      f"p99 {pct(res['del_ms'], 99):6.1f}"
                      + (f" | {res['add_pods_retried']} ADDs retried ({res['add_failed_attempts']} failed attempts)"
                         if res["add_failed_attempts"] else "")
                      + f" | plugin CPU/call ADD {res['plugin_cpu_add_ms']:.1f} DEL {res['plugin_cpu_del_ms']:.1f}"
                      + (f" | agent ADD {res['agent_add_ms']:.1f} DEL {res['agent_del_ms']:.1f} ms"
                         f" (teardown {res['agent_teardown_ms']:.1f} ms after it),"
                         f" CPU/call {res['agent_cpu_add_ms']:.1f} / {res['agent_cpu_del_ms']:.1f}"
                         if impl == "netplane" else ""), flush=True)
    out: dict = {}
    for mode, per in raw.items():
        out[mode] = {"parallel": modes[mode]}
        for impl, runs in per.items():
            d = {}
            for verb in ("add", "del"):
                d[f"{verb}_p50_ms"] = summary([pct(x[f"{verb}_ms"], 50) for x in runs])
                d[f"{verb}_p99_ms"] = summary([pct(x[f"{verb}_ms"], 99) for x in runs])
                d[f"{verb}_mean_ms"] = summary([statistics.fmean(x[f"{verb}_ms"]) for x in runs])
                d[f"{verb}_wall_s"] = summary([x[f"{verb}_wall_s"] for x in runs])
                d[f"plugin_cpu_{verb}_ms"] = summary([x[f"plugin_cpu_{verb}_ms"] for x in runs])
                if impl == "netplane":
                    d[f"agent_{verb}_mean_ms"] = summary([x[f"agent_{verb}_ms"] for x in runs])
                    d[f"agent_cpu_{verb}_ms"] = summary([x[f"agent_cpu_{verb}_ms"] for x in runs])
            if impl == "netplane":
                d["teardown_mean_ms"] = summary([x["agent_teardown_ms"] for x in runs])
                d["del_settled_s"] = summary([x["del_settled_s"] for x in runs])
            d["add_pods_retried"] = summary([x["add_pods_retried"] for x in runs])
            d["add_failed_attempts"] = summary([x["add_failed_attempts"] for x in runs])
            d["add_errors"] = sorted({e for x in runs for e in x["add_errors"]})
            d["dels_spooled"] = summary([x["dels_spooled"] for x in runs])
            d["loadavg_1m"] = [x["loadavg_1m"] for x in runs]
            out[mode][impl] = d
        for verb in ("add", "del"):
            for q in ("p50", "p99"):
                key = f"{verb}_{q}_ms"
                out[mode].setdefault("ratio", {})[f"{verb}_{q}"] = \
                    out[mode]["netplane"][key]["median"] / out[mode]["reference"][key]["median"]
    return out


# -- breakdown of one netplane ADD ----------------------------------------------------------------


SPAWN_CPU: list[float] = [0.0]  # CPU ms of the last spawn_ms (the process and all it ran)


def spawn_ms(argv: list[str], env: dict | None = None, stdin: bytes = b"") -> tuple[float, bytes, bytes, int]:
    """Time a process as CniRunner._spawn runs it (Popen + communicate)."""
    c = children_cpu_ms()
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)
    out, err = proc.communicate(stdin, timeout=30)
    ms = (time.perf_counter() - t) * 1000
    SPAWN_CPU[:] = [children_cpu_ms() - c]
    return ms, out, err, proc.returncode


def shim_env(cmd: str, cid: str, ns: str, bin_dir: str) -> dict:
    return {**os.environ, "CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{ns}",
            "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=x",
            "CNI_PATH": f"{bin_dir}:{REF_BIN_DIR}"}


def shim_conf(sb: Sandbox, node: str) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "netplane", "type": "netplane",
                       "socket": sb.socket(node)}).encode()


BASH_SHIM = str(HERE.parent / "cni" / "shim" / "netplane")


def breakdown(sb: Sandbox, runners: dict, args) -> dict:
    node = "node1"
    prefix = ["ip", "netns", "exec", sb.node_ns(node)]
    bin_dir = os.path.dirname(sb.shim(node))
    n = args.breakdown_iterations
    rows: dict[str, list[float]] = {k: [] for k in ("agent_add", "agent_del", "runner_add", "runner_del",
                                                    "agent_add_bash")}
    cpu: dict[str, list[float]] = {}

    def rec(name: str, ms: float) -> None:
        rows.setdefault(name, []).append(ms)
        cpu.setdefault(name, []).append(SPAWN_CPU[0])

    def shim_add_del(shim: str, label: str, i: int) -> None:
        (ns,) = sb.make_pods(1)
        cid = secrets.token_hex(32)
        try:
            m0 = sb.agent_metrics(node)
            ms, out, err, rc = spawn_ms([*prefix, shim], shim_env("ADD", cid, ns, bin_dir), shim_conf(sb, node))
            if rc != 0:
                raise SystemExit(f"{label} ADD failed: {out!r} {err!r}")
            m1 = sb.agent_metrics(node)
            rec(f"{label}_add", ms)
            rows["agent_add" if label == "shim" else "agent_add_bash"].append(metrics_delta(m0, m1, "ADD"))
            ms, out, err, rc = spawn_ms([*prefix, shim], shim_env("DEL", cid, ns, bin_dir), shim_conf(sb, node))
            if rc != 0:
                raise SystemExit(f"{label} DEL failed: {out!r} {err!r}")
            m2 = sb.agent_metrics(node)
            rec(f"{label}_del", ms)
            if label == "shim":
                rows["agent_del"].append(metrics_delta(m1, m2, "DEL"))
            sb.wait_teardowns(node)  # the next call starts on an idle node
        finally:
            sb.drop_pods([ns])

    for i in range(n):
        rec("python_popen_true", spawn_ms(["/bin/true"])[0])
        rec("exec_prefix_true", spawn_ms([*prefix, "/bin/true"])[0])
        rec("shim_version", spawn_ms([*prefix, sb.shim(node)], {**os.environ, "CNI_COMMAND": "VERSION"})[0])
        # the installed shim alone (no CniRunner around it), then the bash shim on the same agent
        shim_add_del(sb.shim(node), "shim", i)
        shim_add_del(BASH_SHIM, "bash_shim", i)
        # the same through CniRunner (what the latency table measures), one pod
        (ns,) = sb.make_pods(1)
        cid = secrets.token_hex(32)
        try:
            t = time.perf_counter()
            runners["netplane"].add(cid, f"/var/run/netns/{ns}", "eth0", cni_args(cid, i))
            rows["runner_add"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            runners["netplane"].delete(cid, f"/var/run/netns/{ns}", "eth0", cni_args(cid, i))
            rows["runner_del"].append((time.perf_counter() - t) * 1000)
        finally:
            sb.drop_pods([ns])
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    cpu_mean = {k: statistics.fmean(v) for k, v in cpu.items()}
    # the agent side, piece by piece, in a child process inside the node namespace
    nss = sb.make_pods(n)
    try:
        proc = subprocess.run([*prefix, sys.executable, __file__, "--child-profile",
                               os.path.join(sb.tmp, "profile-ipam"), *nss],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise SystemExit(f"profile child failed:\n{proc.stderr}")
        profile = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        sb.drop_pods(nss)
    pid = sb.agent_pid(node)
    return {"iterations": n, "shim": shim_kind(), "median_ms": med, "runs_ms": rows, "cpu_mean_ms": cpu_mean,
            "agent_profile": profile, "agent_rss_mb": rss_mb([pid]) if pid is not None else None, "agent_threads": _threads(pid)}


def _threads(pid: int | None) -> int | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return None


def child_profile(ipam_dir: str, namespaces: list[str]) -> dict:
    """Runs inside the node namespace (as the agent does): the agent's ADD/DEL steps with
    netplane.cni's own functions, timers wrapped around the expensive parts."""
    from netplane.cni import rtnl, wiring
    from netplane.cni.ipam import IpamStore

    spans: dict[str, float] = {}

    def add_span(name: str, ms: float) -> None:
        spans[name] = spans.get(name, 0.0) + ms

    depth = [0]  # netlink requests inside a timed wait count for the wait

    class TimedRtnl(rtnl.Rtnl):
        @classmethod
        def open(cls, netns_fd=None):
            t = time.perf_counter()
            try:
                return super().open(netns_fd)
            finally:
                add_span("netlink_socket_in_pod_netns_thread" if netns_fd is not None else "netlink_socket_own_netns",
                         (time.perf_counter() - t) * 1000)

        def request(self, msg_type, flags, body, what):
            if depth[0]:
                return super().request(msg_type, flags, body, what)
            t = time.perf_counter()
            try:
                return super().request(msg_type, flags, body, what)
            finally:
                words = what.split()
                add_span("nl_" + "_".join(words[:2] if words[0] in ("add", "set", "get", "replace") else words[:1]),
                         (time.perf_counter() - t) * 1000)

    real_sysctls = wiring._write_sysctls

    def timed_sysctls(*a, **kw):
        t = time.perf_counter()
        try:
            return real_sysctls(*a, **kw)
        finally:
            add_span("sysctls", (time.perf_counter() - t) * 1000)

    real_wait = wiring._wait

    def timed_wait(what, probe, deadline):
        t = time.perf_counter()
        depth[0] += 1
        try:
            return real_wait(what, probe, deadline)
        finally:
            depth[0] -= 1
            add_span("wait_gateway_arp" if "resolving" in what else "wait_veth_oper_up",
                     (time.perf_counter() - t) * 1000)

    wiring.Rtnl = TimedRtnl
    wiring._write_sysctls = timed_sysctls
    wiring._wait = timed_wait

    def fork_ms() -> float:
        t = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return (time.perf_counter() - t) * 1000

    store = IpamStore(ipam_dir, f"{PROFILE_SUBNET}.0/24")
    rows: dict[str, list[float]] = {}

    def row(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    cids = [secrets.token_hex(32) for _ in namespaces]
    wired: list[int] = []
    try:
        for i, ns in enumerate(namespaces):
            spans.clear()
            t = time.perf_counter()
            alloc = store.allocate(cids[i], "eth0")
            row("ipam_allocate", (time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            wiring.wire_pod(f"/var/run/netns/{ns}", "eth0", cids[i], alloc.ip, alloc.gateway, POD_MTU)
            total = (time.perf_counter() - t) * 1000
            wired.append(i)
            row("wire_pod_total", total)
            for name, ms in spans.items():
                row(f"wire_{name}", ms)
            row("wire_rest_python", total - sum(spans.values()))
            row("bare_os_fork_waitpid", fork_ms())
        for i in list(wired):
            spans.clear()
            t = time.perf_counter()
            wiring.unwire_pod(f"/var/run/netns/{namespaces[i]}", "eth0", cids[i])
            row("unwire_pod_total", (time.perf_counter() - t) * 1000)
            for name, ms in spans.items():
                row(f"unwire_{name}", ms)
            wired.remove(i)
            t = time.perf_counter()
            store.release(cids[i], "eth0")
            row("ipam_release", (time.perf_counter() - t) * 1000)
    finally:
        for i in wired:
            wiring.unwire_pod(None, "eth0", cids[i])
            store.release(cids[i], "eth0")
    return {"median_ms": {k: statistics.median(v) for k, v in rows.items()}, "runs_ms": rows,
            "note": f"{len(namespaces)} pods wired in sequence (IPAM holds 1..{len(namespaces)} IPs), "
                    f"then unwired; own process (RSS {rss_mb([os.getpid()]):.0f} MB), not the agent's"}


# -- iperf3 ---------------------------------------------------------------------------------------


def busy_cpu_s() -> float:
    """Busy CPU time of the whole machine (all CPUs)."""
    return machine_cpu_seconds()[0]


def iperf(server_ns: str, client_ns: str, server_ip: str, seconds: int, extra: tuple = ()) -> tuple[float, float]:
    """(Gbit/s received, CPU seconds of the whole machine per GB), one TCP stream, client → server."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:  # wait until it listens
            ss = sh(["ip", "netns", "exec", server_ns, "ss", "-Hltn", f"sport = :{IPERF_PORT}"]).stdout
            if ss.strip():
                break
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"iperf3 server in {server_ns} did not start")
            time.sleep(0.05)
        c0 = busy_cpu_s()
        out = sh(["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-p", str(IPERF_PORT),
                  "-t", str(seconds), "-J", *extra], timeout=seconds + 30).stdout
        cpu = busy_cpu_s() - c0
        received = json.loads(out)["end"]["sum_received"]
        return received["bits_per_second"] / 1e9, cpu / (received["bytes"] / 1e9)
    finally:
        try:
            server.wait(3)
        except subprocess.TimeoutExpired:
            server.kill()  # by PID: the server we started (ip netns exec execs iperf3 itself)
            server.wait()


def throughput(sb: Sandbox, node_runners: dict, args) -> dict:
    pods = {"a": ("node1", None), "b": ("node2", None), "c": ("node1", None)}
    made: dict[str, tuple[str, str, str]] = {}  # key -> (netns, cid, ip)
    try:
        for key, (node, _) in pods.items():
            (ns,) = sb.make_pods(1)
            cid = secrets.token_hex(32)
            res = node_runners[node].add(cid, f"/var/run/netns/{ns}", "eth0", cni_args(cid, 0))
            made[key] = (ns, cid, res["ips"][0]["address"].split("/")[0])
        a, b, c = made["a"], made["b"], made["c"]
        sb.wait_fastpath_pods({"node1": 2, "node2": 1})
        sh(["ip", "netns", "exec", a[0], "ping", "-c", "1", "-W", "2", b[2]])  # the overlay works
        pod_mtu = int(sh(["ip", "-n", a[0], "-o", "link", "show", "eth0"]).stdout.split(" mtu ")[1].split()[0])
        cases = {
            "underlay_node1_to_node2": (sb.node_ns("node2"), sb.node_ns("node1"), sb.node_ip("node2"), ()),
            "overlay_pod_node1_to_pod_node2": (b[0], a[0], b[2], ()),
            # the underlay with the overlay's segment size: separates the MTU from the encapsulation
            "underlay_same_mss_as_pods": (sb.node_ns("node2"), sb.node_ns("node1"), sb.node_ip("node2"),
                                          ("-M", str(pod_mtu - 40))),
            "same_node_pod_to_pod": (c[0], a[0], c[2], ()),
        }
        raw: dict[str, list[float]] = {k: [] for k in cases}
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        fast0 = {n: sb.fastpath_packets(n) for n in ("node1", "node2")}
        for r in range(args.iperf_runs):
            for name, (srv, cli, ip, extra) in cases.items():
                QUIET.wait(f"iperf3 run {r + 1} {name}")
                gbps, cpu_per_gb = iperf(srv, cli, ip, args.iperf_seconds, extra)
                raw[name].append(gbps)
                cpu[name].append(cpu_per_gb)
                print(f"  run {r + 1} {name}: {gbps:.2f} Gbit/s, {cpu_per_gb:.3f} CPU-s/GB", flush=True)
        out = {k: summary(v) for k, v in raw.items()}
        out["cpu_s_per_gb"] = {k: summary(v) for k, v in cpu.items()}
        # Whether the agents' overlay fast path carried the pod traffic (packets over all runs).
        out["fastpath_packets"] = {n: {k: v - fast0[n].get(k, 0) for k, v in sb.fastpath_packets(n).items()}
                                   for n in ("node1", "node2")}
        out["ratio_overlay_to_underlay"] = (out["overlay_pod_node1_to_pod_node2"]["median"]
                                            / out["underlay_node1_to_node2"]["median"])
        # each overlay run against the underlay run just before it (same machine conditions)
        out["ratio_per_run"] = summary([o / u for o, u in zip(raw["overlay_pod_node1_to_pod_node2"],
                                                               raw["underlay_node1_to_node2"])])
        out["runs"] = args.iperf_runs
        out["pod_mtu"] = pod_mtu
        out["seconds"] = args.iperf_seconds
        out["vxlan_device"] = subprocess.run(["ip", "-n", sb.node_ns("node1"), "-d", "link", "show", "np.vx1"],
                                             capture_output=True, text=True).stdout.strip()
        out["vxlan_offloads"] = _offloads(sb.node_ns("node1"), "np.vx1")
        out["pod_eth0_offloads"] = _offloads(a[0], "eth0")
        out["underlay_eth0_offloads"] = _offloads(sb.node_ns("node1"), "eth0")
        return out
    finally:
        for key, (ns, cid, _) in made.items():
            try:
                node_runners[pods[key][0]].delete(cid, f"/var/run/netns/{ns}", "eth0", cni_args(cid, 0))
            except Exception as e:  # noqa: BLE001
                print(f"cleanup DEL {cid[:12]}: {e}", file=sys.stderr)
            sb.drop_pods([ns])


def _agent_log_stats(sb: Sandbox, node: str) -> dict:
    try:
        text = Path(sb.node_dir(node), "agent.log").read_text(errors="replace")
    except OSError:
        return {}
    lines = text.splitlines()
    # each traceback's last line (the exception), and the log line just before it
    exceptions = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                j += 1
            exceptions.append(((lines[i - 1][:200] if i else ""), (lines[j][:300] if j < len(lines) else "")))
    return {"replayed_spooled_dels": text.count("replayed a DEL recorded"),
            "cni_failures_logged": len(re.findall(r"CNI \w+ \S+ failed", text)),
            "tracebacks": len(exceptions),
            "distinct_exceptions": sorted({f"{before} => {exc}" for before, exc in exceptions})}


def _offloads(netns: str, dev: str) -> dict[str, str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "ethtool", "-k", dev], capture_output=True, text=True).stdout
    keys = ("tx-checksumming", "scatter-gather", "tcp-segmentation-offload", "generic-segmentation-offload",
            "generic-receive-offload", "tx-udp_tnl-segmentation", "rx-udp-gro-forwarding")
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines()) if k.strip() in keys}


# -- main -----------------------------------------------------------------------------------------


def leftovers(sb: Sandbox) -> list[str]:
    left = [ns for ns in sh(["ip", "netns", "list"]).stdout.split() if ns.startswith(sb.names.prefix)]
    if os.path.exists(sb.names.state_dir):
        left.append(sb.names.state_dir)
    return left


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--iperf-seconds", type=int, default=5)
    ap.add_argument("--iperf-runs", type=int, default=5,
                    help="runs per iperf3 path (the paths alternate, so drift hits all of them)")
    ap.add_argument("--breakdown-iterations", type=int, default=15)
    ap.add_argument("--quiet-budget", type=float, default=150,
                    help="seconds in all to wait for an idle machine before measurements")
    ap.add_argument("--only", choices=("all", "latency", "iperf"), default="all",
                    help="latency: ADD/DEL latency and the ADD breakdown; iperf: throughput only")
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="directory for cni_bench.{json,md} (default: %(default)s)")
    ap.add_argument("--child-profile", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_profile:
        print(json.dumps(child_profile(args.child_profile[0], args.child_profile[1:])))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("needs root (creates network namespaces)")
    started = time.perf_counter()
    global QUIET
    QUIET = Quiet(args.quiet_budget, context=other_sandboxes)
    result: dict = {
        "shim": shim_kind(),
        "pods": args.pods, "parallel": args.parallel, "runs": args.runs, "only": args.only,
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
                    "reference_plugins": _ref_version()},
    }
    with tempfile.TemporaryDirectory(prefix="np-cnibench-") as tmp:
        sb = Sandbox(tmp)
        try:
            print("netplane up (2 nodes, cni: netplane)…", flush=True)
            sb.up()
            result["sandbox_up_s"] = sb.up_s
            np1, ref1 = make_runners(sb, "node1", tmp)
            np2, _ = make_runners(sb, "node2", tmp)
            runners = {"netplane": np1, "reference": ref1}
            if args.only in ("all", "latency"):
                print(f"ADD/DEL latency, {args.pods} pods, serial and {args.parallel} at a time…", flush=True)
                result["latency"] = latency(sb, runners, args)
                print("breakdown of one netplane ADD…", flush=True)
                QUIET.wait("breakdown")
                result["breakdown"] = breakdown(sb, runners, args)
                result["agent_log_node1"] = _agent_log_stats(sb, "node1")
            if args.only in ("all", "iperf"):
                print("iperf3…", flush=True)
                result["iperf3"] = throughput(sb, {"node1": np1, "node2": np2}, args)
        finally:
            for ns in list(sb.pod_netns):
                sb.drop_pods([ns])
            subprocess.run(["ip", "-n", sb.node_ns("node1"), "link", "del", REF_BRIDGE], capture_output=True)
            sb.down()
            result["leftovers"] = leftovers(sb)
    result["elapsed_s"] = time.perf_counter() - started
    result["machine"]["quiet_checks"] = QUIET.log
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cni_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    table = render(result)
    (args.out / "cni_bench.md").write_text(table)
    print(table)
    if result["leftovers"]:
        print(f"LEFTOVERS: {result['leftovers']}", file=sys.stderr)
        return 1
    return 0


def _ref_version() -> str:
    try:
        out = sh(["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"]).stdout
        return f"containernetworking-plugins {out}"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(r: dict) -> str:
    def cell(s: dict, fmt: str = ".1f") -> str:
        return f"{s['median']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"

    def met(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [
        "# CNI benchmark: netplane vs reference bridge + host-local"
        + (f", median (min–max) of {r['runs']} runs" if "latency" in r else ""),
        "",
        f"{r['machine']['cpus']} CPUs, Linux {r['machine']['kernel']}, {r['machine']['reference_plugins']}; "
        f"load average at start {' '.join(r['machine']['loadavg_at_start'])}. Every call timed end to end as "
        "the runtime sees it (sandbox CniRunner, plugin run via `ip netns exec <node>`); "
        f"{r['pods']} pods per case. netplane's plugin: the {r.get('shim', '?')} shim "
        "(`netplane.cni.shim_path()`, installed by this script in a bin dir of its own).",
        "",
    ]
    if r.get("only", "all") != "all":
        lines += [f"Partial run (`--only {r['only']}`): the other sections were not measured.", ""]
    if "latency" in r:
        lines += _render_latency(r, cell, met)
    if "iperf3" in r:
        lines += _render_iperf(r, cell, met)
    lines += [
        "Machine state before each measurement (others run tests on this 2-CPU machine): CPU busy "
        + ", ".join(f"{q['cpu_busy']:.0%}" for q in r['machine'].get('quiet_checks', []))
        + f"; other sandboxes seen: {sorted({o for q in r['machine'].get('quiet_checks', []) for o in q['other_sandboxes']}) or 'none'}.",
        "",
        f"Sandbox up {r['sandbox_up_s']:.1f} s; whole benchmark {r['elapsed_s']:.0f} s; leftovers after "
        f"`netplane down`: {', '.join(r['leftovers']) or 'none'}.",
        "",
    ]
    return "\n".join(lines)


def _render_latency(r: dict, cell, met) -> list[str]:
    lat = r["latency"]
    lines = [
        "## ADD / DEL latency (ms)",
        "",
        "| case | verb | netplane p50 | reference p50 | ratio p50 | netplane p99 | reference p99 | ratio p99 "
        "| agent handle (mean) | target p50 ≤ 1.0× |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, d in lat.items():
        label = "serial" if d["parallel"] == 1 else f"{d['parallel']} at a time"
        for verb in ("add", "del"):
            n, ref, ratio = d["netplane"], d["reference"], d["ratio"]
            lines.append(
                f"| {label} | {verb.upper()} | {cell(n[f'{verb}_p50_ms'])} | {cell(ref[f'{verb}_p50_ms'])} | "
                f"{ratio[f'{verb}_p50']:.2f}× | {cell(n[f'{verb}_p99_ms'])} | {cell(ref[f'{verb}_p99_ms'])} | "
                f"{ratio[f'{verb}_p99']:.2f}× | {cell(n[f'agent_{verb}_mean_ms'])} | {met(ratio[f'{verb}_p50'] <= 1.0)} |")
    fails = []
    for mode, d in lat.items():
        label = "serial" if d["parallel"] == 1 else f"{d['parallel']} at a time"
        for impl in ("netplane", "reference"):
            x = d[impl]
            if x["add_failed_attempts"]["max"]:
                fails.append(f"{label}, {impl}: {x['add_pods_retried']['runs']} of {r['pods']} ADDs per run needed "
                             f"retries ({x['add_failed_attempts']['runs']} failed attempts; "
                             f"{'; '.join(x['add_errors'])[:300]})")
    if fails:
        lines += ["", "**ADD failures** (each retried at once with a new sandbox ID; the retries' time counts "
                  "for the pod): " + " — ".join(fails) + "."]
    else:
        lines += ["", "ADD failures: none in this run (every ADD succeeded at the first attempt)."]
    lines += ["", "CPU per call (ms, median of runs): the plugin processes (everything the runtime execs: "
              f"`ip netns exec` and the {r['breakdown']['shim']} shim for netplane; bridge + host-local for the "
              "reference) "
              "and, for netplane, the agent process (all its threads and any forked children).", "",
              "| case | verb | netplane plugin procs | netplane agent | netplane total | reference plugin procs |",
              "|---|---|---|---|---|---|"]
    for mode, d in lat.items():
        label = "serial" if d["parallel"] == 1 else f"{d['parallel']} at a time"
        for verb in ("add", "del"):
            n, ref = d["netplane"], d["reference"]
            pc, ac = n[f"plugin_cpu_{verb}_ms"]["median"], n[f"agent_cpu_{verb}_ms"]["median"]
            lines.append(f"| {label} | {verb.upper()} | {pc:.1f} | {ac:.1f} | {pc + ac:.1f} | "
                         f"{ref[f'plugin_cpu_{verb}_ms']['median']:.1f} |")
    lines += ["", "Wall time for all pods of a case (s, median): " + "; ".join(
        f"{'serial' if d['parallel'] == 1 else str(d['parallel']) + ' at a time'} {verb.upper()} netplane "
        f"{d['netplane'][f'{verb}_wall_s']['median']:.2f} / reference {d['reference'][f'{verb}_wall_s']['median']:.2f}"
        for d in lat.values() for verb in ("add", "del")) + ".", "",
        "netplane answers a DEL once it is recorded in the agent's DEL spool; the veth deletion and the IP "
        "release follow on the agent's workers (netplane.cni.teardown). The time until they are done, which "
        "the DEL rows above do not include: " + "; ".join(
            f"{'serial' if d['parallel'] == 1 else str(d['parallel']) + ' at a time'}: teardown "
            f"{cell(d['netplane']['teardown_mean_ms'])} ms after each answer (mean), every pod torn down "
            f"{d['netplane']['del_settled_s']['median']:.2f} s after the first DEL "
            f"(reference DELs done in {d['reference']['del_wall_s']['median']:.2f} s)"
            for d in lat.values()) + ".", ""]

    b = r["breakdown"]
    m = b["median_ms"]
    p = b["agent_profile"]["median_ms"]
    lines += [
        f"## Where one netplane ADD goes (median of {b['iterations']} serial calls on an idle node; "
        f"installed shim: {b['shim']})",
        "",
        "| piece | wall ms | CPU ms | how measured |",
        "|---|---|---|---|",
    ]
    c = b.get("cpu_mean_ms", {})

    def brow(label: str, wall: float, key: str | None, how: str) -> str:
        return f"| {label} | {wall:.1f} | {c[key]:.1f} | {how} |" if key in c else f"| {label} | {wall:.1f} | | {how} |"

    ind = "&nbsp;&nbsp;"
    lines += [
        brow("CniRunner ADD, end to end", m["runner_add"], None, "as in the latency table, one pod at a time"),
        brow(f"shim ADD alone ({b['shim']} shim: exec prefix + shim + agent)", m["shim_add"], "shim_add",
             "Popen of `ip netns exec node shim`; CPU = the shim's process tree"),
        brow("→ agent handle (`netplane_cni_request_duration_seconds`)", m["agent_add"], None, "/metrics sum/count delta"),
        brow("→ everything outside the agent's handler", m["shim_add"] - m["agent_add"], None, "shim ADD − agent handle"),
        brow(f"{ind}Popen of /bin/true from Python", m["python_popen_true"], "python_popen_true", "baseline"),
        brow(f"{ind}`ip netns exec node /bin/true`", m["exec_prefix_true"], "exec_prefix_true",
             "the exec prefix (the reference pays it too)"),
        brow(f"{ind}shim VERSION (answered by the shim itself)", m["shim_version"], "shim_version",
             "exec prefix + shim start"),
        brow("bash shim ADD alone, same agent (for comparison)", m["bash_shim_add"], "bash_shim_add",
             f"cni/shim/netplane: bash + curl (+ jq on odd input); agent handle {m['agent_add_bash']:.1f} ms"),
        brow("CniRunner's own work (conf load, cache write)", m["runner_add"] - m["shim_add"], None,
             "runner ADD − shim ADD (≈ 0 within noise)"),
        brow("DEL: shim alone", m["shim_del"], "shim_del", f"runner DEL {m['runner_del']:.1f} ms, agent handle "
             f"{m['agent_del']:.1f} ms; bash shim DEL {m['bash_shim_del']:.1f} ms"),
        "",
    ]
    ref_add = lat["serial"]["reference"]["add_p50_ms"]["median"]
    outside = m["shim_add"] - m["agent_add"]
    lines += [
        f"Reading: one serial netplane ADD ≈ {m['shim_add']:.1f} ms = the agent's handler {m['agent_add']:.1f} + "
        f"exec prefix, shim and HTTP {outside:.1f}; the whole reference ADD is {ref_add:.1f} ms (p50 of the "
        f"serial latency runs). The bash shim costs {m['bash_shim_add'] - m['shim_add']:.1f} ms more per ADD.",
        "",
    ]
    lines += [
        "Agent side, the same library calls in a child process in the node namespace "
        f"({b['agent_profile']['note']}; the agent itself: RSS {b['agent_rss_mb']:.0f} MB, "
        f"{b['agent_threads']} threads):",
        "",
        "| step | ms (median) |",
        "|---|---|",
    ]
    order = ["ipam_allocate", "wire_pod_total"]
    order += sorted((k for k in p if k.startswith("wire_") and k != "wire_pod_total"), key=lambda k: -p[k])
    order += ["unwire_pod_total"] + sorted((k for k in p if k.startswith("unwire_") and k != "unwire_pod_total"),
                                           key=lambda k: -p[k])
    order += ["ipam_release", "bare_os_fork_waitpid"]
    for k in order:
        if k in p:
            indent = "&nbsp;&nbsp;" if k.startswith(("wire_", "unwire_")) and not k.endswith("_total") else ""
            lines.append(f"| {indent}{k} | {p[k]:.2f} |")
    return lines + [""]


def _render_iperf(r: dict, cell, met) -> list[str]:
    io = r["iperf3"]
    ratio = io["ratio_overlay_to_underlay"]
    return [
        f"## iperf3 TCP, one stream, {io['seconds']} s per run, median (min–max) of {io['runs']} runs (Gbit/s)",
        "",
        "| path | Gbit/s | ratio to underlay | CPU-s per GB (whole machine) | target |",
        "|---|---|---|---|---|",
        f"| node1 → node2, underlay (MTU 1500) | {cell(io['underlay_node1_to_node2'], '.2f')} | 1.00× | "
        f"{io['cpu_s_per_gb']['underlay_node1_to_node2']['median']:.3f} | |",
        f"| pod on node1 → pod on node2, VXLAN overlay (pod MTU {io['pod_mtu']}) | "
        f"{cell(io['overlay_pod_node1_to_pod_node2'], '.2f')} | {ratio:.2f}× | "
        f"{io['cpu_s_per_gb']['overlay_pod_node1_to_pod_node2']['median']:.3f} | ≥ 0.9×: {met(ratio >= 0.9)} |",
        f"| node1 → node2, underlay, MSS {io['pod_mtu'] - 40} (the pods' segment size) | "
        f"{cell(io['underlay_same_mss_as_pods'], '.2f')} | "
        f"{io['underlay_same_mss_as_pods']['median'] / io['underlay_node1_to_node2']['median']:.2f}× | "
        f"{io['cpu_s_per_gb']['underlay_same_mss_as_pods']['median']:.3f} | |",
        f"| pod → pod on the same node (context) | {cell(io['same_node_pod_to_pod'], '.2f')} | "
        f"{io['same_node_pod_to_pod']['median'] / io['underlay_node1_to_node2']['median']:.2f}× | "
        f"{io['cpu_s_per_gb']['same_node_pod_to_pod']['median']:.3f} | |",
        "",
        f"Overlay ÷ underlay run by run (each overlay run against the underlay run just before it): median "
        f"{io['ratio_per_run']['median']:.2f}× ({io['ratio_per_run']['min']:.2f}–{io['ratio_per_run']['max']:.2f}).",
        "",
        "Overlay fast path (tc eBPF, `--overlay-fastpath`), packets over the iperf3 runs: " + (
            "; ".join(f"{n}: " + ", ".join(f"{k} {v:,}" for k, v in c.items()) for n, c in io["fastpath_packets"].items())
            if any(io.get("fastpath_packets", {}).values()) else "not loaded (the node forwarded everything)") + ".",
        "",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
