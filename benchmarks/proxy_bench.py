"""Benchmark (issue 5): netplane's iptables proxy vs kube-proxy's iptables layout, side by side.

    .venv/bin/python benchmarks/proxy_bench.py [--services 1000,10000] [--endpoints 10]
        [--runs 3] [--connects 2000] [--mode nft|legacy]

Per scale and run, in network namespaces this script creates and always deletes:
    npb-client (a "pod", 10.244.1.2) ── npb-node (the node: iptables, the proxy) ── npb-server
    (10.244.2.2 plus the live endpoint addresses of the measured services); the node starts with
    only a CNI-style masquerade rule, so conntrack and NAT are on before any proxy rule exists
  * anchor: kube-proxy's layout for the same services (benchmarks/kube_proxy_layout.py) loaded
    with one `iptables-restore` (full sync time); its partial-sync restore after one
    EndpointSlice change (KUBE-SERVICES is rewritten in full); connect() latency from the client
    pod to the *last-listed* ClusterIP and directly to the pod IP;
  * netplane: `netplane apiserver` (inside npb-node) holding the same Services and
    EndpointSlices, `netplane proxy --backend iptables` inside npb-node: time of its full sync
    (its own metric), connect() latency the same way, the time from one EndpointSlice PATCH at
    the apiserver until a client sees the new endpoint answer (real packets: the probe service's
    endpoint moves from a closed port, which answers RST, to a listening one), and its RSS.
Results (median and min–max over runs) go to benchmarks/results/proxy_bench.{json,md}. Not a
test: run by hand on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kube_proxy_layout import BenchService, full_ruleset, partial_ruleset  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NETPLANE = str(Path(sys.executable).with_name("netplane"))
NODE, CLIENT, SERVER = "npb-node", "npb-client", "npb-server"
CLUSTER_CIDR = "10.244.0.0/16"
CLIENT_IP, SERVER_IP = "10.244.1.2", "10.244.2.2"
LIVE_EPS = tuple(f"10.244.2.{10 + i}" for i in range(10))
OPEN_PORT, CLOSED_PORT = 8080, 9
CNI_MASQ = ("-s", CLUSTER_CIDR, "!", "-d", CLUSTER_CIDR, "-m", "comment", "--comment", "cni masquerade",
            "-j", "MASQUERADE")


# -- namespaces -----------------------------------------------------------------------------------


def sh(*cmd: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


def nsx(ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *cmd, **kw)


def build_netns() -> None:
    teardown_netns()
    for ns in (NODE, CLIENT, SERVER):
        sh("ip", "netns", "add", ns)
        nsx(ns, "ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "npb-c0", "netns", NODE, "type", "veth", "peer", "name", "eth0", "netns", CLIENT)
    sh("ip", "link", "add", "npb-s0", "netns", NODE, "type", "veth", "peer", "name", "eth0", "netns", SERVER)
    nsx(NODE, "ip", "addr", "add", "10.244.1.1/24", "dev", "npb-c0")
    nsx(NODE, "ip", "addr", "add", "10.244.2.1/24", "dev", "npb-s0")
    nsx(NODE, "ip", "link", "set", "npb-c0", "up")
    nsx(NODE, "ip", "link", "set", "npb-s0", "up")
    nsx(NODE, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    # A node always has its CNI's masquerade rule, so conntrack and NAT run for every new
    # connection before any proxy rule exists; without it, "direct" would measure a node with no
    # connection tracking at all (~30% faster) and charge that to the proxy.
    nsx(NODE, "iptables", "-t", "nat", "-A", "POSTROUTING", *CNI_MASQ)
    nsx(CLIENT, "ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0")
    nsx(CLIENT, "ip", "link", "set", "eth0", "up")
    nsx(CLIENT, "ip", "route", "add", "default", "via", "10.244.1.1")
    nsx(SERVER, "ip", "addr", "add", f"{SERVER_IP}/24", "dev", "eth0")
    for ep in LIVE_EPS:
        nsx(SERVER, "ip", "addr", "add", f"{ep}/32", "dev", "eth0")
    nsx(SERVER, "ip", "link", "set", "eth0", "up")
    nsx(SERVER, "ip", "route", "add", "default", "via", "10.244.2.1")


def teardown_netns() -> None:
    for ns in (NODE, CLIENT, SERVER):
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", ns, check=False)


# -- services -------------------------------------------------------------------------------------


def make_services(n: int, endpoints: int) -> list[BenchService]:
    """n services, 10.96.0.10 + i; the last one and the probe (n // 2) have live endpoints."""
    base = int(ipaddress.IPv4Address("10.96.0.10"))
    out = []
    for i in range(n):
        if i == n - 1:
            eps = LIVE_EPS[:endpoints]
        else:
            eps = tuple(f"10.245.{(i >> 8) & 255}.{i & 255}" if e == 0 else
                        f"10.{246 + e % 8}.{(i >> 8) & 255}.{i & 255}" for e in range(endpoints))
        out.append(BenchService(f"bench-{i % 10}", f"svc-{i}", str(ipaddress.IPv4Address(base + i)),
                                80, eps, OPEN_PORT))
    return out


def probe_index(n: int) -> int:
    return n // 2


# -- measurements shared by both sides -------------------------------------------------------------

SERVER_CODE = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", %d)); s.listen(4096)
while True:
    c, _ = s.accept(); c.close()
""" % OPEN_PORT

CONNECT_CODE = r"""
import json, socket, struct, sys, time
target, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lat = []
for _ in range(n):
    s = socket.socket(); s.settimeout(2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST: no TIME_WAIT pile-up
    t = time.perf_counter_ns(); s.connect((target, port)); lat.append((time.perf_counter_ns() - t) / 1e3); s.close()
print(json.dumps(lat))
"""

WAIT_OPEN_CODE = r"""
import socket, struct, sys, time
target, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
print("ready", flush=True)
while time.monotonic() < deadline:
    s = socket.socket(); s.settimeout(0.2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        s.connect((target, port)); print(repr(time.monotonic()), flush=True); break
    except OSError:
        pass
    finally:
        s.close()
else:
    print("timeout", flush=True)
"""


def start_server() -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", SERVER, sys.executable, "-c", SERVER_CODE],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while nsx(SERVER, "ss", "-Hltn", f"sport = :{OPEN_PORT}").stdout.strip() == "":
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start listening")
        time.sleep(0.05)
    return proc


def connect_latency(target: str, n: int) -> dict:
    out = nsx(CLIENT, sys.executable, "-c", CONNECT_CODE, target, "80" if target.startswith("10.96.") else
              str(OPEN_PORT), str(n)).stdout
    lat = sorted(json.loads(out))
    return {"p50_us": statistics.median(lat), "p99_us": lat[int(len(lat) * 0.99) - 1], "n": len(lat)}


def baseline_latency(n: int) -> dict:
    """Pod to pod through the node before any proxy rule exists: the "direct" of the target."""
    nsx(CLIENT, sys.executable, "-c", CONNECT_CODE, LIVE_EPS[0], str(OPEN_PORT), "50")  # warm up, ARP
    return connect_latency(LIVE_EPS[0], n)


def latency_pair(vip: str, n: int, direct: dict) -> dict:
    """connect() to the ClusterIP with the rules loaded, against `direct` (no proxy rules).
    Also pod-to-pod with the rules loaded: every new connection walks the nat chains, so a
    linear KUBE-SERVICES taxes traffic that never touches a Service too."""
    nsx(CLIENT, sys.executable, "-c", CONNECT_CODE, vip, "80", "50")
    svc = connect_latency(vip, n)
    direct_loaded = connect_latency(LIVE_EPS[0], n)
    return {"service": svc, "direct": direct, "direct_with_rules": direct_loaded,
            "ratio_p50": svc["p50_us"] / direct["p50_us"], "ratio_p99": svc["p99_us"] / direct["p99_us"],
            "direct_tax_p50": direct_loaded["p50_us"] / direct["p50_us"]}


def timed_restore(text: str, mode: str, noflush: bool = False) -> float:
    cmd = ["ip", "netns", "exec", NODE, f"iptables-{mode}-restore", "-w", "5"] + (["--noflush"] if noflush else [])
    t = time.perf_counter()
    proc = subprocess.run(cmd, input=text, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"restore failed: {proc.stderr[:500]}")
    return elapsed


# -- the anchor -----------------------------------------------------------------------------------


def run_anchor(n: int, endpoints: int, connects: int, mode: str) -> dict:
    build_netns()
    server = start_server()
    try:
        services = make_services(n, endpoints)
        probe = services[probe_index(n)]
        direct = baseline_latency(connects)
        text = full_ruleset(services, CLUSTER_CIDR)
        # kube-proxy writes with --noflush and so keeps the CNI's rule; a flushing restore (the
        # reference's measurement, and fast with nft) must carry it along to keep the same node.
        text = text.replace("\nCOMMIT\n*filter", f"\n-A POSTROUTING {' '.join(CNI_MASQ[:8])} "
                            f'"cni masquerade" -j MASQUERADE\nCOMMIT\n*filter', 1)
        full_s = timed_restore(text, mode)
        lat = latency_pair(services[-1].cluster_ip, connects, direct)
        # one EndpointSlice change of the probe service: one endpoint replaced
        changed = BenchService(probe.namespace, probe.name, probe.cluster_ip, probe.port,
                               probe.endpoints[:-1] + ("10.250.0.1",), probe.target_port)
        services[probe_index(n)] = changed
        partial = partial_ruleset(services, changed, probe.endpoints, CLUSTER_CIDR)
        partial_s = timed_restore(partial, mode, noflush=True)
        return {"full_sync_s": full_s, "rules": text.count("\n-A "), "restore_lines": text.count("\n"),
                "partial_restore_s": partial_s, "partial_lines": partial.count("\n"), "latency": lat}
    finally:
        server.kill()
        server.wait()
        teardown_netns()


# -- netplane --------------------------------------------------------------------------------------


def populate(kubeconfig: str, n: int, endpoints: int) -> None:
    """Runs inside npb-node (the apiserver listens on its loopback): Node, Services, slices."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from netplane.k8s import Client, load_kubeconfig

    cfg = load_kubeconfig(kubeconfig)
    c = Client(cfg)
    c.create("/api/v1/nodes", {"metadata": {"name": "bench-node"},
                               "status": {"addresses": [{"type": "InternalIP", "address": "10.244.1.1"}]}})
    services = make_services(n, endpoints)
    for ns in sorted({s.namespace for s in services}):
        c.create("/api/v1/namespaces", {"metadata": {"name": ns}})
    local = threading.local()
    probe = probe_index(n)

    def make(i: int) -> None:
        if not hasattr(local, "c"):
            local.c = Client(cfg)
        s = services[i]
        local.c.create(f"/api/v1/namespaces/{s.namespace}/services", {
            "metadata": {"name": s.name},
            "spec": {"clusterIP": s.cluster_ip, "ports": [{"name": "http", "port": 80, "targetPort": OPEN_PORT}]}})
        eps = (SERVER_IP,) if i == probe else s.endpoints
        port = CLOSED_PORT if i == probe else OPEN_PORT
        local.c.create(f"/apis/discovery.k8s.io/v1/namespaces/{s.namespace}/endpointslices", {
            "metadata": {"name": f"{s.name}-1", "labels": {"kubernetes.io/service-name": s.name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "other"} for ip in eps]})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, range(n)))


def patch_probe(kubeconfig: str, n: int, port: int) -> None:
    from netplane.k8s import Client, load_kubeconfig

    s = make_services(n, 1)[probe_index(n)]
    client = Client(load_kubeconfig(kubeconfig))
    print(repr(time.monotonic()), flush=True)  # the change starts now (after our own start-up)
    client.patch(
        f"/apis/discovery.k8s.io/v1/namespaces/{s.namespace}/endpointslices/{s.name}-1",
        {"ports": [{"name": "http", "port": port, "protocol": "TCP"}]}, patch_type="merge")


def metrics(port: int) -> dict[str, float]:
    text = nsx(NODE, "curl", "-sf", "-m", "5", f"http://127.0.0.1:{port}/metrics", check=False).stdout
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_netplane(n: int, endpoints: int, connects: int, mode: str, changes: int) -> dict:
    build_netns()
    server = start_server()
    tmp = tempfile.mkdtemp(prefix="npb-")
    kubeconfig = os.path.join(tmp, "kubeconfig")
    procs: list[subprocess.Popen] = [server]
    try:
        log = open(os.path.join(tmp, "apiserver.log"), "w")
        api = subprocess.Popen(["ip", "netns", "exec", NODE, NETPLANE, "apiserver", "--listen", "127.0.0.1:0",
                                "--write-kubeconfig", kubeconfig], stdout=log, stderr=log)
        procs.append(api)
        deadline = time.time() + 30
        while not os.path.exists(kubeconfig) and time.time() < deadline:
            time.sleep(0.05)
        direct = baseline_latency(connects)
        nsx(NODE, sys.executable, __file__, "_populate", kubeconfig, str(n), str(endpoints))
        plog = open(os.path.join(tmp, "proxy.log"), "w")
        t0 = time.perf_counter()
        proxy = subprocess.Popen(["ip", "netns", "exec", NODE, NETPLANE, "proxy", "--backend", "iptables",
                                  "--kubeconfig", kubeconfig, "--node-name", "bench-node",
                                  "--cluster-cidr", CLUSTER_CIDR, "--iptables-mode", mode,
                                  "--metrics-addr", "127.0.0.1:10249", "--healthz-addr", "127.0.0.1:10256"],
                                 stdout=plog, stderr=plog)
        procs.append(proxy)
        while True:
            m = metrics(10249)
            if m.get("kubeproxy_sync_proxy_rules_last_timestamp_seconds", 0) > 0:
                break
            if proxy.poll() is not None or time.perf_counter() - t0 > 600:
                raise RuntimeError(f"proxy did not sync: {Path(plog.name).read_text()[-2000:]}")
            time.sleep(0.1)
        first_sync_s = time.perf_counter() - t0
        full_s = m.get("kubeproxy_sync_full_proxy_rules_duration_seconds_sum", float("nan"))
        lat = latency_pair(make_services(n, endpoints)[-1].cluster_ip, connects, direct)
        probe_vip = make_services(n, 1)[probe_index(n)].cluster_ip
        change_ms = []
        # kube-proxy's rate limit (--min-sync-period, 1 s) holds a change that comes less than
        # 1 s after the previous sync; the latency runs above take only ~0.3 s, so without this
        # pause the first change also measures that wait (~0.5 s). Each change is measured on
        # a quiet proxy (one change, no rate limit), as the target describes.
        time.sleep(3.0)
        for _ in range(changes):
            waiter = subprocess.Popen(["ip", "netns", "exec", CLIENT, sys.executable, "-c", WAIT_OPEN_CODE,
                                       probe_vip, "80", "30"], stdout=subprocess.PIPE, text=True)
            assert waiter.stdout is not None
            waiter.stdout.readline()  # ready: it is failing (RST) in a loop now
            t_patch = float(nsx(NODE, sys.executable, __file__, "_patch", kubeconfig, str(n),
                                str(OPEN_PORT)).stdout.split()[0])
            line = waiter.stdout.readline().strip()
            waiter.wait()
            if line != "timeout":
                change_ms.append((float(line) - t_patch) * 1000)
            nsx(NODE, sys.executable, __file__, "_patch", kubeconfig, str(n), str(CLOSED_PORT))
            # The revert's own sync may wait out --min-sync-period (1 s after the previous sync);
            # start the next change only once that is over too, so each measured change meets a
            # quiet proxy (one change, no rate limit), as the target describes.
            time.sleep(3.0)
        m = metrics(10249)
        return {"first_sync_s": first_sync_s, "full_sync_s": full_s, "latency": lat,
                "change_to_programmed_ms": change_ms, "rss_mb": rss_mb(proxy.pid),
                "nat_rules": m.get('kubeproxy_sync_proxy_rules_iptables_total{table="nat"}'),
                "partial_sync_s_mean": (m.get("kubeproxy_sync_partial_proxy_rules_duration_seconds_sum", 0)
                                        / max(1, m.get("kubeproxy_sync_partial_proxy_rules_duration_seconds_count", 0)))}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        teardown_netns()
        shutil.rmtree(tmp, ignore_errors=True)


# -- report ---------------------------------------------------------------------------------------


def summary(values: list[float]) -> dict:
    values = [v for v in values if v == v]
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(s: dict, scale: float = 1.0, digits: int = 2) -> str:
    if s["median"] is None:
        return "n/a"
    return f"{s['median'] * scale:.{digits}f} ({s['min'] * scale:.{digits}f}–{s['max'] * scale:.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", default="1000,10000")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--connects", type=int, default=2000)
    ap.add_argument("--changes", type=int, default=5)
    ap.add_argument("--mode", default="nft", choices=["nft", "legacy"])
    args = ap.parse_args()
    results: dict = {"mode": args.mode, "endpoints": args.endpoints, "runs": args.runs, "scales": {}}
    for n in [int(x) for x in args.services.split(",")]:
        runs = []
        for r in range(args.runs):
            print(f"[{n} services] run {r + 1}/{args.runs}: kube-proxy layout", flush=True)
            anchor = run_anchor(n, args.endpoints, args.connects, args.mode)
            print(f"[{n} services] run {r + 1}/{args.runs}: netplane", flush=True)
            ours = run_netplane(n, args.endpoints, args.connects, args.mode, args.changes)
            runs.append({"anchor": anchor, "netplane": ours})
            print(json.dumps(runs[-1])[:600], flush=True)
        results["scales"][str(n)] = runs
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "proxy_bench.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "proxy_bench.md").write_text(render(results))
    print(render(results))


def render(results: dict) -> str:
    lines = [f"# proxy benchmark (iptables-{results['mode']}, {results['endpoints']} endpoints per service, "
             f"median (min–max) of {results['runs']} runs)", "",
             "| services | measure | netplane | kube-proxy layout (anchor) | ratio (netplane / anchor) |",
             "|---|---|---|---|---|"]
    for n, runs in results["scales"].items():
        a = [r["anchor"] for r in runs]
        p = [r["netplane"] for r in runs]
        full_a, full_p = summary([x["full_sync_s"] for x in a]), summary([x["full_sync_s"] for x in p])
        lines.append(f"| {n} | full sync (s) | {fmt(full_p)} | {fmt(full_a)} | "
                     f"{full_p['median'] / full_a['median']:.2f}× |")
        ch = summary([statistics.median(x["change_to_programmed_ms"]) for x in p if x["change_to_programmed_ms"]])
        pa = summary([x["partial_restore_s"] for x in a])
        lines.append(f"| {n} | one EndpointSlice change → programmed (ms) | {fmt(ch, 1, 1)} (PATCH to first "
                     f"packet answered) | {fmt(pa, 1000, 1)} (its partial iptables-restore alone) | "
                     f"{(ch['median'] or 0) / (pa['median'] * 1000):.2f}× |")
        for q in ("p50", "p99"):
            sp = summary([x["latency"][f"ratio_{q}"] for x in p])
            sa = summary([x["latency"][f"ratio_{q}"] for x in a])
            lines.append(f"| {n} | connect() {q} to the last ClusterIP ÷ direct to the pod | {fmt(sp)}× | "
                         f"{fmt(sa)}× | {sp['median'] / sa['median']:.2f}× |")
            us_p = summary([x["latency"]["service"][f"{q}_us"] for x in p])
            us_a = summary([x["latency"]["service"][f"{q}_us"] for x in a])
            lines.append(f"| {n} | connect() {q} to the last ClusterIP (µs) | {fmt(us_p, 1, 0)} | "
                         f"{fmt(us_a, 1, 0)} | {us_p['median'] / us_a['median']:.2f}× |")
        tp = summary([x["latency"]["direct_tax_p50"] for x in p])
        ta = summary([x["latency"]["direct_tax_p50"] for x in a])
        lines.append(f"| {n} | pod-to-pod connect() p50 with the rules loaded ÷ without | {fmt(tp)}× | "
                     f"{fmt(ta)}× | |")
        rss = summary([x["rss_mb"] for x in p])
        lines.append(f"| {n} | proxy RSS (MB) | {fmt(rss, 1, 0)} | n/a (kube-proxy not run) | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_populate":
        populate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_patch":
        patch_probe(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
