"""Pure pieces of kubelet-lite that read a pod spec: names, resolv.conf and hosts files, container
environment and command lines, probe definitions, restart backoff.

Nothing here touches the system; `kubelet.py` feeds these with the pod dict from the apiserver.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from netplane.sandbox.names import ClusterNames

# The kubelet's limits for resolv.conf (pkg/kubelet/network/dns).
MAX_DNS_NAMESERVERS = 3
MAX_DNS_SEARCH_PATHS = 32
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _s(value: Any) -> str:
    return value if isinstance(value, str) else ""


# ------------------------------------------------------------------------------------- naming


def pod_netns_name(cluster: str, uid: str) -> str:
    """`np-<cluster>-p-<hash8 of uid>`: short enough for ip-netns and unique per pod."""
    return ClusterNames(cluster).pod(uid)


def pod_hostname(pod: Mapping[str, Any]) -> str:
    """spec.hostname, else the pod name cut to 63 characters without a trailing '-' or '.'."""
    spec = _d(pod.get("spec"))
    name = _s(spec.get("hostname")) or _s(_d(pod.get("metadata")).get("name"))
    if len(name) > 63:
        name = name[:63].rstrip("-.")
    return name


# ---------------------------------------------------------------------------------- resolv.conf


@dataclass(frozen=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def render(self) -> str:
        lines = [f"nameserver {ns}" for ns in self.nameservers]
        if self.searches:
            lines.append("search " + " ".join(self.searches))
        if self.options:
            lines.append("options " + " ".join(self.options))
        return "\n".join(lines) + "\n"


def parse_resolv_conf(text: str) -> ResolvConf:
    nameservers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if fields[0] == "nameserver" and len(fields) > 1:
            nameservers.append(fields[1])
        elif fields[0] in ("search", "domain"):
            searches = fields[1:]  # the last search/domain line wins, as in glibc
        elif fields[0] == "options":
            options.extend(fields[1:])
    return ResolvConf(tuple(nameservers), tuple(searches), tuple(options))


def _dedupe(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(x for x in items if x))


def _merge_options(base: Sequence[str], extra: Sequence[Mapping[str, Any]]) -> list[str]:
    """dnsConfig.options override options of the same name (kubelet's mergeDNSOptions)."""
    merged: dict[str, str] = {}
    for opt in base:
        name, sep, value = opt.partition(":")
        merged[name] = opt
    for opt in extra:
        name = _s(_d(opt).get("name"))
        if not name:
            continue
        value = _d(opt).get("value")
        merged[name] = f"{name}:{value}" if isinstance(value, str) and value else name
    return list(merged.values())


def effective_dns_policy(pod: Mapping[str, Any]) -> str:
    """ClusterFirst falls back to Default for hostNetwork pods, as the kubelet does."""
    spec = _d(pod.get("spec"))
    policy = _s(spec.get("dnsPolicy")) or "ClusterFirst"
    if policy == "ClusterFirstWithHostNet":
        return "ClusterFirst"
    if policy == "ClusterFirst" and spec.get("hostNetwork") is True:
        return "Default"
    return policy


def pod_resolv_conf(
    pod: Mapping[str, Any], *, dns_ip: str, cluster_domain: str, host_resolv: str = ""
) -> ResolvConf:
    """The pod's resolv.conf per dnsPolicy (ClusterFirst/Default/None) and spec.dnsConfig.

    ClusterFirst: the cluster DNS IP and the `<ns>.svc.<domain> svc.<domain> <domain>` search
    path with ndots:5. The host's search domains are not appended: the sandbox host's domains mean
    nothing inside the cluster and would only add failing lookups.
    """
    spec = _d(pod.get("spec"))
    namespace = _s(_d(pod.get("metadata")).get("namespace")) or "default"
    policy = effective_dns_policy(pod)
    host = parse_resolv_conf(host_resolv)
    if policy == "ClusterFirst":
        nameservers = [dns_ip] if dns_ip else list(host.nameservers)
        domain = cluster_domain.strip(".")
        searches = [f"{namespace}.svc.{domain}", f"svc.{domain}", domain] if domain else []
        options = ["ndots:5"]
    elif policy == "Default":
        nameservers, searches, options = (list(host.nameservers), list(host.searches),
                                          list(host.options))
    else:  # "None": everything comes from dnsConfig
        nameservers, searches, options = [], [], []
    config = _d(spec.get("dnsConfig"))
    nameservers = _dedupe(nameservers + [_s(x) for x in _l(config.get("nameservers"))])
    searches = _dedupe(searches + [_s(x) for x in _l(config.get("searches"))])
    options = _merge_options(options, [_d(x) for x in _l(config.get("options"))])
    return ResolvConf(tuple(nameservers[:MAX_DNS_NAMESERVERS]),
                      tuple(searches[:MAX_DNS_SEARCH_PATHS]), tuple(options))


# ---------------------------------------------------------------------------------------- hosts

_HOSTS_HEADER = """# Kubernetes-managed hosts file.
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""


def pod_hosts_file(pod: Mapping[str, Any], pod_ips: Sequence[str], cluster_domain: str) -> str:
    """The kubelet-managed /etc/hosts: localhost lines, one line per pod IP naming the pod
    (`<ip> <hostname>.<subdomain>.<ns>.svc.<domain> <hostname>` with a subdomain), then
    spec.hostAliases."""
    spec = _d(pod.get("spec"))
    namespace = _s(_d(pod.get("metadata")).get("namespace")) or "default"
    hostname = pod_hostname(pod)
    subdomain = _s(spec.get("subdomain"))
    out = [_HOSTS_HEADER]
    for ip in pod_ips:
        if subdomain:
            fqdn = f"{hostname}.{subdomain}.{namespace}.svc.{cluster_domain.strip('.')}"
            out.append(f"{ip}\t{fqdn}\t{hostname}\n")
        else:
            out.append(f"{ip}\t{hostname}\n")
    aliases = [_d(a) for a in _l(spec.get("hostAliases"))]
    if aliases:
        out.append("\n# Entries added by HostAliases.\n")
        for alias in aliases:
            names = [_s(h) for h in _l(alias.get("hostnames")) if _s(h)]
            if _s(alias.get("ip")) and names:
                out.append(f"{alias['ip']}\t" + "\t".join(names) + "\n")
    return "".join(out)


# ---------------------------------------------------------------------- env and command lines

_EXPANSION = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined references are replaced, `$$` escapes a `$`,
    undefined references stay as written."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)
    return _EXPANSION.sub(sub, text)


_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref_value(path: str, pod: Mapping[str, Any], *, pod_ips: Sequence[str],
                    node_ip: str) -> str | None:
    """The value of a downward-API fieldRef, or None when the path is not supported."""
    meta = _d(pod.get("metadata"))
    spec = _d(pod.get("spec"))
    host_ips = [node_ip] if node_ip else []
    simple = {
        "metadata.name": _s(meta.get("name")),
        "metadata.namespace": _s(meta.get("namespace")),
        "metadata.uid": _s(meta.get("uid")),
        "spec.nodeName": _s(spec.get("nodeName")),
        "spec.serviceAccountName": _s(spec.get("serviceAccountName")),
        "status.podIP": pod_ips[0] if pod_ips else "",
        "status.podIPs": ",".join(pod_ips),
        "status.hostIP": node_ip,
        "status.hostIPs": ",".join(host_ips),
    }
    if path in simple:
        return simple[path]
    m = _LABEL_REF.match(path)
    if m:
        return _s(_d(meta.get(m.group(1))).get(m.group(2)))
    return None


def container_env(
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
    *,
    pod_ips: Sequence[str],
    node_ip: str,
    base_env: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """The process environment of a container and a list of problems (unsupported sources).

    `base_env` plays the image's environment (PATH at least); HOSTNAME is the pod's hostname;
    the container's `env` entries follow in order, each able to reference earlier ones.
    """
    env: dict[str, str] = {"PATH": DEFAULT_PATH}
    env.update(base_env or {})
    spec = _d(pod.get("spec"))
    if spec.get("hostNetwork") is not True:
        env["HOSTNAME"] = pod_hostname(pod)
    problems: list[str] = []
    for item in _l(container.get("env")):
        item = _d(item)
        name = _s(item.get("name"))
        if not name:
            continue
        if "value" in item or "valueFrom" not in item:
            env[name] = expand(_s(item.get("value")), env)
            continue
        ref = _d(_d(item.get("valueFrom")).get("fieldRef"))
        if ref:
            value = field_ref_value(_s(ref.get("fieldPath")), pod, pod_ips=pod_ips,
                                    node_ip=node_ip)
            if value is None:
                problems.append(f"env {name}: unsupported fieldPath {ref.get('fieldPath')!r}")
                continue
            env[name] = value
            continue
        source = next(iter(_d(item.get("valueFrom"))), "?")
        problems.append(f"env {name}: valueFrom.{source} is not supported by netplane")
    return env, problems


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded. There are no images, hence no entrypoint: a
    container without `command` runs its `args` as the command line."""
    argv = _l(container.get("command")) + _l(container.get("args"))
    return [expand(_s(a), env) for a in argv]


def wrap_argv(argv: Sequence[str], *, netns: str | None, cgroup_procs: str | None) -> list[str]:
    """The command line that runs `argv` in `netns` (via `ip netns exec`, which also bind-mounts
    /etc/netns/<netns>/* over /etc in a private mount namespace) after the process moved itself
    into the cgroup: the pid written to cgroup.procs is the one that then execs the workload."""
    out: list[str] = []
    if cgroup_procs:
        out += ["sh", "-c", 'echo $$ > "$0" && exec "$@"', cgroup_procs]
    if netns:
        out += ["ip", "netns", "exec", netns]
    return out + list(argv)


# ------------------------------------------------------------------------ CNI capability args

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_SUFFIX = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
MAX_UINT32 = 2**32 - 1


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity such as "10M" or "1Gi" as an integer (ValueError if malformed)."""
    m = _QUANTITY.match(text.strip())
    if not m:
        raise ValueError(f"invalid quantity {text!r}")
    return int(float(m.group(1)) * _SUFFIX[m.group(2)])


def cni_capability_args(pod: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """What containerd's CRI hands CNI as capability args (runtimeConfig) for a pod, and a list
    of problems: `portMappings` from container ports with a hostPort, `bandwidth` from the
    kubernetes.io/{ingress,egress}-bandwidth annotations (burst unlimited, as containerd)."""
    spec = _d(pod.get("spec"))
    out: dict[str, Any] = {}
    problems: list[str] = []
    mappings = []
    for c in _l(spec.get("containers")):
        for port in _l(_d(c).get("ports")):
            port = _d(port)
            host_port = port.get("hostPort")
            if isinstance(host_port, int) and host_port > 0:
                mapping = {"hostPort": host_port, "containerPort": port.get("containerPort"),
                           "protocol": (_s(port.get("protocol")) or "TCP").lower()}
                if _s(port.get("hostIP")):
                    mapping["hostIP"] = port["hostIP"]
                mappings.append(mapping)
    if mappings:
        out["portMappings"] = mappings
    annotations = _d(_d(pod.get("metadata")).get("annotations"))
    bandwidth: dict[str, int] = {}
    for direction in ("ingress", "egress"):
        text = annotations.get(f"kubernetes.io/{direction}-bandwidth")
        if not isinstance(text, str):
            continue
        try:
            bandwidth[f"{direction}Rate"] = parse_quantity(text)
            bandwidth[f"{direction}Burst"] = MAX_UINT32
        except ValueError as e:
            problems.append(f"annotation kubernetes.io/{direction}-bandwidth: {e}")
    if bandwidth:
        out["bandwidth"] = bandwidth
    return out, problems


# --------------------------------------------------------------------------------------- probes


class ProbeError(ValueError):
    """A probe definition netplane cannot run (named port unknown, no handler)."""


@dataclass(frozen=True)
class Probe:
    kind: str  # "exec" | "tcp" | "http"
    command: tuple[str, ...] = ()
    host: str = ""
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def resolve_port(port: Any, container: Mapping[str, Any]) -> int:
    """A probe's IntOrString port: a number, or the name of one of the container's ports."""
    if isinstance(port, bool):
        raise ProbeError(f"invalid port {port!r}")
    if isinstance(port, int):
        if 0 < port < 65536:
            return port
        raise ProbeError(f"port {port} out of range")
    if isinstance(port, str):
        if port.isdigit():
            return resolve_port(int(port), container)
        for p in _l(container.get("ports")):
            p = _d(p)
            if p.get("name") == port and isinstance(p.get("containerPort"), int):
                return int(p["containerPort"])
        raise ProbeError(f"port name {port!r} not found in the container's ports")
    raise ProbeError(f"invalid port {port!r}")


def parse_probe(probe: Any, container: Mapping[str, Any], *,
                liveness: bool = False) -> Probe | None:
    """A Probe from a container's readiness/liveness/startup probe dict (None when absent).

    Defaults as the API server sets them: period 10s, timeout 1s, success 1 (always 1 for
    liveness and startup probes), failure 3.
    """
    if not isinstance(probe, dict) or not probe:
        return None
    timing = dict(
        initial_delay=float(max(0, _int(probe.get("initialDelaySeconds"), 0))),
        period=float(max(1, _int(probe.get("periodSeconds"), 10))),
        timeout=float(max(1, _int(probe.get("timeoutSeconds"), 1))),
        success_threshold=1 if liveness else max(1, _int(probe.get("successThreshold"), 1)),
        failure_threshold=max(1, _int(probe.get("failureThreshold"), 3)),
    )
    if isinstance(probe.get("exec"), dict):
        command = tuple(_s(x) for x in _l(probe["exec"].get("command")))
        if not command:
            raise ProbeError("exec probe without a command")
        return Probe("exec", command=command, **timing)
    if isinstance(probe.get("tcpSocket"), dict):
        tcp = probe["tcpSocket"]
        return Probe("tcp", host=_s(tcp.get("host")), port=resolve_port(tcp.get("port"), container),
                     **timing)
    if isinstance(probe.get("httpGet"), dict):
        http = probe["httpGet"]
        scheme = (_s(http.get("scheme")) or "HTTP").upper()
        if scheme not in ("HTTP", "HTTPS"):
            raise ProbeError(f"unsupported httpGet scheme {scheme!r}")
        path = _s(http.get("path")) or "/"
        if not path.startswith("/"):
            path = "/" + path
        headers = tuple((_s(_d(h).get("name")), _s(_d(h).get("value")))
                        for h in _l(http.get("httpHeaders")) if _s(_d(h).get("name")))
        return Probe("http", host=_s(http.get("host")),
                     port=resolve_port(http.get("port"), container), path=path, scheme=scheme,
                     headers=headers, **timing)
    if isinstance(probe.get("grpc"), dict):
        raise ProbeError("grpc probes are not supported by netplane")
    raise ProbeError("probe has no exec, tcpSocket or httpGet handler")


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return int(value)


# ------------------------------------------------------------------------------ restart policy


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


def restart_delay(restart_count: int, initial: float, maximum: float) -> float:
    """The kubelet's crash-loop backoff: the first restart at once, then initial, 2x, ... max."""
    if restart_count <= 0:
        return 0.0
    return min(maximum, initial * (2 ** min(restart_count - 1, 30)))


def grace_period(pod: Mapping[str, Any]) -> float:
    """deletionGracePeriodSeconds when deleting, else spec.terminationGracePeriodSeconds (30)."""
    meta = _d(pod.get("metadata"))
    value = meta.get("deletionGracePeriodSeconds")
    if not isinstance(value, int) or isinstance(value, bool):
        value = _d(pod.get("spec")).get("terminationGracePeriodSeconds")
    if not isinstance(value, int) or isinstance(value, bool):
        value = 30
    return float(max(0, value))
