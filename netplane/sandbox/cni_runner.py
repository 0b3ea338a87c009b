"""Run CNI plugins the way containerd (through libcni) does.

What this reproduces, and where it comes from:

- Config discovery (libcni ``ConfFiles`` + containerd's go-cni loader): the lexicographically
  first ``*.conf`` / ``*.conflist`` / ``*.json`` in ``conf_dir`` decides; like containerd, an
  invalid first file is an error, not skipped. A single-plugin ``.conf`` becomes a one-plugin list.
- Version selection (spec 1.1): the highest of ``cniVersion`` ∪ ``cniVersions`` that this runner
  speaks. Before ADD/CHECK every plugin is asked ``CNI_COMMAND=VERSION`` (libcni
  ``ValidateNetworkList``); a plugin that cannot speak the selected version is a clear error
  instead of a plugin-side "incompatible CNI versions".
- Per-plugin stdin (libcni ``buildOneConfig``): the plugin object plus ``name`` and ``cniVersion``
  of the list, ``prevResult`` when there is one, and ``runtimeConfig`` holding those
  ``capability_args`` whose key the plugin declares in ``capabilities``.
- Env: the runner's own environment (PATH kept) plus CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
  CNI_IFNAME, CNI_ARGS (``K=V;K2=V2``, ``IgnoreUnknown=1`` first as containerd sends it) and
  CNI_PATH.
- ADD runs the chain in order and caches the final result in
  ``<cache_dir>/results/<net>-<cid>-<ifname>`` with libcni's ``cniCacheV1`` JSON shape. Any
  failure runs DEL for the whole chain (containerd tears a failed sandbox down) and re-raises
  the original error.
- DEL runs the chain in reverse with the cached result as ``prevResult`` (spec ≥ 0.4.0), using
  the cached config, CNI_ARGS and capability args so a changed conf dir cannot break teardown.
  The cache entry is removed last, only after every plugin succeeded.
- CHECK (spec ≥ 0.4.0) runs the chain in order with the cached result; nothing cached is an error.

Deliberate differences from libcni, each safer for a test data plane:
- all plugin binaries are located (and version-checked) before the first ADD runs, so a missing
  plugin never leaves half a chain behind;
- DEL removes the cache entry for configs older than 0.4.0 too (libcni leaves it behind, a leak);
- CHECK without a cached result is an error rather than a CHECK with no ``prevResult``.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netplane.errors import ConfigError, NetplaneError

log = logging.getLogger(__name__)

# libcni's constant (api.go `CNICacheV1`): the "kind" of a cache file it can read back.
CACHE_KIND = "cniCacheV1"
CONF_EXTENSIONS = (".conf", ".conflist", ".json")
# Versions whose result format has `ips[].address` (0.3.0+) and which libcni still speaks.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

# Spec error codes this runner raises itself (plugins bring their own codes).
CODE_INCOMPATIBLE_VERSION = 1
CODE_INVALID_ENV = 4
CODE_IO = 5
CODE_INVALID_CONFIG = 7
CODE_GENERIC = 999  # libcni wraps errors without a spec code as 999

# containerd's order; other keys follow sorted, so CNI_ARGS is deterministic.
_ARG_ORDER = ("IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
              "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID")
# libcni utils: container IDs and network names; interface names per ValidateInterfaceName.
_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_ETXTBSY_RETRIES = 5  # libcni retries "text file busy" 5 times, 1 s apart


class CniError(NetplaneError):
    """A CNI failure: a plugin's error JSON, or the runner's own check (config, exec, cache).

    ``code`` is the spec error code (1 version, 4 env, 7 config, 100+ plugin-specific, 999 for
    errors without one), ``plugin`` the plugin type or "" when no single plugin is to blame.
    """

    def __init__(self, msg: str, *, code: int = CODE_GENERIC, details: str = "",
                 plugin: str = "", command: str = ""):
        self.code = code
        self.msg = msg
        self.details = details
        self.plugin = plugin
        self.command = command
        super().__init__(self._text())

    def _text(self) -> str:
        where = f'plugin type="{self.plugin}"' if self.plugin else "cni"
        if self.command:
            where += f" failed ({self.command.lower()})"
        text = f"{where}: {self.msg}"
        if self.details:
            text += f": {self.details}"
        return f"{text} (code {self.code})"


class CniConfigError(CniError, ConfigError):
    """An unusable network configuration; the message names the file and the field."""

    def __init__(self, source: str, field: str, problem: str):
        super().__init__(f"{source}: {field}: {problem}", code=CODE_INVALID_CONFIG)
        self.source = source
        self.field = field


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class NetworkConfigList:
    """One loaded network: what libcni calls a NetworkConfigList."""

    name: str
    cni_version: str  # the selected version, injected into every plugin's stdin
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool
    source: str  # file path (or "cache:<file>") for messages
    raw: bytes  # the bytes libcni caches: the conflist file, or the wrapped .conf


def parse_version(version: str) -> tuple[int, int, int]:
    """'1.0.0' -> (1, 0, 0); ValueError for anything that is not x.y.z."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"invalid version {version!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def version_at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


def conf_files(conf_dir: str) -> list[Path]:
    """Config files in ``conf_dir`` in the order libcni's ConfFiles sorts them."""
    directory = Path(conf_dir)
    if not directory.is_dir():
        return []
    files = [p for p in directory.iterdir()
             if p.suffix in CONF_EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: p.name)


def load_conf_dir(conf_dir: str) -> NetworkConfigList:
    """The network containerd would use: the first config file, which must be valid."""
    files = conf_files(conf_dir)
    if not files:
        raise CniError(f"no network config found in {conf_dir} "
                       f"(looked for {', '.join('*' + e for e in CONF_EXTENSIONS)})",
                       code=CODE_INVALID_CONFIG)
    path = files[0]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CniError(f"cannot read {path}: {e}", code=CODE_IO) from e
    if path.suffix == ".conflist":
        return conf_list_from_bytes(data, str(path))
    return conf_list_from_conf_bytes(data, str(path))


def _decode_object(data: bytes, source: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniConfigError(source, "(file)", f"invalid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise CniConfigError(source, "(file)", "must be a JSON object")
    return obj


def _require_name(obj: Mapping[str, Any], source: str) -> str:
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise CniConfigError(source, "name", "missing or not a string")
    if not _ID_RE.match(name):
        raise CniConfigError(source, "name",
                             f"{name!r} must match {_ID_RE.pattern} (libcni network name rule)")
    return name


def select_version(obj: Mapping[str, Any], source: str) -> str:
    """Spec 1.1: the highest supported of ``cniVersion`` ∪ ``cniVersions``."""
    declared = obj.get("cniVersion")
    if not isinstance(declared, str) or not declared:
        raise CniConfigError(source, "cniVersion", "missing or not a string")
    extra = obj.get("cniVersions", [])
    if not isinstance(extra, list) or not all(isinstance(v, str) for v in extra):
        raise CniConfigError(source, "cniVersions", "must be a list of version strings")
    candidates = []
    for version in [declared, *extra]:
        try:
            parse_version(version)
        except ValueError as e:
            raise CniConfigError(source, "cniVersion", str(e)) from e
        if version in SUPPORTED_VERSIONS:
            candidates.append(version)
    if not candidates:
        raise CniConfigError(source, "cniVersion",
                             f"{declared!r} is not supported "
                             f"(this runner speaks {', '.join(SUPPORTED_VERSIONS)})")
    return max(candidates, key=parse_version)


def _check_plugin(plugin: Any, source: str, field: str) -> dict[str, Any]:
    if not isinstance(plugin, dict):
        raise CniConfigError(source, field, "must be a JSON object")
    ptype = plugin.get("type")
    if not isinstance(ptype, str) or not ptype:
        raise CniConfigError(source, f"{field}.type", "missing or not a string")
    # The type is joined to bin dirs: a path in it would run something outside them.
    if "/" in ptype or ptype in (".", ".."):
        raise CniConfigError(source, f"{field}.type", f"{ptype!r} is not a plugin name")
    caps = plugin.get("capabilities", {})
    if not isinstance(caps, dict):
        raise CniConfigError(source, f"{field}.capabilities", "must be an object")
    return plugin


def conf_list_from_bytes(data: bytes, source: str) -> NetworkConfigList:
    """Parse and validate a ``.conflist`` document."""
    obj = _decode_object(data, source)
    name = _require_name(obj, source)
    version = select_version(obj, source)
    plugins = obj.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CniConfigError(source, "plugins", "missing, not a list, or empty")
    checked = tuple(_check_plugin(p, source, f"plugins[{i}]") for i, p in enumerate(plugins))
    return NetworkConfigList(name=name, cni_version=version, plugins=checked,
                             disable_check=bool(obj.get("disableCheck", False)),
                             source=source, raw=data)


def conf_list_from_conf_bytes(data: bytes, source: str) -> NetworkConfigList:
    """Wrap a single-plugin ``.conf``/``.json`` into a list (libcni ConfListFromConf)."""
    obj = _decode_object(data, source)
    if "type" not in obj and "plugins" in obj:
        # containerd refuses this too ("network type not found"); say why.
        raise CniConfigError(source, "type",
                             "missing; this looks like a conflist: use the .conflist extension")
    name = _require_name(obj, source)
    _check_plugin(obj, source, "(plugin)")
    version = select_version(obj, source)
    wrapped = {"cniVersion": obj["cniVersion"], "name": name, "plugins": [obj]}
    raw = json.dumps(wrapped).encode()
    return NetworkConfigList(name=name, cni_version=version, plugins=(obj,),
                             disable_check=False, source=source, raw=raw)


# --------------------------------------------------------------------------- request building


def cni_args_pairs(args: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """CNI_ARGS pairs as containerd builds them: IgnoreUnknown=1 first, then the K8S_* keys.

    IgnoreUnknown matters: plugins parse CNI_ARGS into a fixed struct (host-local knows only
    IP) and fail with "ARGS: unknown args" on K8S_POD_NAME unless told to ignore extras.
    """
    if not args:
        return []
    merged = {"IgnoreUnknown": "1", **{str(k): str(v) for k, v in args.items()}}
    for key, value in merged.items():
        if not key or any(c in key + value for c in ";="):
            raise CniError(f"CNI_ARGS entry {key!r}={value!r} may not contain ';' or '='",
                           code=CODE_INVALID_ENV)
    rank = {k: i for i, k in enumerate(_ARG_ORDER)}
    keys = sorted(merged, key=lambda k: (rank.get(k, len(rank)), k))
    return [(k, merged[k]) for k in keys]


def cni_args_string(pairs: Sequence[Sequence[str]]) -> str:
    return ";".join(f"{k}={v}" for k, v in pairs)


def build_plugin_config(net: NetworkConfigList, plugin: Mapping[str, Any],
                        prev_result: Mapping[str, Any] | None,
                        capability_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The stdin document for one plugin (libcni buildOneConfig + injectRuntimeConfig)."""
    conf = dict(plugin)
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    runtime = {cap: capability_args[cap]
               for cap, enabled in (plugin.get("capabilities") or {}).items()
               if enabled and capability_args and cap in capability_args}
    if runtime:
        # libcni replaces runtimeConfig wholesale with the capability data.
        conf["runtimeConfig"] = runtime
    return conf


def result_ips(result: Mapping[str, Any] | None) -> list[str]:
    """Pod IPs without prefix length, in result order (0.3.0+ ``ips[].address``)."""
    if not result:
        return []
    ips = [str(entry.get("address", "")).split("/")[0]
           for entry in result.get("ips") or [] if isinstance(entry, dict)]
    if not ips:
        # 0.1/0.2 results ("ip4": {"ip": ...}): cheap to read, so a cached old result still works.
        for family in ("ip4", "ip6"):
            block = result.get(family)
            if isinstance(block, dict) and block.get("ip"):
                ips.append(str(block["ip"]).split("/")[0])
    return [ip for ip in ips if ip]


def _validate_attachment(container_id: str, ifname: str) -> None:
    if not container_id or not _ID_RE.match(container_id):
        raise CniError(f"invalid container ID {container_id!r}: must match {_ID_RE.pattern}",
                       code=CODE_INVALID_ENV)
    bad = (not ifname or len(ifname) > 15 or ifname in (".", "..")
           or any(c in ifname for c in "/:") or any(c.isspace() for c in ifname))
    if bad:
        raise CniError(f"invalid interface name {ifname!r}: 1-15 chars, no '/', ':' or spaces",
                       code=CODE_INVALID_ENV)


# --------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class CacheEntry:
    """One libcni result cache file, decoded."""

    path: Path
    network_name: str
    result: dict[str, Any] | None
    config: bytes | None
    cni_args: list[tuple[str, str]] | None
    capability_args: dict[str, Any] | None


def _decode_cache(path: Path) -> CacheEntry | None:
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        obj = None
        log.warning("ignoring unreadable CNI cache file %s: %s", path, e)
    if not isinstance(obj, dict):
        # Kept as an entry without a result so DEL still removes the file (libcni does too).
        return CacheEntry(path, "", None, None, None, None)
    if obj.get("kind") != CACHE_KIND:
        # A pre-cniCacheV1 file is just the raw result (libcni getLegacyCachedResult).
        legacy = obj if "cniVersion" in obj else None
        return CacheEntry(path, "", legacy, None, None, None)
    config = None
    if obj.get("config"):
        try:
            config = base64.b64decode(obj["config"])
        except ValueError:
            log.warning("CNI cache %s: undecodable config, using the conf dir", path)
    args = obj.get("cniArgs")
    return CacheEntry(path=path, network_name=str(obj.get("networkName", "")),
                      result=obj.get("result"), config=config,
                      cni_args=[(str(k), str(v)) for k, v in args] if args else None,
                      capability_args=obj.get("capabilityArgs"))


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file + rename so a crash never leaves half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- runner


@dataclass(frozen=True)
class _Invocation:
    """The per-call runtime values (libcni RuntimeConf)."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: list[tuple[str, str]]
    capability_args: dict[str, Any] | None


class CniRunner:
    """ADD/CHECK/DEL a network from ``conf_dir`` with plugins from ``bin_dirs``.

    ``exec_prefix`` runs every plugin inside another context, for the sandbox the node's
    namespace: ``["ip", "netns", "exec", "np-c-n-node1"]``. ``timeout`` applies per plugin run.
    Calls for different containers may run concurrently from several threads.
    """

    def __init__(self, conf_dir: str, bin_dirs: list[str], cache_dir: str,
                 exec_prefix: Sequence[str] = (), timeout: float = 30.0):
        self.conf_dir = str(conf_dir)
        self.bin_dirs = [str(d) for d in bin_dirs]
        self.cache_dir = str(cache_dir)
        self.exec_prefix = list(exec_prefix)
        self.timeout = timeout
        self._versions: dict[tuple[str, int, int], list[str]] = {}
        self._versions_lock = threading.Lock()

    # ---- public API

    def load(self) -> NetworkConfigList:
        """The network config in effect now (first file of conf_dir)."""
        return load_conf_dir(self.conf_dir)

    def validate(self, net: NetworkConfigList | None = None) -> list[str]:
        """Every plugin exists and speaks the list's version; returns declared capabilities."""
        net = net or self.load()
        caps: set[str] = set()
        for plugin in net.plugins:
            path = self.find_plugin(plugin["type"])
            self._check_version(plugin["type"], path, net)
            caps.update(c for c, on in (plugin.get("capabilities") or {}).items() if on)
        return sorted(caps)

    def add(self, container_id: str, netns_path: str, ifname: str = "eth0",
            cni_args: Mapping[str, str] | None = None,
            capability_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Attach the container; returns the final result (also cached)."""
        _validate_attachment(container_id, ifname)
        net = self.load()
        self.validate(net)
        call = _Invocation("ADD", container_id, netns_path, ifname, cni_args_pairs(cni_args),
                           dict(capability_args) if capability_args else None)
        try:
            result = self._add_chain(net, call)
            self._cache_write(net, call, result)
        except CniError:
            self._rollback(net, call)
            raise
        except OSError as e:
            self._rollback(net, call)
            raise CniError(f"failed to cache the result of network {net.name!r}: {e}",
                           code=CODE_IO) from e
        return result

    def check(self, container_id: str, netns_path: str, ifname: str = "eth0",
              cni_args: Mapping[str, str] | None = None,
              capability_args: Mapping[str, Any] | None = None) -> None:
        """Ask every plugin to verify the attachment against the cached ADD result."""
        _validate_attachment(container_id, ifname)
        entry = self._cache_read(container_id, ifname)
        if entry is None or entry.result is None:
            raise CniError(f"no cached result for container {container_id!r} ifname "
                           f"{ifname!r} in {self._results_dir()}: CHECK needs a prior ADD",
                           code=CODE_GENERIC)
        net = self._net_for(entry)
        if not version_at_least(net.cni_version, "0.4.0"):
            raise CniError(f"configuration version {net.cni_version!r} does not support "
                           "the CHECK command", code=CODE_INCOMPATIBLE_VERSION)
        if net.disable_check:
            log.debug("CHECK skipped: network %s sets disableCheck", net.name)
            return
        self.validate(net)
        call = self._call_from_cache("CHECK", container_id, netns_path, ifname, entry,
                                     cni_args, capability_args)
        for plugin in net.plugins:
            self._run_plugin(net, plugin, call, entry.result)

    def delete(self, container_id: str, netns_path: str, ifname: str = "eth0",
               cni_args: Mapping[str, str] | None = None,
               capability_args: Mapping[str, Any] | None = None) -> None:
        """Detach the container; idempotent. The cache entry goes only after success."""
        _validate_attachment(container_id, ifname)
        entry = self._cache_read(container_id, ifname)
        net = self._net_for(entry)
        call = self._call_from_cache("DEL", container_id, netns_path, ifname, entry,
                                     cni_args, capability_args)
        # libcni hands DEL the cached result only from spec 0.4.0 on.
        prev = entry.result if entry and version_at_least(net.cni_version, "0.4.0") else None
        self._del_chain(net, call, prev)
        if entry is not None:
            entry.path.unlink(missing_ok=True)

    def cached_result(self, container_id: str, ifname: str = "eth0") -> dict[str, Any] | None:
        """The result cached by the last successful ADD, or None."""
        entry = self._cache_read(container_id, ifname)
        return entry.result if entry else None

    def find_plugin(self, plugin_type: str) -> str:
        """Path of the plugin binary: the first bin dir holding it (libcni FindInPath)."""
        for directory in self.bin_dirs:
            candidate = os.path.join(directory, plugin_type)
            if os.path.isfile(candidate):
                return candidate
        raise CniError(f"failed to find plugin {plugin_type!r} in path {self.bin_dirs}",
                       plugin=plugin_type)

    # ---- chains

    def _add_chain(self, net: NetworkConfigList, call: _Invocation) -> dict[str, Any]:
        result: dict[str, Any] | None = None
        for plugin in net.plugins:
            out = self._run_plugin(net, plugin, call, result)
            result = _decode_result(out, plugin["type"])
        assert result is not None  # a list always has at least one plugin
        return result

    def _del_chain(self, net: NetworkConfigList, call: _Invocation,
                   prev: dict[str, Any] | None) -> None:
        for plugin in reversed(net.plugins):
            self._run_plugin(net, plugin, call, prev)

    def _rollback(self, net: NetworkConfigList, call: _Invocation) -> None:
        """Undo a failed ADD like containerd does: DEL the whole chain, nothing cached."""
        undo = _Invocation("DEL", call.container_id, call.netns, call.ifname, call.args,
                           call.capability_args)
        try:
            self._del_chain(net, undo, None)
        except CniError as e:
            log.warning("cleanup DEL after failed ADD of %s/%s failed: %s",
                        call.container_id, call.ifname, e)

    # ---- plugin execution

    def _run_plugin(self, net: NetworkConfigList, plugin: Mapping[str, Any],
                    call: _Invocation, prev: Mapping[str, Any] | None) -> bytes:
        ptype = plugin["type"]
        path = self.find_plugin(ptype)
        conf = build_plugin_config(net, plugin, prev, call.capability_args)
        env = {
            "CNI_COMMAND": call.command,
            "CNI_CONTAINERID": call.container_id,
            "CNI_NETNS": call.netns,
            "CNI_IFNAME": call.ifname,
            "CNI_ARGS": cni_args_string(call.args),
            "CNI_PATH": os.pathsep.join(self.bin_dirs),
        }
        started = time.monotonic()
        out = self._exec(path, ptype, call.command, json.dumps(conf).encode(), env)
        log.debug("cni %s %s cid=%s if=%s took %.0f ms", call.command, ptype,
                  call.container_id, call.ifname, (time.monotonic() - started) * 1000)
        return out

    def _exec(self, path: str, ptype: str, command: str, stdin: bytes,
              cni_env: Mapping[str, str]) -> bytes:
        """Run one plugin; stdout on success, CniError (from its error JSON) otherwise."""
        env = {**os.environ, **cni_env}
        for attempt in range(_ETXTBSY_RETRIES + 1):
            try:
                rc, out, err = self._spawn([*self.exec_prefix, path], stdin, env)
            except OSError as e:
                if e.errno == errno.ETXTBSY and attempt < _ETXTBSY_RETRIES:
                    time.sleep(1)  # the binary is being replaced; libcni waits too
                    continue
                raise CniError(f"cannot execute {path}: {e}", plugin=ptype,
                               command=command) from e
            except subprocess.TimeoutExpired as e:
                raise CniError(f"timed out after {self.timeout:g} s", plugin=ptype,
                               command=command) from e
            if rc != 0 and not out.strip() and b"text file busy" in err.lower() \
                    and attempt < _ETXTBSY_RETRIES:
                time.sleep(1)  # same, seen through an exec_prefix wrapper
                continue
            break
        if err.strip():
            log.debug("cni %s %s stderr: %s", command, ptype, err.decode(errors="replace"))
        if rc != 0:
            raise _plugin_error(out, err, rc, ptype, command)
        return out

    def _spawn(self, argv: list[str], stdin: bytes,
               env: Mapping[str, str]) -> tuple[int, bytes, bytes]:
        # A session of its own, so a timeout can kill the plugin and anything it forked.
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(env), start_new_session=True)
        try:
            out, err = proc.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise
        return proc.returncode, out, err

    def _check_version(self, ptype: str, path: str, net: NetworkConfigList) -> None:
        supported = self._supported_versions(ptype, path)
        if net.cni_version not in supported:
            raise CniError(f"plugin {path} does not support config version "
                           f"{net.cni_version!r} of {net.source} "
                           f"(it supports {', '.join(supported)})",
                           code=CODE_INCOMPATIBLE_VERSION, plugin=ptype)

    def _supported_versions(self, ptype: str, path: str) -> list[str]:
        """CNI_COMMAND=VERSION, remembered per binary (path, mtime, size)."""
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        with self._versions_lock:
            if key in self._versions:
                return self._versions[key]
        env = {"CNI_COMMAND": "VERSION", "CNI_PATH": os.pathsep.join(self.bin_dirs)}
        stdin = json.dumps({"cniVersion": SUPPORTED_VERSIONS[-1]}).encode()
        try:
            out = self._exec(path, ptype, "VERSION", stdin, env)
        except CniError as e:
            # libcni: a plugin that predates VERSION speaks 0.1.0 only.
            if "unknown CNI_COMMAND" not in e.msg:
                raise
            out = b'{"supportedVersions": ["0.1.0"]}'
        info = _decode_result(out, ptype)
        versions = info.get("supportedVersions") or [info.get("cniVersion", "0.1.0")]
        versions = [str(v) for v in versions]
        with self._versions_lock:
            self._versions[key] = versions
        return versions

    # ---- cache

    def _results_dir(self) -> Path:
        return Path(self.cache_dir) / "results"

    def _cache_path(self, network: str, container_id: str, ifname: str) -> Path:
        return self._results_dir() / f"{network}-{container_id}-{ifname}"

    def _cache_write(self, net: NetworkConfigList, call: _Invocation,
                     result: Mapping[str, Any]) -> None:
        doc: dict[str, Any] = {
            "kind": CACHE_KIND,
            "containerId": call.container_id,
            "config": base64.b64encode(net.raw).decode(),
            "ifName": call.ifname,
            "networkName": net.name,
        }
        # libcni's omitempty fields
        if call.netns:
            doc["netns"] = call.netns
        if call.args:
            doc["cniArgs"] = [list(p) for p in call.args]
        if call.capability_args:
            doc["capabilityArgs"] = call.capability_args
        doc["result"] = result
        _write_atomic(self._cache_path(net.name, call.container_id, call.ifname),
                      json.dumps(doc).encode())

    def _cache_read(self, container_id: str, ifname: str) -> CacheEntry | None:
        """The cache entry of (container, ifname); the current network's file wins."""
        try:
            current = self.load().name
        except CniError:
            current = None  # the conf dir may be gone; the cache alone must do for DEL
        if current:
            path = self._cache_path(current, container_id, ifname)
            if path.is_file():
                return _decode_cache(path)
        return self._cache_scan(container_id, ifname)

    def _cache_scan(self, container_id: str, ifname: str) -> CacheEntry | None:
        """Any network's entry (the conf dir changed its name since ADD)."""
        directory = self._results_dir()
        if not directory.is_dir():
            return None
        suffix = f"-{container_id}-{ifname}"
        for path in sorted(directory.iterdir()):
            if path.name.startswith(".") or not path.name.endswith(suffix):
                continue
            entry = _decode_cache(path)
            if entry and entry.result is not None:
                return entry
        return None

    def _net_for(self, entry: CacheEntry | None) -> NetworkConfigList:
        """The config an attachment was made with, else the current one."""
        if entry is not None and entry.config:
            try:
                return conf_list_from_bytes(entry.config, f"cache:{entry.path}")
            except CniError as e:
                log.warning("cached config unusable (%s); using %s", e, self.conf_dir)
        return self.load()

    def _call_from_cache(self, command: str, container_id: str, netns_path: str, ifname: str,
                         entry: CacheEntry | None, cni_args: Mapping[str, str] | None,
                         capability_args: Mapping[str, Any] | None) -> _Invocation:
        """Runtime values for CHECK/DEL: explicit ones win, else those ADD used (libcni)."""
        args = cni_args_pairs(cni_args) if cni_args is not None else \
            list(entry.cni_args or []) if entry else []
        caps = dict(capability_args) if capability_args is not None else \
            (entry.capability_args if entry else None)
        return _Invocation(command, container_id, netns_path or "", ifname, args, caps)


def _decode_result(out: bytes, ptype: str) -> dict[str, Any]:
    try:
        result = json.loads(out)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(f"invalid JSON output: {out[:200]!r}", details=str(e),
                       plugin=ptype) from e
    if not isinstance(result, dict):
        raise CniError(f"output is not a JSON object: {out[:200]!r}", plugin=ptype)
    return result


def _plugin_error(out: bytes, err: bytes, rc: int, ptype: str, command: str) -> CniError:
    """The plugin's error JSON from stdout; its stderr when stdout is empty (libcni)."""
    text = out.strip()
    if not text:
        # e.g. a Go panic: its first line says what, the rest (a stack trace) goes in details
        first, _, rest = err.decode(errors="replace").strip().partition("\n")
        return CniError(f"netplugin failed with exit {rc}: {first or '(no output)'}",
                        details=rest.strip()[:2000], plugin=ptype, command=command)
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return CniError(f"netplugin failed with exit {rc} but its error output is not JSON: "
                        f"{text[:200]!r}", plugin=ptype, command=command)
    if not isinstance(doc, dict):
        doc = {"msg": str(doc)}
    code = doc.get("code")
    return CniError(str(doc.get("msg") or f"exit {rc}"),
                    code=code if isinstance(code, int) else CODE_GENERIC,
                    details=str(doc.get("details") or ""), plugin=ptype, command=command)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the timed-out plugin's process group (we made it its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
