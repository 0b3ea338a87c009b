"""Where the apiserver is and how to authenticate to it.

Three sources, one value (`ClusterConfig`):

* a kubeconfig file (`load_kubeconfig`): what kubectl uses; KUBECONFIG may list several files,
  merged the way kubectl merges them (the first file to define a name or current-context wins);
* the pod's service account (`load_incluster`): what a DaemonSet like netplane uses in a cluster;
* `load_config()` picks between them.

`write_kubeconfig` writes the file the embedded apiserver hands to kubectl and to the Python
clients. Every problem is a `ConfigError` that names the file and the field, because "invalid
kubeconfig" on its own sends people hunting through YAML.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from netplane.errors import ConfigError

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """How to reach one apiserver. `*_data` fields hold PEM bytes, `*_file` fields hold paths.

    A `token_file` is re-read on every request (see `bearer_token`) because projected service
    account tokens rotate underneath a running process.
    """

    server: str
    ca_data: bytes | None = None
    ca_file: str | None = None
    client_cert_data: bytes | None = None
    client_cert_file: str | None = None
    # Secrets stay out of repr() so logging a config never leaks them.
    client_key_data: bytes | None = field(default=None, repr=False)
    client_key_file: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    insecure_skip_tls_verify: bool = False
    namespace: str = "default"
    # Where this came from ("kubeconfig /root/.kube/config context kind", "in-cluster"), for errors.
    source: str = field(default="", compare=False)

    @property
    def is_https(self) -> bool:
        return urlsplit(self.server).scheme == "https"

    def bearer_token(self) -> str | None:
        """The token to send now: the file's current content wins over a static token."""
        if self.token_file:
            try:
                text = Path(self.token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{self.source or 'config'}: cannot read token file "
                                  f"{self.token_file}: {exc.strerror or exc}") from exc
            if text:
                return text
        return self.token or None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS settings for an https server; None for plain http."""
        if not self.is_https:
            return None
        where = self.source or self.server
        try:
            if self.insecure_skip_tls_verify:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            elif self.ca_data or self.ca_file:
                ctx = ssl.create_default_context(
                    cafile=self.ca_file,
                    cadata=self.ca_data.decode("ascii", "replace") if self.ca_data else None,
                )
            else:
                ctx = ssl.create_default_context()
            cert_data = self.client_cert_data
            if cert_data is None and self.client_cert_file:
                cert_data = _read_bytes(self.client_cert_file, where, "client certificate")
            key_data = self.client_key_data
            if key_data is None and self.client_key_file:
                key_data = _read_bytes(self.client_key_file, where, "client key")
            if cert_data and key_data:
                _load_cert_chain(ctx, cert_data, key_data)
        except ssl.SSLError as exc:
            raise ConfigError(f"{where}: bad TLS material: {exc}") from exc
        return ctx


def _read_bytes(path: str, where: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {what} {path}: {exc.strerror or exc}") from exc


def _load_cert_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl only loads client certificates from files; a private directory that disappears right
    # after loading keeps the key off disk for no longer than it takes to parse.
    with tempfile.TemporaryDirectory(prefix="netplane-tls-") as tmp:
        cert_path = os.path.join(tmp, "tls.crt")
        key_path = os.path.join(tmp, "tls.key")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert_path, key_path)


# --------------------------------------------------------------------------------------- kubeconfig


def default_kubeconfig_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    """KUBECONFIG's entries (in order, empty ones dropped), else ~/.kube/config."""
    env = os.environ if environ is None else environ
    value = env.get("KUBECONFIG", "")
    paths = [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    if paths:
        return paths
    return [Path(env.get("HOME") or Path.home()) / ".kube" / "config"]


@dataclass(slots=True)
class _Named:
    """One clusters/users/contexts entry plus the file it came from (relative paths need it)."""

    body: dict[str, Any]
    file: Path


@dataclass(slots=True)
class _Merged:
    clusters: dict[str, _Named] = field(default_factory=dict)
    users: dict[str, _Named] = field(default_factory=dict)
    contexts: dict[str, _Named] = field(default_factory=dict)
    current_context: str = ""
    files: list[Path] = field(default_factory=list)


def _read_kubeconfig(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"kubeconfig {path}: file not found") from exc
    except OSError as exc:
        raise ConfigError(f"kubeconfig {path}: cannot read: {exc.strerror or exc}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"kubeconfig {path}: not valid YAML: {exc}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path}: top level must be a mapping, got "
                          f"{type(doc).__name__}")
    return doc


def _merge(paths: Sequence[Path], *, require_all: bool) -> _Merged:
    merged = _Merged()
    for path in paths:
        if not require_all and not path.exists():
            # kubectl skips KUBECONFIG entries that do not exist; an explicit path must exist.
            continue
        doc = _read_kubeconfig(path)
        merged.files.append(path)
        for section, kind, target in (
            ("clusters", "cluster", merged.clusters),
            ("users", "user", merged.users),
            ("contexts", "context", merged.contexts),
        ):
            entries = doc.get(section) or []
            if not isinstance(entries, list):
                raise ConfigError(f"kubeconfig {path}: {section} must be a list")
            for i, entry in enumerate(entries):
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    raise ConfigError(f"kubeconfig {path}: {section}[{i}] has no name")
                body = entry.get(kind)
                if body is None:
                    body = {}
                if not isinstance(body, dict):
                    raise ConfigError(f"kubeconfig {path}: {section}[{entry['name']}].{kind} "
                                      f"must be a mapping")
                # First definition wins, as kubectl merges.
                target.setdefault(entry["name"], _Named(body, path))
        current = doc.get("current-context")
        if current and not merged.current_context:
            merged.current_context = str(current)
    return merged


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be a base64 string")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{where}: not valid base64: {exc}") from exc


def _yaml_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"  # a quoted "false" must not mean True
    raise ConfigError(f"{where}: must be true or false, not {value!r}")


def _file_field(value: Any, base: Path, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a file path")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base.parent / path
    if not path.is_file():
        raise ConfigError(f"{where}: file {path} does not exist")
    return str(path)


def load_kubeconfig(
    path: str | os.PathLike[str] | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> ClusterConfig:
    """Load one context of a kubeconfig (default: $KUBECONFIG, else ~/.kube/config)."""
    if path is not None:
        merged = _merge([Path(path).expanduser()], require_all=True)
    else:
        candidates = default_kubeconfig_paths(environ)
        merged = _merge(candidates, require_all=False)
        if not merged.files:
            names = ", ".join(str(p) for p in candidates)
            raise ConfigError(f"no kubeconfig found (looked at {names})")
    files = ", ".join(str(p) for p in merged.files)
    ctx_name = context or merged.current_context
    if not ctx_name:
        raise ConfigError(f"kubeconfig {files}: no current-context set and no context given")
    ctx = merged.contexts.get(ctx_name)
    if ctx is None:
        raise ConfigError(f"kubeconfig {files}: context {ctx_name!r} not found in contexts")
    where_ctx = f"kubeconfig {ctx.file}: contexts[{ctx_name}].context"
    cluster_name = ctx.body.get("cluster")
    if not cluster_name:
        raise ConfigError(f"{where_ctx}.cluster is missing")
    cluster = merged.clusters.get(str(cluster_name))
    if cluster is None:
        raise ConfigError(f"{where_ctx}.cluster: cluster {cluster_name!r} not found in clusters")
    user: _Named | None = None
    user_name = ctx.body.get("user")
    if user_name:
        user = merged.users.get(str(user_name))
        if user is None:
            raise ConfigError(f"{where_ctx}.user: user {user_name!r} not found in users")

    where_c = f"kubeconfig {cluster.file}: clusters[{cluster_name}].cluster"
    c = cluster.body
    server = c.get("server")
    if not isinstance(server, str) or not server:
        raise ConfigError(f"{where_c}.server is missing")
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where_c}.server: {server!r} is not an http(s) URL")
    ca_data = None
    ca_file = None
    if c.get("certificate-authority-data"):
        ca_data = _b64(c["certificate-authority-data"], f"{where_c}.certificate-authority-data")
    elif c.get("certificate-authority"):
        ca_file = _file_field(c["certificate-authority"], cluster.file,
                              f"{where_c}.certificate-authority")
    insecure = _yaml_bool(c.get("insecure-skip-tls-verify", False),
                          f"{where_c}.insecure-skip-tls-verify")

    cert_data = key_data = None
    cert_file = key_file = None
    token = token_file = None
    if user is not None:
        where_u = f"kubeconfig {user.file}: users[{user_name}].user"
        u = user.body
        for unsupported in ("exec", "auth-provider"):
            if u.get(unsupported):
                raise ConfigError(f"{where_u}.{unsupported} is not supported by netplane; "
                                  f"use a token, tokenFile or client certificate")
        if u.get("client-certificate-data"):
            cert_data = _b64(u["client-certificate-data"], f"{where_u}.client-certificate-data")
        elif u.get("client-certificate"):
            cert_file = _file_field(u["client-certificate"], user.file,
                                    f"{where_u}.client-certificate")
        if u.get("client-key-data"):
            key_data = _b64(u["client-key-data"], f"{where_u}.client-key-data")
        elif u.get("client-key"):
            key_file = _file_field(u["client-key"], user.file, f"{where_u}.client-key")
        has_cert = cert_data is not None or cert_file is not None
        has_key = key_data is not None or key_file is not None
        if has_cert and not has_key:
            raise ConfigError(f"{where_u}: client certificate given but client-key(-data) is "
                              f"missing")
        if has_key and not has_cert:
            raise ConfigError(f"{where_u}: client key given but client-certificate(-data) is "
                              f"missing")
        if u.get("token"):
            token = str(u["token"])
        if u.get("tokenFile"):
            token_file = _file_field(u["tokenFile"], user.file, f"{where_u}.tokenFile")

    namespace = ctx.body.get("namespace") or "default"
    return ClusterConfig(
        server=server.rstrip("/"),
        ca_data=ca_data,
        ca_file=ca_file,
        client_cert_data=cert_data,
        client_cert_file=cert_file,
        client_key_data=key_data,
        client_key_file=key_file,
        token=token,
        token_file=token_file,
        insecure_skip_tls_verify=insecure,
        namespace=str(namespace),
        source=f"kubeconfig {ctx.file} context {ctx_name}",
    )


# --------------------------------------------------------------------------------------- in-cluster


def in_cluster_available(
    environ: Mapping[str, str] | None = None, sa_dir: str | os.PathLike[str] | None = None
) -> bool:
    """True when this process runs in a pod with a service account mounted."""
    env = os.environ if environ is None else environ
    token = Path(sa_dir or SERVICE_ACCOUNT_DIR) / "token"
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and token.is_file()


def load_incluster(
    *,
    environ: Mapping[str, str] | None = None,
    sa_dir: str | os.PathLike[str] | None = None,
) -> ClusterConfig:
    """The pod's own service account: env KUBERNETES_SERVICE_HOST/PORT plus the mounted
    token (re-read per request), ca.crt and namespace under `sa_dir`."""
    env = os.environ if environ is None else environ
    base = Path(sa_dir or SERVICE_ACCOUNT_DIR)
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    port = env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigError("in-cluster config: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
                          "must be set (not running in a pod?)")
    if not port.isdigit():
        raise ConfigError(f"in-cluster config: KUBERNETES_SERVICE_PORT={port!r} is not a port")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 service address
    token_path = base / "token"
    if not token_path.is_file():
        raise ConfigError(f"in-cluster config: service account token {token_path} not found")
    ca_path = base / "ca.crt"
    if not ca_path.is_file():
        raise ConfigError(f"in-cluster config: service account CA {ca_path} not found")
    namespace = "default"
    try:
        namespace = (base / "namespace").read_text(encoding="utf-8").strip() or "default"
    except OSError:
        pass  # the namespace file is optional; "default" is what client-go falls back to too
    return ClusterConfig(
        server=f"https://{host}:{port}",
        ca_file=str(ca_path),
        token_file=str(token_path),
        namespace=namespace,
        source="in-cluster service account",
    )


def load_config(
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    sa_dir: str | os.PathLike[str] | None = None,
) -> ClusterConfig:
    """An explicit kubeconfig wins; otherwise in-cluster when running in a pod; otherwise the
    default kubeconfig ($KUBECONFIG, ~/.kube/config)."""
    env = os.environ if environ is None else environ
    if kubeconfig is not None:
        return load_kubeconfig(kubeconfig, context, environ=env)
    if not env.get("KUBECONFIG") and in_cluster_available(env, sa_dir):
        cfg = load_incluster(environ=env, sa_dir=sa_dir)
        log.debug("using %s (%s)", cfg.source, cfg.server)
        return cfg
    return load_kubeconfig(None, context, environ=env)


# ------------------------------------------------------------------------------------------- write


def kubeconfig_document(
    server: str,
    name: str = "netplane",
    *,
    namespace: str = "default",
    ca_data: bytes | None = None,
    token: str | None = None,
    client_cert_data: bytes | None = None,
    client_key_data: bytes | None = None,
    insecure_skip_tls_verify: bool = False,
) -> dict[str, Any]:
    """The kubeconfig mapping `write_kubeconfig` writes (one cluster, user and context)."""
    cluster: dict[str, Any] = {"server": server}
    if ca_data:
        cluster["certificate-authority-data"] = base64.b64encode(ca_data).decode("ascii")
    if insecure_skip_tls_verify:
        cluster["insecure-skip-tls-verify"] = True
    user: dict[str, Any] = {}
    if token:
        user["token"] = token
    if client_cert_data and client_key_data:
        user["client-certificate-data"] = base64.b64encode(client_cert_data).decode("ascii")
        user["client-key-data"] = base64.b64encode(client_key_data).decode("ascii")
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": name, "cluster": cluster}],
        # An empty user (no credentials) is what the embedded apiserver needs; both kubectl and
        # the official Python client accept `user: {}`.
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name,
                      "context": {"cluster": name, "user": name, "namespace": namespace}}],
        "current-context": name,
    }


def write_kubeconfig(
    path: str | os.PathLike[str],
    server: str,
    name: str = "netplane",
    *,
    namespace: str = "default",
    ca_data: bytes | None = None,
    token: str | None = None,
    client_cert_data: bytes | None = None,
    client_key_data: bytes | None = None,
    insecure_skip_tls_verify: bool = False,
) -> Path:
    """Write a single-context kubeconfig atomically (temp file + rename) with mode 0600.

    Readers that poll for the file (tests, scripts waiting for the apiserver) never see it half
    written, and credentials are never readable by other users even for an instant.
    """
    target = Path(path).expanduser()
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"write kubeconfig {target}: server {server!r} is not an http(s) URL")
    doc = kubeconfig_document(
        server, name, namespace=namespace, ca_data=ca_data, token=token,
        client_cert_data=client_cert_data, client_key_data=client_key_data,
        insecure_skip_tls_verify=insecure_skip_tls_verify,
    )
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    directory = target.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ConfigError(f"write kubeconfig {target}: {exc.strerror or exc}") from exc
    try:
        # mkstemp already creates 0600; fchmod makes it explicit regardless of platform quirks.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ConfigError(f"write kubeconfig {target}: {exc.strerror or exc}") from exc
    return target

