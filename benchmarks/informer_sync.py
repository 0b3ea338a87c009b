"""Benchmark (issue 2): informer initial sync, memory and watch throughput at scale.

    .venv/bin/python benchmarks/informer_sync.py [--services 10000] [--endpoints 10] [--runs 3]

Starts `netplane apiserver` on loopback, creates N Services and N EndpointSlices (N×E endpoints),
then, in fresh child processes so each measurement has its own RSS:
  * netplane informers (lean client + orjson + slim objects): time to has_synced() for both
    resources and the process RSS afterwards;
  * the anchor, the official `kubernetes` client: list both resources into its model objects
    (what an informer built on it would have to do), time and RSS;
  * watch throughput: a synced EndpointSlice informer receives a burst of 10,000 updates,
    (a) live while 4 writer threads patch the slices, and (b) replayed from the server's history
    after the informer was stopped and restarted (isolates the watch path from the write rate).
Results (median and min–max over runs) go to benchmarks/results/informer_sync.{json,md}.
Not a test: run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NETPLANE = Path(sys.executable).with_name("netplane")


def rss_mb() -> tuple[float, float]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


# -- children (each a fresh process) -----------------------------------------------------------------


def child_informers(kubeconfig: str) -> dict:
    from netplane.k8s import Client, EndpointSlice, Informer, Service, load_kubeconfig

    client = Client(load_kubeconfig(kubeconfig))
    t0 = time.perf_counter()
    svcs = Informer(client, "/api/v1/services", Service.from_dict, name="services")
    slices = Informer(client, "/apis/discovery.k8s.io/v1/endpointslices", EndpointSlice.from_dict,
                      name="endpointslices")
    svcs.start()
    slices.start()
    assert svcs.wait_for_sync(120) and slices.wait_for_sync(120)
    elapsed = time.perf_counter() - t0
    rss, hwm = rss_mb()
    counts = (len(svcs), len(slices))
    svcs.stop()
    slices.stop()
    return {"sync_s": elapsed, "rss_mb": rss, "peak_rss_mb": hwm, "objects": counts}


def child_official(kubeconfig: str) -> dict:
    import kubernetes

    api_client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    core = kubernetes.client.CoreV1Api(api_client)
    disc = kubernetes.client.DiscoveryV1Api(api_client)
    t0 = time.perf_counter()
    svcs = core.list_service_for_all_namespaces(limit=500)
    items_s = list(svcs.items)
    while svcs.metadata._continue:
        svcs = core.list_service_for_all_namespaces(limit=500, _continue=svcs.metadata._continue)
        items_s += svcs.items
    eps = disc.list_endpoint_slice_for_all_namespaces(limit=500)
    items_e = list(eps.items)
    while eps.metadata._continue:
        eps = disc.list_endpoint_slice_for_all_namespaces(limit=500, _continue=eps.metadata._continue)
        items_e += eps.items
    elapsed = time.perf_counter() - t0
    rss, hwm = rss_mb()
    return {"sync_s": elapsed, "rss_mb": rss, "peak_rss_mb": hwm, "objects": (len(items_s), len(items_e))}


def child_watch(kubeconfig: str, updates: int, tag: str) -> dict:
    from netplane.k8s import Client, EndpointSlice, Informer, load_kubeconfig

    cfg = load_kubeconfig(kubeconfig)
    client = Client(cfg)
    slices = Informer(client, "/apis/discovery.k8s.io/v1/endpointslices", EndpointSlice.from_dict,
                      name="endpointslices")
    seen = 0
    done = threading.Event()
    first_at: list[float] = []

    def on_update(old, new):  # handlers only count (they must stay cheap)
        nonlocal seen
        if not first_at:
            first_at.append(time.perf_counter())
        seen += 1
        if seen >= updates:
            done.set()

    slices.add_handler(on_update=on_update)
    slices.start()
    assert slices.wait_for_sync(120)
    names = sorted(slices.keys())[:updates]
    local = threading.local()

    def patch(i_key):
        i, key = i_key
        if not hasattr(local, "c"):
            local.c = Client(cfg)
        ns, name = key.split("/")
        local.c.patch(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}",
                      {"metadata": {"labels": {"bench": f"{tag}-{i}"}}}, patch_type="merge")

    def write_all(label: str) -> float:
        t = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(patch, [(i, k) for i, k in enumerate(names)]))
        return time.perf_counter() - t

    # (a) live: events arrive while writers patch
    t0 = time.perf_counter()
    write_s = write_all("live")
    assert done.wait(120), f"saw {seen} of {updates} events"
    live_s = time.perf_counter() - t0
    # (b) replay: stop the informer, write, restart it; the burst comes from the server's history
    seen, first_at[:] = 0, []
    done.clear()
    slices.stop()
    tag = tag + "b"
    write_all("replay")
    t1 = time.perf_counter()
    slices.start()
    assert done.wait(120), f"saw {seen} of {updates} replayed events"
    replay_s = time.perf_counter() - t1
    relisted = slices.has_synced()
    slices.stop()
    return {"live_events_per_s": updates / live_s, "write_per_s": updates / write_s,
            "replay_events_per_s": updates / replay_s, "replay_s": replay_s, "still_synced": relisted}


# -- parent -------------------------------------------------------------------------------------------


def start_apiserver(tmp: str) -> tuple[subprocess.Popen, str]:
    kubeconfig = os.path.join(tmp, "kubeconfig")
    log = open(os.path.join(tmp, "apiserver.log"), "w")
    proc = subprocess.Popen(
        [str(NETPLANE), "apiserver", "--listen", "127.0.0.1:0", "--write-kubeconfig", kubeconfig,
         "--history", "200000"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if "ready" in Path(log.name).read_text():
            return proc, kubeconfig
        if proc.poll() is not None:
            raise SystemExit(f"apiserver exited: {Path(log.name).read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("apiserver not ready")


def populate(kubeconfig: str, n: int, endpoints: int) -> float:
    from netplane.k8s import Client, load_kubeconfig

    cfg = load_kubeconfig(kubeconfig)
    local = threading.local()
    namespaces = [f"bench-{i}" for i in range(10)]
    Client(cfg).create("/api/v1/namespaces", {"metadata": {"name": "bench-x"}})
    for ns in namespaces:
        Client(cfg).create("/api/v1/namespaces", {"metadata": {"name": ns}})

    def make(i: int) -> None:
        if not hasattr(local, "c"):
            local.c = Client(cfg)
        ns, name = namespaces[i % 10], f"svc-{i}"
        local.c.create(f"/api/v1/namespaces/{ns}/services", {
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        })
        local.c.create(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", {
            "metadata": {"name": f"{name}-abcde", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": [f"10.{(i >> 8) & 255}.{i & 255}.{e + 1}"], "conditions": {"ready": True},
                 "nodeName": f"node-{e % 4}", "zone": f"zone-{e % 2}"}
                for e in range(endpoints)
            ],
        })

    t = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(make, range(n)))
    return time.perf_counter() - t


def run_child(mode: str, kubeconfig: str, *extra: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, kubeconfig, *extra],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--updates", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, kubeconfig, *extra = args.child
        fn = {"informers": child_informers, "official": child_official}.get(mode)
        result = fn(kubeconfig) if fn else child_watch(kubeconfig, int(extra[0]), extra[1])
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="np-bench-") as tmp:
        proc, kubeconfig = start_apiserver(tmp)
        try:
            print(f"populating {args.services} services + endpointslices ({args.endpoints} endpoints each)…",
                  flush=True)
            populate_s = populate(kubeconfig, args.services, args.endpoints)
            print(f"  {populate_s:.1f}s ({2 * args.services / populate_s:.0f} creates/s)", flush=True)
            rows: dict[str, list[dict]] = {"informers": [], "official": [], "watch": []}
            for r in range(args.runs):
                for mode in ("informers", "official"):
                    rows[mode].append(run_child(mode, kubeconfig))
                rows["watch"].append(run_child("watch", kubeconfig, str(args.updates), f"r{r}"))
                print(f"  run {r + 1}: informers {rows['informers'][-1]['sync_s']:.2f}s "
                      f"{rows['informers'][-1]['rss_mb']:.0f}MB; official {rows['official'][-1]['sync_s']:.2f}s "
                      f"{rows['official'][-1]['rss_mb']:.0f}MB; watch live "
                      f"{rows['watch'][-1]['live_events_per_s']:.0f}/s replay "
                      f"{rows['watch'][-1]['replay_events_per_s']:.0f}/s", flush=True)
            server_rss = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
        finally:
            proc.terminate()
            proc.wait(10)
    result = {
        "services": args.services, "endpoints_per_slice": args.endpoints, "updates": args.updates,
        "populate_s": populate_s, "apiserver_rss_mb": server_rss,
        "netplane_sync_s": summary([r["sync_s"] for r in rows["informers"]]),
        "netplane_rss_mb": summary([r["rss_mb"] for r in rows["informers"]]),
        "official_list_s": summary([r["sync_s"] for r in rows["official"]]),
        "official_rss_mb": summary([r["rss_mb"] for r in rows["official"]]),
        "watch_live_events_per_s": summary([r["live_events_per_s"] for r in rows["watch"]]),
        "watch_replay_events_per_s": summary([r["replay_events_per_s"] for r in rows["watch"]]),
        "write_per_s": summary([r["write_per_s"] for r in rows["watch"]]),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "informer_sync.json").write_text(json.dumps(result, indent=2) + "\n")
    table = render(result)
    (RESULTS / "informer_sync.md").write_text(table)
    print(table)
    return 0


def render(r: dict) -> str:
    def cell(s: dict, fmt: str) -> str:
        return f"{s['median']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"

    ratio = r["official_list_s"]["median"] / r["netplane_sync_s"]["median"]
    return "\n".join([
        f"# Informer sync: {r['services']} Services + {r['services']} EndpointSlices "
        f"({r['services'] * r['endpoints_per_slice']} endpoints), median (min–max) of "
        f"{len(r['netplane_sync_s']['runs'])} runs",
        "",
        "| measure | netplane informers | official client (anchor) | target |",
        "|---|---|---|---|",
        f"| time to synced (s) | {cell(r['netplane_sync_s'], '.2f')} | {cell(r['official_list_s'], '.2f')} "
        f"(list only) | ≤ 3 s |",
        f"| process RSS after sync (MB) | {cell(r['netplane_rss_mb'], '.0f')} | {cell(r['official_rss_mb'], '.0f')} | ≤ 300 MB |",
        f"| watch events/s, 10k burst replayed | {cell(r['watch_replay_events_per_s'], '.0f')} | — | ≥ 10,000/s |",
        f"| watch events/s, live (4 writers) | {cell(r['watch_live_events_per_s'], '.0f')} | — | |",
        "",
        f"Official client list is {ratio:.1f}× the netplane sync time. Writers: "
        f"{r['write_per_s']['median']:.0f} patches/s; populating took {r['populate_s']:.1f} s; "
        f"apiserver RSS {r['apiserver_rss_mb']:.0f} MB.",
        "",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
