"""Benchmark (issue 6): `netplane dns` against dnsmasq, side by side in one run.

    .venv/bin/python benchmarks/dns_bench.py [--services 10000] [--runs 3] [--seconds 10]
                                             [--workers 1,2] [--quiet-budget 120]
                                             [--out benchmarks/results/dns_bench] [--pin]

Setup (everything on 127.0.0.1, removed at the end):
- the embedded apiserver (`netplane apiserver`) with N ClusterIP services `svcI` in namespace
  `bench`, each with a named port `http` 80/TCP;
- `netplane dns` fed by it (`kubernetes cluster.local in-addr.arpa ip6.arpa`, ttl 5, no cache and
  no forward: only the cluster zone is measured), once per `--workers` value;
- dnsmasq 2.x serving the same records: a hosts file with every service's ClusterIP (which also
  gives the PTRs), `local=/cluster.local/` so unknown names get NXDOMAIN, `local-ttl=5`; for the
  mix a second instance that also has a `srv-host` line per service (see `Dnsmasq`).

Query sets (dnsperf input files, each N lines, every line a different name):
- `A`: svcI.bench.svc.cluster.local A;
- `mix`: 60% A, 15% SRV `_http._tcp.svcI…`, 15% PTR of the ClusterIPs, 10% NXDOMAIN names.

Per server, query set and run: dnsperf (`-c 4 -T 2 -q 500 -l SECONDS`, no rate limit) for
queries/s and lost queries; then dnsperf at a fixed 20,000 queries/s with `-v` for p50/p99
latency (at the saturation point latency is only the depth of dnsperf's own queue, so it is
measured at a rate every server sustains); the server's RSS after the run (netplane: all worker
processes); the CPU time per answered query of dnsperf and of the server over the throughput run
(utime + stime: dnsperf's from its rusage, the server's from /proc/PID/stat of all its
processes). It says how the CPUs were split, since throughput ~ CPUs / (dnsperf's + the
server's CPU per query): a server can only gain on the share that is its own. `--pin` runs
dnsperf on CPU 0 and every server on CPU 1 (taskset) instead of letting them share. Before the
first run, a sample of answers from every server is checked with dnslib against the expected
records. Servers alternate their order run by run, and before each measurement the script waits
(within `--quiet-budget` seconds in all) for the CPUs to be mostly idle: others may share this
machine, and what was seen is recorded.

Median and min–max over `--runs` go to OUT.json and OUT.md (`--out`, default
benchmarks/results/dns_bench). Not a test: run by hand. dnsperf shares the CPUs with the server
under test (2 on the reference machine), which caps what any server can show here.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dnslib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Quiet, children_cpu_seconds, pct, process_cpu_seconds, rss_mb, summary  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NETPLANE = str(Path(sys.executable).with_name("netplane"))
NAMESPACE = "bench"
LATENCY_QPS = 20_000
SAMPLE = 300  # answers checked per query kind and server
DNSPERF_CPU, SERVER_CPU = 0, 1  # with --pin

COREFILE = """\
.:53 {
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        ttl 5
    }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", port))  # the same port must be free for UDP too
    return port



def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


# -- the cluster ----------------------------------------------------------------------------------


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.kubeconfig = tmp / "kubeconfig"
        self.log = open(tmp / "apiserver.log", "wb")
        self.proc = subprocess.Popen([NETPLANE, "apiserver", "--listen", "127.0.0.1:0",
                                      "--write-kubeconfig", str(self.kubeconfig)],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.kubeconfig.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"apiserver did not start: {(tmp / 'apiserver.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def populate(self, n: int) -> dict[str, str]:
        """Create svc0..svc{n-1}; returns name → ClusterIP."""
        from netplane.k8s import Client, load_config

        client = Client(load_config(str(self.kubeconfig)))
        client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": NAMESPACE}})

        def create(i: int) -> tuple[str, str]:
            obj = client.create(f"/api/v1/namespaces/{NAMESPACE}/services", {
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc{i}", "namespace": NAMESPACE},
                "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "selector": {"app": f"a{i}"}}})
            return f"svc{i}", obj["spec"]["clusterIP"]

        with ThreadPoolExecutor(8) as pool:
            ips = dict(pool.map(create, range(n)))
        client.close()
        return ips

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


# -- servers ---------------------------------------------------------------------------------------


class Server:
    name = ""
    port = 0
    sets: tuple[str, ...] = ("A", "mix")
    proc: subprocess.Popen

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def stop(self) -> None:
        stop_process(self.proc)


class NetplaneDns(Server):
    def __init__(self, tmp: Path, kubeconfig: Path, workers: int, services: int) -> None:
        self.name = f"netplane dns ({workers} worker{'s' if workers > 1 else ''})"
        self.port = free_port()
        corefile = tmp / f"Corefile-{workers}"
        corefile.write_text(COREFILE)
        self.metrics_port = free_port()
        self.log_path = tmp / f"dns-{workers}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [NETPLANE, "dns", "--kubeconfig", str(kubeconfig), "--config", str(corefile),
             "--listen", f"127.0.0.1:{self.port}", "--workers", str(workers),
             "--health-addr", f"127.0.0.1:{free_port()}", "--ready-addr", f"127.0.0.1:{free_port()}",
             "--metrics-addr", f"127.0.0.1:{self.metrics_port}", "--lameduck", "0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        probe = f"svc{services - 1}.{NAMESPACE}.svc.cluster.local"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"netplane dns exited: {self.log_path.read_text()[-2000:]}")
            if "dns ready" in self.log_path.read_text(errors="replace"):
                try:
                    if ask(self.port, probe, "A").header.rcode == dnslib.RCODE.NOERROR:
                        return
                except OSError:
                    pass
            time.sleep(0.2)
        raise SystemExit(f"netplane dns did not serve {probe}: {self.log_path.read_text()[-2000:]}")

    def panics(self) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        m = re.search(r"^coredns_panics_total (\S+)", text, re.M)
        return float(m.group(1)) if m else 0.0


class Dnsmasq(Server):
    """dnsmasq with the services in a hosts file (A and PTR) and, with `srv`, a `srv-host` line
    per service. dnsmasq keeps srv-host records in a list it walks for every query, which makes
    it several times slower with 10k of them: the A set is therefore measured against the
    hosts-only instance (the best dnsmasq can do) and only the mix against the SRV one."""

    def __init__(self, tmp: Path, ips: dict[str, str], *, srv: bool) -> None:
        self.name = "dnsmasq"
        self.sets = ("mix",) if srv else ("A",)
        self.port = free_port()
        hosts = tmp / "hosts"
        hosts.write_text("".join(f"{ip} {name}.{NAMESPACE}.svc.cluster.local\n" for name, ip in ips.items()))
        conf = tmp / f"dnsmasq-{'srv' if srv else 'hosts'}.conf"
        conf.write_text("".join(f"srv-host=_http._tcp.{name}.{NAMESPACE}.svc.cluster.local,"
                                f"{name}.{NAMESPACE}.svc.cluster.local,80,0,100\n" for name in ips) if srv else "")
        self.proc = subprocess.Popen(
            ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}", f"--conf-file={conf}",
             f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces", "--local=/cluster.local/",
             "--local-ttl=5", "--user=nobody", "--pid-file="],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if ask(self.port, f"svc0.{NAMESPACE}.svc.cluster.local", "A").rr:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"dnsmasq exited: {self.proc.stderr.read().decode()}")
            time.sleep(0.1)
        raise SystemExit("dnsmasq did not answer")

    def panics(self) -> float:
        return 0.0


# -- queries ---------------------------------------------------------------------------------------


def reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


def query_sets(ips: dict[str, str], rng: random.Random) -> dict[str, list[tuple[str, str, str]]]:
    """name → [(kind, qname, qtype)]; kind is A, SRV, PTR or NX."""
    names = list(ips)
    a_set = [("A", f"{n}.{NAMESPACE}.svc.cluster.local", "A") for n in names]
    mix = []
    for i, n in enumerate(names):
        roll = rng.random()
        if roll < 0.60:
            mix.append(("A", f"{n}.{NAMESPACE}.svc.cluster.local", "A"))
        elif roll < 0.75:
            mix.append(("SRV", f"_http._tcp.{n}.{NAMESPACE}.svc.cluster.local", "SRV"))
        elif roll < 0.90:
            mix.append(("PTR", reverse_name(ips[n]), "PTR"))
        else:
            mix.append(("NX", f"nosuch{i}.{NAMESPACE}.svc.cluster.local", "A"))
    rng.shuffle(mix)
    return {"A": a_set, "mix": mix}


def _cpu_times() -> list[int]:
    """/proc/stat's first line: user nice system idle iowait irq softirq steal."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def ask(port: int, name: str, qtype: str, timeout: float = 2.0) -> dnslib.DNSRecord:
    q = dnslib.DNSRecord.question(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q.pack(), ("127.0.0.1", port))
        reply = dnslib.DNSRecord.parse(s.recv(4096))
    if reply.header.id != q.header.id:
        raise OSError("reply ID mismatch")
    return reply


def check_answers(server: Server, queries: list[tuple[str, str, str]], ips: dict[str, str],
                  rng: random.Random) -> dict:
    """Ask a sample of every kind the server is measured with and compare with the records
    the cluster has."""
    by_ptr = {reverse_name(ip) + ".": f"{n}.{NAMESPACE}.svc.cluster.local." for n, ip in ips.items()}
    wrong: list[str] = []
    checked = 0
    kinds = ("A", "SRV", "PTR", "NX") if "mix" in server.sets else ("A",)
    for kind in kinds:
        sample = [q for q in queries if q[0] == kind]
        for _kind, name, qtype in rng.sample(sample, min(SAMPLE, len(sample))):
            checked += 1
            r = ask(server.port, name, qtype)
            svc = name.split(".")[-5] if kind != "PTR" else ""
            if kind == "A":
                ok = r.header.rcode == 0 and [str(rr.rdata) for rr in r.rr] == [ips[svc]]
            elif kind == "SRV":
                srv = [rr.rdata for rr in r.rr if rr.rtype == dnslib.QTYPE.SRV]
                ok = r.header.rcode == 0 and len(srv) == 1 and srv[0].port == 80 and \
                    str(srv[0].target).lower() == f"{svc}.{NAMESPACE}.svc.cluster.local."
            elif kind == "PTR":
                ok = r.header.rcode == 0 and [str(rr.rdata) for rr in r.rr] == [by_ptr[name + "."]]
            else:
                ok = r.header.rcode == dnslib.RCODE.NXDOMAIN and not r.rr
            if not ok:
                wrong.append(f"{name} {qtype}: rcode {dnslib.RCODE.get(r.header.rcode)} {[str(x.rdata) for x in r.rr]}")
    return {"checked": checked, "wrong": len(wrong), "examples": wrong[:5]}


def dnsperf(port: int, datafile: Path, seconds: float, *, qps: int | None = None, verbose: bool = False,
            server_pids: list[int] | tuple[int, ...] = (), cpu: int | None = None) -> dict:
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile), "-l", str(seconds),
           "-c", "4", "-T", "2", "-q", "500"]
    if qps:
        cmd += ["-Q", str(qps)]
    if verbose:
        cmd.append("-v")
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    before = _cpu_times()
    server_before, client_before = process_cpu_seconds(server_pids), children_cpu_seconds()
    with tempfile.TemporaryFile("w+") as out:
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=seconds + 60)
        out.seek(0)
        text = out.read()
    # dnsperf is the only child reaped meanwhile: the children's rusage grew by its CPU time.
    client_cpu = children_cpu_seconds() - client_before
    server_cpu = process_cpu_seconds(server_pids) - server_before
    result = {
        "sent": int(re.search(r"Queries sent:\s+(\d+)", text).group(1)),
        "completed": int(re.search(r"Queries completed:\s+(\d+)", text).group(1)),
        "lost": int(re.search(r"Queries lost:\s+(\d+)", text).group(1)),
        "qps": float(re.search(r"Queries per second:\s+([\d.]+)", text).group(1)),
    }
    # Where the machine's CPU went meanwhile: on a VM, "steal" is time the hypervisor gave to
    # someone else, which no server can use.
    delta = [b - a for a, b in zip(before, _cpu_times())]
    total = max(1, sum(delta))
    result.update(cpu_idle=round(delta[3] / total, 3), cpu_steal=round(delta[7] / total, 3))
    done = max(1, result["completed"])
    result.update(dnsperf_cpu_us=round(client_cpu / done * 1e6, 3), server_cpu_us=round(server_cpu / done * 1e6, 3))
    if verbose:
        latencies = [float(m) for m in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", text, re.M)]
        rcodes: dict[str, int] = {}
        for m in re.findall(r"^> (\S+) ", text, re.M):
            rcodes[m] = rcodes.get(m, 0) + 1
        result.update(p50_ms=pct(latencies, 50) * 1000, p99_ms=pct(latencies, 99) * 1000, rcodes=rcodes)
    return result


# -- main ------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--latency-seconds", type=float, default=5.0)
    ap.add_argument("--workers", default="1,2", help="netplane dns --workers values to measure")
    ap.add_argument("--quiet-budget", type=float, default=120.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "dns_bench",
                    help="results path without suffix: OUT.json and OUT.md are written")
    ap.add_argument("--pin", action="store_true", help="dnsperf on CPU 0, the servers on CPU 1 (taskset)")
    args = ap.parse_args()
    # SIGTERM must run the cleanup below (servers run in their own sessions and would stay).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (make setup)")
    quiet = Quiet(args.quiet_budget, threshold=0.15)
    rng = random.Random(6)
    tmp = Path(tempfile.mkdtemp(prefix="netplane-dnsbench-"))
    cluster = Cluster(tmp)
    servers: list[Server] = []
    try:
        t0 = time.monotonic()
        ips = cluster.populate(args.services)
        print(f"{len(ips)} services created in {time.monotonic() - t0:.1f}s", flush=True)
        sets = query_sets(ips, rng)
        files = {}
        for set_name, queries in sets.items():
            files[set_name] = tmp / f"{set_name}.txt"
            files[set_name].write_text("".join(f"{name} {qtype}\n" for _k, name, qtype in queries))
        servers += [Dnsmasq(tmp, ips, srv=False), Dnsmasq(tmp, ips, srv=True)]
        for w in (int(x) for x in args.workers.split(",")):
            t0 = time.monotonic()
            servers.append(NetplaneDns(tmp, cluster.kubeconfig, w, args.services))
            print(f"{servers[-1].name} serving after {time.monotonic() - t0:.1f}s", flush=True)
        if args.pin:
            for server in servers:
                pin(server.pids(), SERVER_CPU)
        correctness: dict[str, dict] = {}
        for server in servers:
            c = check_answers(server, sets["mix"], ips, random.Random(7))
            old_c = correctness.get(server.name, {"checked": 0, "wrong": 0, "examples": []})
            correctness[server.name] = {"checked": old_c["checked"] + c["checked"], "wrong": old_c["wrong"] + c["wrong"],
                                        "examples": old_c["examples"] + c["examples"]}
            print(f"{server.name} ({'/'.join(server.sets)}): {c['checked']} answers checked, {c['wrong']} wrong "
                  f"{c['examples']}", flush=True)
        raw: dict[str, dict[str, list[dict]]] = {s.name: {k: [] for k in sets} for s in servers}
        for run in range(args.runs):
            order = servers[run % len(servers):] + servers[:run % len(servers)]
            for set_name in sets:
                for server in (s for s in order if set_name in s.sets):
                    busy = quiet.wait(f"{server.name} {set_name} run {run + 1}")
                    client_cpu = DNSPERF_CPU if args.pin else None
                    r = dnsperf(server.port, files[set_name], args.seconds, server_pids=server.pids(), cpu=client_cpu)
                    lat = dnsperf(server.port, files[set_name], args.latency_seconds, qps=LATENCY_QPS, verbose=True,
                                  cpu=client_cpu)
                    r.update(p50_ms=lat["p50_ms"], p99_ms=lat["p99_ms"], latency_lost=lat["lost"],
                             latency_rcodes=lat["rcodes"], rss_mb=round(rss_mb(server.pids()), 1), cpu_busy_before=busy)
                    raw[server.name][set_name].append(r)
                    print(f"run {run + 1} {set_name:3} {server.name:26} {r['qps']:>9.0f} q/s lost {r['lost']:>5} "
                          f"p50 {r['p50_ms']:.3f} ms p99 {r['p99_ms']:.3f} ms RSS {r['rss_mb']} MB "
                          f"CPU µs/query dnsperf {r['dnsperf_cpu_us']:.2f} server {r['server_cpu_us']:.2f}", flush=True)
        panics = {s.name: s.panics() for s in servers if isinstance(s, NetplaneDns)}
    finally:
        for s in servers:
            s.stop()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    results = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                           "cpu": _cpu_model(), "dnsmasq": _version(["dnsmasq", "--version"]),
                           "dnsperf": _version(["dnsperf", "-h"], r"Version (\S+)")},
               "params": vars(args) | {"latency_qps": LATENCY_QPS, "dnsperf": "-c 4 -T 2 -q 500"},
               "correctness": correctness, "panics": panics, "quiet": quiet.log, "servers": {}}
    for name, per_set in raw.items():
        results["servers"][name] = {
            set_name: {key: summary([r[key] for r in runs]) for key in ("qps", "lost", "p50_ms", "p99_ms", "rss_mb")}
            | {key: summary([r[key] for r in runs]) for key in ("cpu_idle", "cpu_steal")}
            | {key: summary([r[key] for r in runs]) for key in ("dnsperf_cpu_us", "server_cpu_us")}
            | {"raw": runs} for set_name, runs in per_set.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    Path(f"{args.out}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def pin(pids: list[int], cpu: int) -> None:
    """Every thread of the processes onto one CPU."""
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], capture_output=True, check=True)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _version(cmd: list[str], pattern: str = r"version (\S+)") -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "?"


def cpu_cell(r: dict, key: str) -> str:
    """Results written before the CPU columns existed have none."""
    return f"{r[key]['median']:.2f}" if key in r else "–"


def markdown(results: dict) -> str:
    m, p = results["machine"], results["params"]
    lines = [
        "# DNS benchmark: netplane dns vs dnsmasq",
        "",
        f"{p['services']} ClusterIP services; dnsperf {m['dnsperf']} `{p['dnsperf']} -l {p['seconds']}` (no rate "
        f"limit) for queries/s; latency at a fixed {p['latency_qps']} q/s with `-v`. {p['runs']} runs, median "
        f"(min–max). {m['cpus']} CPUs ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}, dnsmasq {m['dnsmasq']}. "
        "dnsperf runs on the same CPUs. dnsmasq serves the A set from a hosts file and the mix from a second "
        "instance that also has one `srv-host` per service. Produced by benchmarks/dns_bench.py.",
        "",
        "| server | queries | queries/s | lost | p50 ms | p99 ms | RSS MB | CPU stolen (idle) "
        "| CPU µs/query dnsperf | CPU µs/query server |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(s: dict, digits: int = 0) -> str:
        fmt = f"{{:,.{digits}f}}"
        return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"

    for name, per_set in results["servers"].items():
        for set_name, r in per_set.items():
            lines.append(f"| {name} | {set_name} | {cell(r['qps'])} | {cell(r['lost'])} | {cell(r['p50_ms'], 3)} | "
                         f"{cell(r['p99_ms'], 3)} | {cell(r['rss_mb'], 1)} | "
                         f"{r['cpu_steal']['median']:.0%} ({r['cpu_idle']['median']:.0%}) | "
                         f"{cpu_cell(r, 'dnsperf_cpu_us')} | {cpu_cell(r, 'server_cpu_us')} |")
    lines += ["", "CPU stolen / idle: medians over the throughput runs, share of both CPUs (/proc/stat); steal is "
              "CPU time the hypervisor gave to other guests. CPU µs/query: utime + stime per answered query over "
              "the throughput runs, of dnsperf and of the server's processes."
              + (" dnsperf pinned to CPU 0, servers to CPU 1." if p.get("pin") else ""), "", "Answers checked with dnslib (A, SRV, PTR, NXDOMAIN samples): " + "; ".join(
        f"{n}: {c['checked'] - c['wrong']}/{c['checked']} right" for n, c in results["correctness"].items()),
        "", "Ratios (median queries/s, netplane / dnsmasq): " + "; ".join(
            f"{n} {s}: {results['servers'][n][s]['qps']['median'] / results['servers']['dnsmasq'][s]['qps']['median']:.2f}×"
            for n in results["servers"] if n != "dnsmasq" for s in results["servers"][n]), ""]
    busy = [q for q in results["quiet"] if q["cpu_busy"] > 0.15]
    if busy:
        lines += [f"CPU was busy (others on the machine) before {len(busy)} of {len(results['quiet'])} measurements "
                  f"(max {max(q['cpu_busy'] for q in busy):.0%}); see the JSON.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
