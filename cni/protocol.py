"""The CNI protocol, pure: parse and validate one plugin invocation, build results and errors.

Everything here works on values (env mapping, stdin bytes, dicts) and does no I/O, so the agent,
the tests and the sandbox share one implementation of the spec (cni.md §1). The validation order
and messages follow libcni's `skel` (the code every reference plugin runs through), so netplane
fails the same way a reference plugin would.

## The shim ↔ agent contract (`cni/shim/netplane` ↔ `netplane agent`)

The shim POSTs to `http://netplane-agent/v1/cni` over the agent's unix socket
(`Content-Type: application/json`)::

    {"env": {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "…", "CNI_NETNS": "…",
             "CNI_IFNAME": "eth0", "CNI_ARGS": "…", "CNI_PATH": "…"},
     "stdin": "<base64 of the exact stdin bytes>"}

All six env keys are always present; an unset variable is sent as "" (which is how skel sees an
unset variable too). The agent answers **HTTP 200** with::

    {"exitCode": 0, "stdout": "<the text to print on stdout, or empty>"}

(`shim_reply`). The shim prints `stdout` verbatim and exits with `exitCode`. Any other answer
(no socket, refused, timeout, non-200, body not of this shape) means "agent unreachable": the shim
then answers error code 11 itself (50 for STATUS), and for DEL records the request in the spool.

## The pending-DEL spool (`parse_spooled_del`)

A DEL that arrives while the agent is unreachable succeeds at once (DEL must not block pod
teardown) and is recorded as one file per attachment in `NETPLANE_CNI_SPOOL` (default
`/run/netplane/cni-pending-del/`), named `<CNI_CONTAINERID>-<CNI_IFNAME>.json` (mode 0600, created
by mktemp in that directory and renamed into place, so a reader never sees a partial file). Its
content is byte-for-byte the request body above (the env object plus base64 stdin). A later DEL
of the same attachment replaces the file. The name is only a de-duplication key: "a-b" + "c" and
"a" + "b-c" share a name, so readers must take the identity from the content. The agent replays
each file as a DEL and then removes it; temporary files are named `.tmp.*` and must be skipped.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from netplane.cni import errors as codes
from netplane.cni.errors import CniError

# The versions we accept in configs and can produce results for. 0.1.0/0.2.0 are left out on
# purpose: their result shape (ip4/ip6) cannot describe a pod interface, and no runtime that
# ships with Kubernetes ≥1.24 negotiates them. The shim's VERSION answer must list the same set
# (tests/unit/test_cni_shim.py compares them).
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
_SUPPORTED_TEXT = json.dumps(list(SUPPORTED_VERSIONS))

COMMANDS = ("ADD", "CHECK", "DEL", "GC", "STATUS", "VERSION")

# skel's table, in skel's declaration order (missing vars are reported in this order).
# CNI_NETNS is optional on DEL: the namespace may already be gone.
_ENV_REQUIRED: tuple[tuple[str, frozenset[str]], ...] = (
    ("CNI_COMMAND", frozenset(COMMANDS)),
    ("CNI_CONTAINERID", frozenset({"ADD", "CHECK", "DEL"})),
    ("CNI_NETNS", frozenset({"ADD", "CHECK"})),
    ("CNI_IFNAME", frozenset({"ADD", "CHECK", "DEL"})),
    ("CNI_ARGS", frozenset()),
    ("CNI_PATH", frozenset({"ADD", "CHECK", "DEL", "GC", "STATUS"})),
)
SHIM_ENV_KEYS = tuple(name for name, _ in _ENV_REQUIRED)

# libcni utils: container IDs and network names (fullmatch: Python's `$` would accept a "\n").
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_VERSION_RE = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)")  # ASCII only, unlike \d
_MAX_IFNAME = 15  # IFNAMSIZ - 1

# CNI_ARGS keys netplane understands (containerd/CRI-O send these for every pod sandbox).
KNOWN_ARGS = ("IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID",
              "K8S_POD_UID")

GC_ATTACHMENT_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")

MTU_MIN, MTU_MAX = 576, 9000
DEFAULT_SOCKET = "/run/netplane/agent.sock"
DEFAULT_SPOOL = "/run/netplane/cni-pending-del"


@dataclass(frozen=True)
class CniRequest:
    """One validated plugin invocation.

    `args` holds every CNI_ARGS pair (unknown ones too when IgnoreUnknown allowed them);
    `config` is the stdin object as sent (prevResult included, raw); `prev_result` is that
    prevResult up-converted to the 1.x shape (see `parse_result`), or None; `valid_attachments`
    is GC's union of both attachment keys as ({"containerID", "ifname"}, …), empty otherwise.
    """

    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    path: str
    config: dict[str, Any]
    cni_version: str
    prev_result: dict[str, Any] | None = None
    valid_attachments: tuple[dict[str, str], ...] = field(default_factory=tuple)

    @property
    def network_name(self) -> str:
        return str(self.config.get("name", ""))


# --------------------------------------------------------------------------- versions


def parse_version(version: str) -> tuple[int, int, int]:
    """"1.0.0" → (1, 0, 0); anything else is a decode failure (code 6), as in libcni."""
    m = _VERSION_RE.fullmatch(version) if isinstance(version, str) else None
    if m is None:
        raise CniError(codes.DECODE_FAILURE, f"invalid cniVersion {version!r}",
                       "cniVersion must look like MAJOR.MINOR.PATCH")
    return int(m[1]), int(m[2]), int(m[3])


def version_at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


def version_reply() -> dict[str, Any]:
    """The VERSION answer; the shim prints the same JSON without asking the agent."""
    return {"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


# --------------------------------------------------------------------------- requests


def parse_request(env: Mapping[str, str], stdin: bytes) -> CniRequest:
    """Validate one invocation the way skel does; raises CniError with the spec's code.

    Order (first failure wins): missing env (4) → unknown command (4) → stdin JSON (6) →
    network name (7) → container ID / ifname (4) → cniVersion (6 unparsable, 1 unsupported or
    too old for CHECK/GC/STATUS) → CNI_ARGS (2 unknown key, 4 malformed) → netplane's own fields
    (7) → prevResult (6) → GC attachments (7). VERSION never looks at stdin.
    """
    command = _env(env, "CNI_COMMAND")
    missing = [name for name, required in _ENV_REQUIRED
               if not _env(env, name) and (command in required or name == "CNI_COMMAND")]
    if missing:
        raise CniError(codes.INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    # skel checks the command after the config; we check it first so a typo in CNI_COMMAND is
    # reported as such instead of as a config error caused by a caller that sent no config.
    if command not in COMMANDS:
        raise CniError(codes.INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    if command == "VERSION":
        return CniRequest(command, "", "", "", {}, _env(env, "CNI_PATH"), {}, CURRENT_VERSION)

    config = decode_config(stdin)
    container_id, ifname = _env(env, "CNI_CONTAINERID"), _env(env, "CNI_IFNAME")
    if command in ("ADD", "CHECK", "DEL"):
        validate_container_id(container_id)
        validate_ifname(ifname)
    version = negotiate_version(config, command)
    args = parse_cni_args(_env(env, "CNI_ARGS")) if command in ("ADD", "CHECK", "DEL") else {}
    # DEL must succeed whenever it can identify the attachment (spec: best effort; a DEL that
    # fails on a field ADD never used would block pod teardown forever), so netplane's own
    # fields and prevResult are only enforced where they are used.
    strict = command != "DEL"
    if strict:
        validate_plugin_fields(config)
    prev_result = _prev_result(config, strict=strict) if command in ("ADD", "CHECK", "DEL") else None
    attachments = parse_gc_attachments(config) if command == "GC" else ()
    return CniRequest(
        command=command, container_id=container_id, netns=_env(env, "CNI_NETNS"), ifname=ifname,
        args=args, path=_env(env, "CNI_PATH"), config=config, cni_version=version,
        prev_result=prev_result, valid_attachments=attachments,
    )


def _env(env: Mapping[str, str], name: str) -> str:
    return str(env.get(name) or "")


def decode_config(stdin: bytes) -> dict[str, Any]:
    """stdin → the config object; 6 when it is not a JSON object, 7 for a bad `name`."""
    try:
        config = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(codes.DECODE_FAILURE, f"error unmarshall network config: {e}") from None
    if not isinstance(config, dict):
        raise CniError(codes.DECODE_FAILURE, "error unmarshall network config: not a JSON object",
                       f"got {type(config).__name__}")
    name = config.get("name")
    if name is not None and not isinstance(name, str):
        raise CniError(codes.DECODE_FAILURE, "error unmarshall network config: name must be a string",
                       f"name={name!r}")
    if not name:
        raise CniError(codes.INVALID_CONFIG, "missing network name")
    if not _NAME_RE.fullmatch(name):
        raise CniError(codes.INVALID_CONFIG, "invalid characters found in network name", name)
    return config


def validate_container_id(container_id: str) -> None:
    if not container_id:
        raise CniError(codes.UNKNOWN_CONTAINER, "missing containerID")
    if not _NAME_RE.fullmatch(container_id):
        raise CniError(codes.INVALID_ENV, "invalid characters in CNI_CONTAINERID", container_id)


def validate_ifname(ifname: str) -> None:
    """libcni's rules; the length is in bytes, like the kernel's IFNAMSIZ."""
    problem = None
    if not ifname:
        problem = "interface name is empty"
    elif len(ifname.encode()) > _MAX_IFNAME:
        problem = f"interface name is too long (at most {_MAX_IFNAME} bytes)"
    elif ifname in (".", ".."):
        problem = "interface name is . or .."
    elif any(c in "/:" or c.isspace() for c in ifname):
        problem = "interface name contains / or : or whitespace characters"
    if problem:
        raise CniError(codes.INVALID_ENV, f"CNI_IFNAME: {problem}", ifname)


def negotiate_version(config: Mapping[str, Any], command: str) -> str:
    """The config's cniVersion if we can serve `command` with it (skel's rules)."""
    version = config.get("cniVersion", "0.1.0")  # the spec's default for configs without one
    if not isinstance(version, str):
        raise CniError(codes.DECODE_FAILURE, "cniVersion must be a string", f"cniVersion={version!r}")
    parse_version(version)
    minimum = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(command)
    if minimum and not version_at_least(version, minimum):
        raise CniError(codes.INCOMPATIBLE_VERSION, f"config version does not allow {command}",
                       f"config is {version!r}, {command} needs {minimum} or newer")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(codes.INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version!r}, plugin supports {_SUPPORTED_TEXT}")
    return version


def parse_cni_args(text: str) -> dict[str, str]:
    """`K=V;K2=V2` → dict, libcni's LoadArgs semantics.

    Every pair must be exactly `K=V` (4). Keys outside KNOWN_ARGS are refused with code 2,
    naming key and value, unless `IgnoreUnknown` is 1/true (case-insensitive) anywhere in the
    string — containerd always sends it, so pods are never refused for extra runtime keys.
    """
    if not text:
        return {}
    out: dict[str, str] = {}
    unknown: list[str] = []
    for pair in text.split(";"):
        kv = pair.split("=")
        if len(kv) != 2:
            raise CniError(codes.INVALID_ENV, f"CNI_ARGS: invalid pair {pair!r}", text)
        key, value = kv
        if key not in KNOWN_ARGS:
            unknown.append(pair)
        out[key] = value
    ignore = out.get("IgnoreUnknown", "false").lower()
    if ignore not in ("1", "true", "0", "false"):
        raise CniError(codes.INVALID_ENV,
                       f"CNI_ARGS: error parsing value of pair 'IgnoreUnknown={out['IgnoreUnknown']}'",
                       "IgnoreUnknown must be 1, true, 0 or false")
    if unknown and ignore not in ("1", "true"):
        raise CniError(codes.UNSUPPORTED_FIELD, f"ARGS: unknown args {json.dumps(unknown)}",
                       "set IgnoreUnknown=1 to pass keys netplane does not know")
    return out


def validate_plugin_fields(config: Mapping[str, Any]) -> None:
    """netplane's own keys; every other key is allowed (runtimes add their own)."""
    if "mtu" in config and config["mtu"] is not None:
        mtu = config["mtu"]
        # bool is an int in Python; JSON `true` is not an MTU.
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not MTU_MIN <= mtu <= MTU_MAX:
            raise CniError(codes.INVALID_CONFIG, f"invalid mtu {json.dumps(mtu)}",
                           f"mtu must be an integer from {MTU_MIN} to {MTU_MAX}")
    if "socket" in config and config["socket"] is not None:
        sock = config["socket"]
        if not isinstance(sock, str) or not sock.startswith("/") or "\0" in sock:
            raise CniError(codes.INVALID_CONFIG, f"invalid socket {json.dumps(sock)}",
                           "socket must be an absolute path to the agent's unix socket")
    if "ipMasq" in config and config["ipMasq"] is not None and not isinstance(config["ipMasq"], bool):
        raise CniError(codes.INVALID_CONFIG, f"invalid ipMasq {json.dumps(config['ipMasq'])}",
                       "ipMasq must be true or false")


def _prev_result(config: Mapping[str, Any], *, strict: bool) -> dict[str, Any] | None:
    raw = config.get("prevResult")
    if raw is None:
        return None
    try:
        return parse_result(raw)
    except CniError:
        # The spec: on DEL "prevResult … may be empty, and that must not be an error".
        if strict:
            raise
        return None


def parse_gc_attachments(config: Mapping[str, Any]) -> tuple[dict[str, str], ...]:
    """Union of `cni.dev/valid-attachments` and the spec-v1.1.0 spelling `cni.dev/attachments`.

    libcni sends both. A JSON null (Go's nil slice) is an empty list. With neither key present
    we refuse (7) instead of treating it as "nothing is valid", which would release every pod.
    A malformed entry is refused for the same reason: skipping it could free a live pod's IP.
    """
    if not any(key in config for key in GC_ATTACHMENT_KEYS):
        raise CniError(codes.INVALID_CONFIG, "GC needs cni.dev/valid-attachments",
                       "refusing to garbage-collect without the list of valid attachments")
    seen: set[tuple[str, str]] = set()
    out: list[dict[str, str]] = []
    for key in GC_ATTACHMENT_KEYS:
        items = config.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise CniError(codes.INVALID_CONFIG, f"{key} must be a list", json.dumps(items)[:200])
        for i, item in enumerate(items):
            cid = item.get("containerID") if isinstance(item, dict) else None
            ifname = item.get("ifname") if isinstance(item, dict) else None
            if not isinstance(cid, str) or not cid or not isinstance(ifname, str) or not ifname:
                raise CniError(codes.INVALID_CONFIG,
                               f"{key}[{i}] must be an object with containerID and ifname",
                               json.dumps(item)[:200])
            if (cid, ifname) not in seen:
                seen.add((cid, ifname))
                out.append({"containerID": cid, "ifname": ifname})
    return tuple(out)


# --------------------------------------------------------------------------- results


def parse_result(raw: Any) -> dict[str, Any]:
    """A result (e.g. prevResult) of any supported version → the 1.x shape, validated.

    Up-conversion follows libcni (types/100 convertFrom04x): `ips[].version` is dropped,
    interfaces keep name/mac/sandbox (+ 1.1 extras when present), routes and dns are copied.
    Raises CniError(6) naming the bad field.
    """
    def bad(what: str) -> CniError:
        return CniError(codes.DECODE_FAILURE, f"could not parse prevResult: {what}")

    if not isinstance(raw, dict):
        raise bad("not an object")
    version = raw.get("cniVersion", CURRENT_VERSION)
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise bad(f"cniVersion {version!r}")
    out: dict[str, Any] = {"cniVersion": CURRENT_VERSION}
    interfaces = _list(raw, "interfaces", bad)
    out_ifs = []
    for i, intf in enumerate(interfaces):
        if not isinstance(intf, dict) or not isinstance(intf.get("name"), str):
            raise bad(f"interfaces[{i}] needs a name")
        out_ifs.append({k: v for k, v in intf.items()
                        if k in ("name", "mac", "mtu", "sandbox", "socketPath", "pciID")})
    if out_ifs:
        out["interfaces"] = out_ifs
    out_ips = []
    for i, ipc in enumerate(_list(raw, "ips", bad)):
        if not isinstance(ipc, dict):
            raise bad(f"ips[{i}] is not an object")
        try:
            ipaddress.ip_interface(ipc.get("address"))
            if ipc.get("gateway") is not None:
                ipaddress.ip_address(ipc["gateway"])
        except (ValueError, TypeError):
            raise bad(f"ips[{i}] address {ipc.get('address')!r}, gateway {ipc.get('gateway')!r}") from None
        idx = ipc.get("interface")
        if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int) or idx < 0):
            raise bad(f"ips[{i}].interface {idx!r}")
        out_ips.append({k: ipc[k] for k in ("interface", "address", "gateway") if ipc.get(k) is not None})
    if out_ips:
        out["ips"] = out_ips
    routes = [_route(r, f"routes[{i}]", bad) for i, r in enumerate(_list(raw, "routes", bad))]
    if routes:
        out["routes"] = routes
    dns = raw.get("dns")
    if dns is not None and not isinstance(dns, dict):
        raise bad("dns is not an object")
    if dns:
        out["dns"] = dict(dns)
    return out


def _list(raw: Mapping[str, Any], key: str, bad: Any) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad(f"{key} is not a list")
    return value


def _route(route: Any, where: str, bad: Any) -> dict[str, Any]:
    if not isinstance(route, dict):
        raise bad(f"{where} is not an object")
    try:
        ipaddress.ip_network(route.get("dst"), strict=False)
        if route.get("gw") is not None:
            ipaddress.ip_address(route["gw"])
    except (ValueError, TypeError):
        raise bad(f"{where} dst {route.get('dst')!r} / gw {route.get('gw')!r}") from None
    return dict(route)


def build_add_result(version: str, *, host_ifname: str, host_mac: str, pod_ifname: str,
                     pod_mac: str, netns: str, mtu: int, ip: str, prefixlen: int, gateway: str,
                     routes: Iterable[Mapping[str, Any]], dns: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
    """netplane's ADD result in the shape `version` defines (ptp-style: [host veth, pod eth0]).

    Chained plugins depend on this: bandwidth picks the interface *without* `sandbox` whose name
    is the pod veth's peer; tuning and portmap use the `sandbox` one and `ips[].interface` (1).
    """
    result: dict[str, Any] = {
        "cniVersion": CURRENT_VERSION,
        "interfaces": [
            {"name": host_ifname, "mac": host_mac, "mtu": int(mtu)},
            {"name": pod_ifname, "mac": pod_mac, "mtu": int(mtu), "sandbox": netns},
        ],
        "ips": [{"interface": 1, "address": f"{ip}/{int(prefixlen)}", "gateway": gateway}],
        "routes": [dict(r) for r in routes],
    }
    if dns:
        result["dns"] = dict(dns)
    return convert_result(result, version)


def convert_result(result: Mapping[str, Any], version: str) -> dict[str, Any]:
    """A 1.x-shaped result → `version`, with libcni's conversion rules.

    - 1.1.0: as is. 1.0.0: interface `mtu`/`socketPath`/`pciID` are 1.1 additions, dropped.
    - 0.4.0/0.3.1/0.3.0 (types/040, one shape for all three): interfaces keep only name, mac and
      sandbox; every ip gets `version` "4"/"6" from its address; routes are copied; `dns` is
      always present (Go's struct is never omitted, so 0.x results carry `"dns": {}`).
    1.x drops an empty dns (types/100 MarshalJSON). Anything older is code 1.
    """
    if version not in SUPPORTED_VERSIONS:
        raise CniError(codes.INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"cannot convert a result to {version!r}, supported: {_SUPPORTED_TEXT}")
    legacy = not version_at_least(version, "1.0.0")
    keep_if = (("name", "mac", "mtu", "sandbox", "socketPath", "pciID")
               if version_at_least(version, "1.1.0") else ("name", "mac", "sandbox"))
    out: dict[str, Any] = {"cniVersion": version}
    interfaces = [{k: intf[k] for k in keep_if if intf.get(k) not in (None, "")}
                  for intf in result.get("interfaces") or ()]
    if interfaces:
        out["interfaces"] = interfaces
    ips = []
    for ipc in result.get("ips") or ():
        entry: dict[str, Any] = {}
        if legacy:
            entry["version"] = "4" if ipaddress.ip_interface(ipc["address"]).version == 4 else "6"
        entry.update({k: ipc[k] for k in ("interface", "address", "gateway") if ipc.get(k) is not None})
        ips.append(entry)
    if ips:
        out["ips"] = ips
    routes = [dict(r) for r in result.get("routes") or ()]
    if routes:
        out["routes"] = routes
    dns = {k: v for k, v in dict(result.get("dns") or {}).items() if v not in (None, "", [])}
    if dns or legacy:
        out["dns"] = dns
    return out


def error_reply(err: CniError, version: str) -> dict[str, Any]:
    """The error JSON for stdout; `version` is the request's cniVersion (1.1.0 if unknown)."""
    return err.to_json(version or CURRENT_VERSION)


# --------------------------------------------------------------------------- shim ↔ agent


def shim_request(env: Mapping[str, str], stdin: bytes) -> dict[str, Any]:
    """The body the shim POSTs (and the spool file's content); see the module docstring."""
    return {"env": {k: str(env.get(k) or "") for k in SHIM_ENV_KEYS},
            "stdin": base64.b64encode(stdin).decode("ascii")}


def parse_shim_request(body: bytes) -> tuple[dict[str, str], bytes]:
    """The shim's request body → (env, stdin bytes). ValueError when malformed."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"shim request is not JSON: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("env"), dict):
        raise ValueError("shim request must be an object with an 'env' object")
    env = obj["env"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("shim request env must map strings to strings")
    b64 = obj.get("stdin") or ""
    if not isinstance(b64, str):
        raise ValueError("shim request stdin must be a base64 string")
    try:
        stdin = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"shim request stdin is not valid base64: {e}") from None
    return dict(env), stdin


def shim_reply(exit_code: int, stdout_obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """The agent's HTTP 200 body: what the shim prints and the exit code it returns."""
    code = int(exit_code)
    if not 0 <= code <= 255:
        raise ValueError(f"exit code {code} is not a process exit status")
    text = json.dumps(stdout_obj, separators=(",", ":")) if stdout_obj is not None else ""
    return {"exitCode": code, "stdout": text}


def parse_spooled_del(data: bytes) -> CniRequest:
    """A pending-DEL spool file → the DEL to replay.

    The env is validated like any DEL (container ID and ifname, 4). The stdin config is parsed
    with the usual rules when possible. When that fails (some runtimes send DEL without a config,
    or CNI_ARGS/cniVersion would be refused) the runtime has already been told "success", so the
    request is still returned: the config as far as it decodes (else {}), cni_version 1.1.0 unless
    the config names a supported one, unparsable CNI_ARGS dropped. Releasing by
    (containerID, ifname) needs nothing more.
    """
    try:
        env, stdin = parse_shim_request(data)
    except ValueError as e:
        raise CniError(codes.DECODE_FAILURE, f"unreadable pending DEL: {e}") from None
    if _env(env, "CNI_COMMAND") != "DEL":
        raise CniError(codes.INVALID_ENV, "pending DEL file is not a DEL",
                       f"CNI_COMMAND={_env(env, 'CNI_COMMAND')!r}")
    container_id, ifname = _env(env, "CNI_CONTAINERID"), _env(env, "CNI_IFNAME")
    validate_container_id(container_id)
    validate_ifname(ifname)
    try:
        return parse_request({**env, "CNI_PATH": _env(env, "CNI_PATH") or "/opt/cni/bin"}, stdin)
    except CniError:
        pass  # the runtime already got success; nobody could act on this error any more
    try:
        config = decode_config(stdin)
    except CniError:
        config = {}
    version = config.get("cniVersion")
    return CniRequest(
        command="DEL", container_id=container_id, netns=_env(env, "CNI_NETNS"), ifname=ifname,
        args=_lenient_args(_env(env, "CNI_ARGS")), path=_env(env, "CNI_PATH"), config=config,
        cni_version=version if version in SUPPORTED_VERSIONS else CURRENT_VERSION,
    )


def _lenient_args(text: str) -> dict[str, str]:
    try:
        return parse_cni_args(text)
    except CniError:
        return {}
