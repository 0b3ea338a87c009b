"""Benchmark (issue 3): how fast sandbox clusters come and go, pod start latency, memory.

    .venv/bin/python benchmarks/sandbox_up.py [--nodes 2 4 8] [--pods-per-node 10] [--runs 3]

For each node count: write a topology with N nodes and 10 pods per node (each pod a tiny TCP
server, `nc -lk 8080`, with a tcpSocket readiness probe), time `netplane up` until every pod is
Ready and `netplane down`, and read the RSS of the daemon and of all pod processes. Then, on a
2-node cluster, create 50 pods at once through the apiserver and measure each pod's latency from
create to Ready (watching pods). Results (median, min–max over runs) go to
benchmarks/results/sandbox_up.{json,md}. Needs root. Not a test: run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import pct, rss_mb, summary  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NETPLANE = str(Path(sys.executable).with_name("netplane"))


def pod(name: str, node: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"nodeName": node, "containers": [{
            "name": "srv", "image": "netplane/host", "command": ["nc", "-lk", "8080"],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        }]},
    }


def topology(nodes: int, pods_per_node: int) -> dict:
    names = [f"node{i + 1}" for i in range(nodes)]
    return {
        "name": "bench",
        "nodes": [{"name": n, "zone": f"zone-{i % 2}"} for i, n in enumerate(names)],
        "manifests": [pod(f"p-{n}-{j}", n) for n in names for j in range(pods_per_node)],
    }



def cgroup_pids(cluster: str) -> list[int]:
    pids: list[int] = []
    root = f"/sys/fs/cgroup/unified/netplane/{cluster}"
    for dirpath, _, files in os.walk(root):
        if "cgroup.procs" in files:
            pids += [int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()]
    return pids


def up_down(nodes: int, pods_per_node: int, tmp: str) -> dict:
    path = os.path.join(tmp, f"bench-{nodes}.yaml")
    Path(path).write_text(yaml.safe_dump(topology(nodes, pods_per_node)))
    t0 = time.perf_counter()
    subprocess.run([NETPLANE, "up", path, "--timeout", "300"], check=True, capture_output=True)
    up_s = time.perf_counter() - t0
    state = json.loads(Path("/run/netplane/bench/state.json").read_text())
    daemon_mb = rss_mb([state["pid"]])
    pods_mb = rss_mb(cgroup_pids("bench"))
    t1 = time.perf_counter()
    subprocess.run([NETPLANE, "down", "--name", "bench"], check=True, capture_output=True)
    down_s = time.perf_counter() - t1
    return {"up_s": up_s, "down_s": down_s, "daemon_rss_mb": daemon_mb, "pods_rss_mb": pods_mb}


def pod_start_latency(count: int, tmp: str) -> list[float]:
    from netplane.k8s import Client, Informer, Pod, load_kubeconfig

    path = os.path.join(tmp, "bench-latency.yaml")
    Path(path).write_text(yaml.safe_dump(topology(2, 0) | {"manifests": []}))
    subprocess.run([NETPLANE, "up", path, "--timeout", "120"], check=True, capture_output=True)
    try:
        client = Client(load_kubeconfig("/run/netplane/bench/kubeconfig"))
        created: dict[str, float] = {}
        ready: dict[str, float] = {}
        done = threading.Event()

        def seen(_old, new=None) -> None:
            p = new if new is not None else _old
            if p.ready and p.name in created and p.name not in ready:
                ready[p.name] = time.perf_counter()
                if len(ready) == count:
                    done.set()

        informer = Informer(client, "/api/v1/namespaces/default/pods", Pod.from_dict)
        informer.add_handler(on_add=seen, on_update=seen)
        informer.start()
        informer.wait_for_sync(10)
        for i in range(count):
            name = f"lat-{i}"
            created[name] = time.perf_counter()
            client.create("/api/v1/namespaces/default/pods", pod(name, f"node{i % 2 + 1}"))
        assert done.wait(180), f"only {len(ready)} of {count} pods became Ready"
        informer.stop()
        return sorted(ready[n] - created[n] for n in created)
    finally:
        subprocess.run([NETPLANE, "down", "--name", "bench"], check=True, capture_output=True)



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--pods-per-node", type=int, default=10)
    ap.add_argument("--latency-pods", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (creates network namespaces)")
    result: dict = {"pods_per_node": args.pods_per_node, "clusters": {}, "latency": {}}
    with tempfile.TemporaryDirectory(prefix="np-bench-") as tmp:
        for n in args.nodes:
            runs = [up_down(n, args.pods_per_node, tmp) for _ in range(args.runs)]
            result["clusters"][str(n)] = {k: summary([r[k] for r in runs]) for k in runs[0]}
            print(f"{n} nodes: up {result['clusters'][str(n)]['up_s']['median']:.1f}s "
                  f"down {result['clusters'][str(n)]['down_s']['median']:.1f}s", flush=True)
        lat = [pod_start_latency(args.latency_pods, tmp) for _ in range(args.runs)]
        result["latency"] = {"p50_s": summary([pct(r, 50) for r in lat]), "p99_s": summary([pct(r, 99) for r in lat]),
                             "pods": args.latency_pods}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sandbox_up.json").write_text(json.dumps(result, indent=2) + "\n")
    table = render(result, args.runs)
    (RESULTS / "sandbox_up.md").write_text(table)
    print(table)
    return 0


def render(r: dict, runs: int) -> str:
    def cell(s: dict, fmt: str) -> str:
        return f"{s['median']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"

    lines = [
        f"# Sandbox clusters: {r['pods_per_node']} pods per node, median (min–max) of {runs} runs",
        "",
        "| nodes | `netplane up` until all pods Ready (s) | `netplane down` (s) | daemon RSS (MB) | node cgroups RSS: agents + pod processes (MB) |",
        "|---|---|---|---|---|",
    ]
    for n, c in r["clusters"].items():
        lines.append(f"| {n} | {cell(c['up_s'], '.2f')} | {cell(c['down_s'], '.2f')} | "
                     f"{cell(c['daemon_rss_mb'], '.0f')} | {cell(c['pods_rss_mb'], '.0f')} |")
    lat = r["latency"]
    lines += ["", f"Pod start latency, {lat['pods']} pods created at once on 2 nodes (create → Ready): "
              f"p50 {cell(lat['p50_s'], '.2f')} s, p99 {cell(lat['p99_s'], '.2f')} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
