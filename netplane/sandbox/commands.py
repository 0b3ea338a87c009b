"""`netplane up/down/status/exec/kubeconfig`: the sandbox's command line (the only printing here).

`up` validates the topology, starts the cluster daemon detached (`up --foreground` in a new
session, logging to /run/netplane/<name>/daemon.log) and waits for it to report ready or failed.
`down` asks the daemon to stop, then removes by name whatever is left, so it also cleans up after
a killed or failed `up`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from netplane.errors import ConfigError, NetplaneError
from netplane.sandbox import network
from netplane.sandbox.names import ClusterNames
from netplane.sandbox.state import clusters, pid_alive, read_state

DEFAULT_TOPOLOGY = Path(__file__).resolve().parents[2] / "topologies" / "default.yaml"


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ConfigError("the sandbox creates network namespaces and cgroups: run as root")


def _cluster_name(args: argparse.Namespace) -> str:
    if args.name:
        from netplane.sandbox.topology import cluster_name_problem

        if problem := cluster_name_problem(args.name):
            raise ConfigError(f"--name: {problem}")
        return args.name
    existing = clusters()
    if len(existing) == 1:
        return existing[0]
    if not existing:
        raise ConfigError("no sandbox cluster is running (netplane up)")
    raise ConfigError(f"several clusters are running ({', '.join(existing)}): choose one with --name")


# -- up -----------------------------------------------------------------------------------------------


def run_up(args: argparse.Namespace) -> int:
    from netplane.sandbox.topology import load_topology

    _require_root()
    topology = load_topology(args.topology or DEFAULT_TOPOLOGY)
    if args.name:
        topology = topology.renamed(args.name)
    name = topology.name
    unsupported = _unsupported(topology)
    if unsupported:
        raise ConfigError(f"{topology.source}: {'; '.join(unsupported)}")
    if args.foreground:
        from netplane.sandbox.daemon import run_foreground

        return run_foreground(topology, name, detached=args.detached, ready_timeout=args.timeout)
    names = ClusterNames(name)
    state = read_state(names)
    if state is not None or any(ns.startswith(names.prefix) for ns in network.netns_list()):
        raise ConfigError(f"cluster {name!r} exists already: use it, or 'netplane down --name {name}' first")
    os.makedirs(names.state_dir, mode=0o700, exist_ok=True)
    # The daemon gives up a little before us, so its failure report (which pod) reaches us.
    cmd = [sys.executable, "-m", "netplane", "up", str(topology.source), "--name", name,
           "--foreground", "--detached", "--timeout", str(max(1.0, args.timeout - 2))]
    with open(names.log_file, "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, close_fds=True)
    print(f"creating cluster {name!r} from {topology.source} (daemon pid {proc.pid}, log {names.log_file})")
    deadline = time.monotonic() + args.timeout
    while True:
        state = read_state(names) or {}
        phase = state.get("phase")
        if phase == "ready":
            break
        if phase == "failed" or proc.poll() is not None:
            proc.wait(30)
            tail = _tail(names.log_file, 25)
            shutil.rmtree(names.state_dir, ignore_errors=True)
            network.teardown(names)
            print(f"netplane up: cluster {name!r} failed: {state.get('error', 'daemon exited')}", file=sys.stderr)
            print(tail, file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            print(f"netplane up: cluster {name!r} not ready after {args.timeout:.0f}s; tearing it down",
                  file=sys.stderr)
            print(_tail(names.log_file, 25), file=sys.stderr)
            _stop_daemon(names, proc.pid)
            network.teardown(names)
            shutil.rmtree(names.state_dir, ignore_errors=True)
            return 1
        time.sleep(0.2)
    print(f"cluster {name!r} is ready: {len(state['nodes'])} nodes, apiserver {state.get('apiserver')}")
    print(f"  export KUBECONFIG={names.kubeconfig}     # or: kubectl --kubeconfig $(netplane kubeconfig --name {name})")
    print("  kubectl get nodes,pods -o wide")
    print(f"  netplane exec POD -- CMD | netplane exec --node NODE -- CMD | netplane status --name {name}")
    print(f"  netplane down --name {name}")
    return 0


def _unsupported(topology) -> list[str]:
    """Topology settings the file format already has but this sandbox cannot provide yet: refuse
    them by name rather than silently running something else."""
    out = []
    if topology.proxy == "ebpf":
        out.append("proxy: 'ebpf' is not available yet (the eBPF backend is not implemented; "
                   "use 'iptables' or 'none')")
    return out


def _tail(path: str, lines: int) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop_daemon(names: ClusterNames, pid: int | None, timeout: float = 60.0) -> None:
    if not pid_alive(pid):
        return
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        except ChildProcessError:
            pass
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


# -- down / status / kubeconfig / exec --------------------------------------------------------------------


def run_down(args: argparse.Namespace) -> int:
    _require_root()
    try:
        name = _cluster_name(args)
    except ConfigError:
        if args.name is None:
            print("no sandbox cluster to remove")
            return 0
        raise
    names = ClusterNames(name)
    state = read_state(names) or {}
    _stop_daemon(names, state.get("pid"))
    removed = network.teardown(names)  # whatever the daemon did not (or could not) remove
    existed = os.path.isdir(names.state_dir)
    shutil.rmtree(names.state_dir, ignore_errors=True)
    left = network.leftovers(names)
    if left:
        raise NetplaneError(f"cluster {name!r}: could not remove {', '.join(left)} (see the log above)")
    if removed or existed or state:
        print(f"cluster {name!r} removed" + (f" (cleaned up leftovers: {', '.join(removed)})" if removed else ""))
    else:
        print(f"no cluster {name!r}")
    return 0


def run_kubeconfig(args: argparse.Namespace) -> int:
    names = ClusterNames(_cluster_name(args))
    if not os.path.exists(names.kubeconfig):
        raise ConfigError(f"cluster {names.cluster!r} has no kubeconfig (is it up?)")
    print(names.kubeconfig)
    return 0


def run_status(args: argparse.Namespace) -> int:
    from netplane.k8s import Client, load_kubeconfig

    names_list = [args.name] if args.name else clusters()
    if not names_list:
        print("no sandbox clusters")
        return 0
    rc = 0
    for name in names_list:
        names = ClusterNames(name)
        state = read_state(names) or {}
        alive = pid_alive(state.get("pid"))
        print(f"cluster {name}: phase {state.get('phase', 'unknown')}, daemon "
              f"{'running' if alive else 'NOT running'} (pid {state.get('pid')}), underlay {state.get('underlay')}")
        if not alive or state.get("phase") != "ready":
            rc = 1
            continue
        client = Client(load_kubeconfig(names.kubeconfig))
        print(f"  {'NODE':<12} {'IP':<15} {'POD CIDR':<18} READY")
        for node in client.list("/api/v1/nodes")["items"]:
            conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            print(f"  {node['metadata']['name']:<12} {state['nodes'].get(node['metadata']['name'], {}).get('ip', '?'):<15} "
                  f"{node.get('spec', {}).get('podCIDR', '-'):<18} {conds.get('Ready', '?')}")
        pods = client.list("/api/v1/pods")["items"]
        print(f"  {'NAMESPACE/POD':<32} {'NODE':<12} {'IP':<15} {'PHASE':<10} READY")
        for pod in pods:
            st = pod.get("status", {})
            conds = {c["type"]: c["status"] for c in st.get("conditions", [])}
            key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
            print(f"  {key:<32} {pod['spec'].get('nodeName', '-'):<12} {st.get('podIP', '-'):<15} "
                  f"{st.get('phase', '?'):<10} {conds.get('Ready', 'False')}")
    return rc


def run_exec(args: argparse.Namespace) -> int:
    _require_root()
    names = ClusterNames(_cluster_name(args))
    state = read_state(names)
    if not state:
        raise ConfigError(f"cluster {names.cluster!r} is not running")
    cmd = list(args.argv)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if (args.node or args.host) and args.pod:  # `exec --node N -- CMD`: CMD's first word landed in POD
        cmd = [args.pod, *cmd]
    if not cmd:
        raise ConfigError("nothing to run: netplane exec POD -- CMD...")
    if args.node:
        if args.node not in state["nodes"]:
            raise ConfigError(f"no node {args.node!r} in cluster {names.cluster!r} (nodes: {', '.join(state['nodes'])})")
        netns = names.node(args.node)
    elif args.host:
        if args.host not in state["hosts"]:
            raise ConfigError(f"no host {args.host!r} in cluster {names.cluster!r} (hosts: {', '.join(state['hosts']) or 'none'})")
        netns = names.host(args.host)
    else:
        if not args.pod:
            raise ConfigError("name a POD, or --node NODE / --host HOST")
        netns = _pod_netns(names, args.namespace, args.pod)
    # exec, so the exit code and signals pass straight through; `ip netns exec` also bind-mounts
    # the pod's /etc/netns/<ns>/{resolv.conf,hosts} over /etc, as the pod's own processes see them.
    os.execvp("ip", ["ip", "netns", "exec", netns, *cmd])
    return 127  # not reached


def _pod_netns(names: ClusterNames, namespace: str, pod: str) -> str:
    from netplane.errors import NotFoundError
    from netplane.k8s import Client, load_kubeconfig

    client = Client(load_kubeconfig(names.kubeconfig))
    try:
        obj = client.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")
    except NotFoundError:
        raise ConfigError(f'pod "{pod}" not found in namespace "{namespace}"') from None
    if (obj.get("spec") or {}).get("hostNetwork"):
        return names.node(obj["spec"]["nodeName"])
    netns = names.pod(obj["metadata"]["uid"])
    if netns not in network.netns_list():
        raise ConfigError(f"pod {namespace}/{pod} has no network namespace yet (phase "
                          f"{(obj.get('status') or {}).get('phase', '?')})")
    return netns
