"""deploy/ (the kind install) without kind: the manifests parse; kubectl applies them to the
embedded apiserver, and a second apply changes nothing; the ClusterRole grants exactly the
permissions deploy/README.md explains; the init container installs the shim and the conflist by
temp file + rename; the conflist loads; and the agent command line in the DaemonSet (its one
home) is one `netplane agent` accepts, with the flags the sandbox passes to its agents.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from netplane.sandbox.cni_runner import CONF_EXTENSIONS, load_conf_dir

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFEST = DEPLOY / "netplane.yaml"
CONFLIST = DEPLOY / "10-netplane.conflist"
DOCKERFILE = DEPLOY / "Dockerfile"
SHIM = REPO / "cni" / "shim" / "netplane"
NETPLANE = Path(sys.executable).with_name("netplane")

NAMESPACE = "netplane-system"
NAME = "netplane-agent"

# (apiGroup, resource, verb): everything the agent may do, and nothing else.
GRANTS = {
    ("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "watch"),
    ("", "nodes/status", "patch"),
    ("", "services", "list"), ("", "services", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"), ("discovery.k8s.io", "endpointslices", "watch"),
    ("", "events", "create"),
}
CAPABILITIES = {"NET_ADMIN", "NET_RAW", "SYS_ADMIN"}

# (file baked into the image, where the init container puts it on the node), in install order.
INSTALLS = (
    ("/opt/netplane/cni/netplane", "/opt/cni/bin/netplane"),
    ("/opt/netplane/cni/10-netplane.conflist", "/etc/cni/net.d/10-netplane.conflist"),
)
# The plugins a kind node image ships in /opt/cni/bin (shared/reference/cni.md §4); netplane
# installs only its own shim, so every other plugin in the chain must be one of these.
KIND_NODE_PLUGINS = {"host-local", "loopback", "ptp", "portmap"}

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


def documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def find(kind: str) -> list[dict]:
    return [d for d in documents(MANIFEST) if d["kind"] == kind]


def one(kind: str) -> dict:
    found = find(kind)
    assert len(found) == 1, f"expected exactly one {kind} in {MANIFEST.name}, found {len(found)}"
    return found[0]


def pod_spec() -> dict:
    return one("DaemonSet")["spec"]["template"]["spec"]


def container(name: str, *, init: bool = False) -> dict:
    found = [c for c in pod_spec()["initContainers" if init else "containers"] if c["name"] == name]
    assert len(found) == 1, f"no single container {name!r}"
    return found[0]


def host_mounts(c: dict) -> dict[str, str]:
    """mountPath -> hostPath for the container's hostPath volume mounts."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    return {m["mountPath"]: volumes[m["name"]]["hostPath"]["path"]
            for m in c.get("volumeMounts", []) if "hostPath" in volumes[m["name"]]}


def agent_argv(node: str = "kind-worker") -> list[str]:
    """The agent container's command line as the kubelet runs it on node `node`."""
    agent = container("agent")
    env = {e["name"]: e for e in agent.get("env", [])}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    argv = [*agent.get("command", []), *agent.get("args", [])]
    return [a.replace("$(NODE_NAME)", node) for a in argv]


def under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def load_conf_dir_of(conflist: Path) -> Any:
    """The conflist loaded the way the runtime would, from a directory holding only it."""
    with tempfile.TemporaryDirectory(prefix="netplane-it-") as directory:
        shutil.copy(conflist, Path(directory) / Path(INSTALLS[1][1]).name)
        return load_conf_dir(directory)


def shim_default(name: str) -> str:
    """A `readonly NAME=value` default of the shim (cni/shim/netplane)."""
    if not SHIM.exists():
        pytest.skip(f"{SHIM.relative_to(REPO)} does not exist yet")
    match = re.search(rf"^readonly {name}=(\S+)$", SHIM.read_text(), re.MULTILINE)
    assert match, f"no `readonly {name}=` in {SHIM.relative_to(REPO)}"
    return match.group(1)


# -- every YAML document ------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_document_parses(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path.name} holds no document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path.name}: a document is not a mapping: {doc!r}"
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], path.name
        assert isinstance(doc.get("kind"), str) and doc["kind"], path.name
        if doc["apiVersion"].startswith("kind.x-k8s.io/"):
            continue  # kind's own config format: `name` at the top, no metadata
        assert isinstance(doc.get("metadata"), dict) and doc["metadata"].get("name"), \
            f"{path.name}: {doc['kind']} without metadata.name"


def test_manifest_holds_the_install() -> None:
    kinds = [d["kind"] for d in documents(MANIFEST)]
    assert kinds == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                     "DaemonSet"]  # in dependency order: kubectl applies them top to bottom
    labels = one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    for doc in documents(MANIFEST)[1:]:
        if doc["kind"] in ("ServiceAccount", "DaemonSet"):
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_kind_config() -> None:
    (cfg,) = documents(DEPLOY / "kind-config.yaml")
    assert (cfg["kind"], cfg["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    assert cfg["networking"]["disableDefaultCNI"] is True
    assert cfg["networking"]["podSubnet"] == "10.244.0.0/16"
    assert [n["role"] for n in cfg["nodes"]] == ["control-plane", "worker", "worker"]


# -- the embedded apiserver accepts them ----------------------------------------------------------


@pytest.mark.kubectl
def test_kubectl_applies_the_manifest_twice(kubectl: Kubectl) -> None:
    count = len(documents(MANIFEST))
    first = kubectl("apply", "-f", str(MANIFEST)).stdout.splitlines()
    assert len(first) == count and all(line.endswith(" created") for line in first), first
    second = kubectl("apply", "-f", str(MANIFEST)).stdout.splitlines()
    assert len(second) == count and all(line.endswith(" unchanged") for line in second), second

    listing = kubectl("get", "ds", "-n", NAMESPACE).stdout.splitlines()
    assert listing[0].split()[:2] == ["NAME", "DESIRED"]
    assert [line.split()[0] for line in listing[1:]] == [NAME]
    for args in (("get", "sa", NAME, "-n", NAMESPACE), ("get", "clusterrole", NAME),
                 ("get", "clusterrolebinding", NAME)):
        assert NAME in kubectl(*args).stdout

    # What the server stored is what the manifest says (no field lost on the way).
    stored = yaml.safe_load(kubectl("get", "clusterrole", NAME, "-o", "yaml").stdout)
    assert stored["rules"] == one("ClusterRole")["rules"]
    ds = yaml.safe_load(kubectl("get", "ds", NAME, "-n", NAMESPACE, "-o", "yaml").stdout)
    stored_agent = next(c for c in ds["spec"]["template"]["spec"]["containers"]
                        if c["name"] == "agent")
    assert stored_agent["command"] == container("agent")["command"]
    assert stored_agent["securityContext"] == container("agent")["securityContext"]


# -- least privilege ------------------------------------------------------------------------------


def test_cluster_role_grants_exactly_the_listed_verbs() -> None:
    granted: list[tuple[str, str, str]] = []
    for rule in one("ClusterRole")["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no URLs, no names
        for field in ("apiGroups", "resources", "verbs"):
            assert not any("*" in v for v in rule[field]), f"wildcard in {field}: {rule}"
        granted += [(g, r, v) for g in rule["apiGroups"] for r in rule["resources"]
                    for v in rule["verbs"]]
    assert len(granted) == len(set(granted)), "a permission is granted twice"
    assert set(granted) == GRANTS
    assert not find("Role") and not find("RoleBinding")


def test_binding_ties_the_role_to_the_daemonset_service_account() -> None:
    binding = one("ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": one("ClusterRole")["metadata"]["name"]}
    sa = one("ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"],
                                    "namespace": sa["namespace"]}]
    assert pod_spec()["serviceAccountName"] == sa["name"]


def test_daemonset_runs_unprivileged_with_named_capabilities() -> None:
    spec = pod_spec()
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert "hostPID" not in spec and "hostIPC" not in spec
    for c in [*spec["initContainers"], *spec["containers"]]:
        sc = c.get("securityContext", {})
        assert not sc.get("privileged"), f"{c['name']} is privileged"
        assert sc["capabilities"]["drop"] == ["ALL"]
        expected = CAPABILITIES if c["name"] == "agent" else set()
        assert set(sc["capabilities"].get("add", [])) == expected, c["name"]
    mounts = {m["mountPath"]: m for m in container("agent")["volumeMounts"]}
    # Pod namespaces are mounted by the runtime after the agent starts: they must propagate.
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    assert mounts["/lib/modules"]["readOnly"] is True
    assert host_mounts(container("agent"))["/run/xtables.lock"] == "/run/xtables.lock"


# -- the conflist -------------------------------------------------------------------------------


def test_conflist_loads() -> None:
    net = load_conf_dir_of(CONFLIST)
    assert net.name == "netplane"
    assert net.cni_version == "1.1.0"  # the highest of cniVersion + cniVersions
    types = [p["type"] for p in net.plugins]
    assert types == ["netplane", "portmap"]
    assert types[0] == Path(INSTALLS[0][1]).name  # the shim the init container installs
    assert set(types[1:]) <= KIND_NODE_PLUGINS, "chains a plugin kind nodes do not have"
    assert net.plugins[1]["capabilities"] == {"portMappings": True}
    # No mtu: the agent then uses underlay MTU - 50 (an "mtu" must be a number of bytes).
    assert isinstance(net.plugins[0].get("mtu", 0), int)


# -- installing the shim and the conflist -------------------------------------------------------


def test_init_container_installs_by_temp_file_and_rename() -> None:
    init = container("install-cni", init=True)
    assert init["command"][:2] == ["/bin/sh", "-ec"]  # -e: a failed cp stops before its mv
    lines = [shlex.split(line) for line in init["command"][2].splitlines()
             if line.strip() and not line.strip().startswith("#")]
    order = []
    for src, dst in INSTALLS:
        tmp = dst + ".tmp"
        assert Path(tmp).suffix not in CONF_EXTENSIONS  # the runtime never loads the temp file
        cp, mv = ["cp", src, tmp], ["mv", "-f", tmp, dst]
        assert cp in lines and mv in lines, f"{dst}: no `cp {src} {tmp}` + `mv -f {tmp} {dst}`"
        assert lines.index(cp) < lines.index(mv)
        # Nothing else writes the final name: only the rename creates it.
        assert [line for line in lines if dst in line] == [mv], dst
        order.append((lines.index(cp), lines.index(mv)))
    # The shim is in place before the conflist that names it appears.
    assert order[0][1] < order[1][0]
    # Both land on the node: each target directory is the same directory on the host.
    mounts = host_mounts(init)
    for _, dst in INSTALLS:
        directory = str(Path(dst).parent)
        assert mounts.get(directory) == directory, f"{directory} is not the host's"


def test_image_bakes_in_what_the_init_container_copies() -> None:
    text = DOCKERFILE.read_text()
    assert "FROM debian:12-slim" in text
    copies = {line.split()[-1]: line.split()[-2] for line in text.splitlines()
              if line.startswith("COPY ")}
    # The shim is the C one, built in the image's build stage from cni/shim/*.c.
    assert copies.get(INSTALLS[0][0]) == "/src/cni/shim/netplane-c"
    assert "-o cni/shim/netplane-c cni/shim/*.c" in text
    # The overlay fast path: compiled in the build stage (packaged as netplane.ebpf data, see
    # pyproject.toml), loaded with libbpf1 at run time.
    assert "-c ebpf/overlay_fastpath.bpf.c -o ebpf/build/overlay_fastpath.bpf.o" in text
    assert "build/*.bpf.o" in (REPO / "pyproject.toml").read_text()
    assert "libbpf1" in text.split("FROM debian:12-slim\n", 2)[-1]
    assert copies.get(INSTALLS[1][0]) == "deploy/10-netplane.conflist"
    images = {c["image"] for c in [*pod_spec()["initContainers"], *pod_spec()["containers"]]}
    assert len(images) == 1, "init container and agent run one image"


# -- the agent command line ---------------------------------------------------------------------


def test_agent_command_is_accepted_by_netplane_agent() -> None:
    argv = agent_argv()
    assert argv[:2] == ["netplane", "agent"]
    if not NETPLANE.exists():
        pytest.skip(f"{NETPLANE} is not installed")
    helped = subprocess.run([str(NETPLANE), "agent", "--help"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    if helped.returncode != 0 and "invalid choice" in helped.stderr:
        pytest.skip("`netplane agent` does not exist yet, so the DaemonSet's command line "
                    "cannot be checked against it")
    assert helped.returncode == 0, helped.stderr
    flags = [a.split("=", 1)[0] for a in argv[2:] if a.startswith("-")]
    assert flags, "the DaemonSet passes no flags"
    unknown = [f for f in flags if f not in helped.stdout.split()
               and not any(w.startswith(f + "=") or w.startswith(f + ",")
                           for w in helped.stdout.split())]
    assert not unknown, f"`netplane agent --help` does not list {unknown}"

    # The values parse too (argparse exits on a bad one), and fit the pod around them.
    from netplane.cli import build_parser

    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"`netplane {' '.join(argv[1:])}` does not parse (exit {e.code})")
    assert args.node_name == "kind-worker"
    mounts = host_mounts(container("agent"))
    run_dir = str(Path(args.socket).parent)
    assert mounts.get(run_dir) == run_dir, f"{run_dir} (the socket's directory) is not mounted"
    # IPAM state must survive an agent restart: on the host's tmpfs, not in the container.
    if getattr(args, "state_dir", None):
        assert any(under(args.state_dir, m) and mounts[m] == m for m in mounts), args.state_dir
    for directory in (args.cni_conf_dir, args.cni_bin_dir):
        assert mounts.get(directory) == directory, f"{directory} is not the host's"
    port = int(args.metrics_addr.rpartition(":")[2])
    ports = {p["name"]: p["containerPort"] for p in container("agent")["ports"]}
    assert ports["metrics"] == port
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container("agent")[probe]["httpGet"]
        assert (get["path"], ports.get(get["port"], get["port"])) == (path, port)

    # Last, as it needs the shim: the shim on the node dials the path the agent listens on (the
    # conflist's "socket", else the shim's default), and the DELs it records while the agent is
    # down land in the mounted directory the agent replays them from.
    dialled = load_conf_dir_of(CONFLIST).plugins[0].get("socket") or shim_default("DEFAULT_SOCKET")
    assert dialled == args.socket, f"the shim dials {dialled}, the agent listens on {args.socket}"
    assert under(shim_default("DEFAULT_SPOOL"), run_dir)


# Flags the sandbox passes that the DaemonSet leaves at their defaults, and why that is right.
SANDBOX_ONLY_FLAGS = {
    "--kubeconfig": "in the cluster the agent uses its service account",
    "--state-dir": "the default (/run/netplane/cni) is on the /run/netplane mount",
    "--cluster-cidr": "the default is kind-config.yaml's podSubnet (checked below)",
    "--proxy-metrics-addr": "the sandbox binds it on the node's underlay IP; kube-proxy's default "
                            "127.0.0.1:10249 is right on kind",
    "--healthz-addr": "the sandbox spells out kube-proxy's default 0.0.0.0:10256",
}


def test_daemonset_and_sandbox_run_the_same_agent_flags() -> None:
    daemon = pytest.importorskip("netplane.sandbox.daemon")
    agent_command = getattr(daemon, "agent_command", None)
    if agent_command is None:
        pytest.skip("the sandbox does not start `netplane agent` yet (no agent_command)")
    # The DaemonSet hosts the service proxy in the agent: the sandbox's `proxy: agent` form.
    sandbox = agent_command("node-1", kubeconfig="/k", socket="/s/agent.sock", state_dir="/s/cni",
                            conf_dir="/s/net.d", bin_dir="/s/bin", metrics_addr="10.0.0.1:9650",
                            cluster_cidr="10.244.0.0/16", proxy_metrics_addr="10.0.0.1:10249")
    assert "agent" in sandbox and sandbox[sandbox.index("agent") - 1] == "netplane", sandbox
    argv = agent_argv()
    ds_flags = {a for a in argv[2:] if a.startswith("--")}
    sandbox_flags = {a for a in sandbox if a.startswith("--")}
    assert ds_flags <= sandbox_flags, f"only the DaemonSet passes {ds_flags - sandbox_flags}"
    extra = sandbox_flags - ds_flags
    missing = extra - set(SANDBOX_ONLY_FLAGS)
    assert not missing, f"the DaemonSet leaves out {missing}"
    from netplane.cli import build_parser

    defaults = build_parser().parse_args(argv[1:])
    (kind_cfg,) = documents(DEPLOY / "kind-config.yaml")
    assert defaults.cluster_cidr == kind_cfg["networking"]["podSubnet"]


def test_the_agent_replaces_kube_proxy_on_kind() -> None:
    """The DaemonSet hosts the service proxy, kind runs no kube-proxy, and the agent reaches the
    apiserver without the `kubernetes` ClusterIP (which only its own proxy would program)."""
    from netplane.cli import build_parser

    args = build_parser().parse_args(agent_argv()[1:])
    assert args.proxy == "iptables"
    (kind_cfg,) = documents(DEPLOY / "kind-config.yaml")
    assert kind_cfg["networking"].get("kubeProxyMode") == "none"
    env = {e["name"]: e.get("value") for e in container("agent")["env"]}
    assert env.get("KUBERNETES_SERVICE_HOST") == f"{kind_cfg['name']}-control-plane"
    assert env.get("KUBERNETES_SERVICE_PORT") == "6443"
    ports = {p["name"]: p["containerPort"] for p in container("agent")["ports"]}
    assert ports["proxy-healthz"] == int(args.healthz_addr.rpartition(":")[2])
