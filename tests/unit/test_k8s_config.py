"""Kubeconfig / in-cluster loading and kubeconfig writing. No network."""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from netplane.errors import ConfigError
from netplane.k8s.config import (
    ClusterConfig,
    load_config,
    load_incluster,
    load_kubeconfig,
    write_kubeconfig,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_yaml(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def two_context_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "dev",
        "clusters": [
            {"name": "dev-cluster", "cluster": {
                "server": "https://10.0.0.1:6443/",
                "certificate-authority-data": b64(b"CA-PEM"),
            }},
            {"name": "prod-cluster", "cluster": {
                "server": "https://prod.example:443",
                "certificate-authority": "certs/ca.crt",
                "insecure-skip-tls-verify": False,
            }},
        ],
        "users": [
            {"name": "dev-user", "user": {
                "client-certificate-data": b64(b"CERT-PEM"),
                "client-key-data": b64(b"KEY-PEM"),
            }},
            {"name": "prod-user", "user": {"token": "static-token", "tokenFile": "token"}},
        ],
        "contexts": [
            {"name": "dev", "context": {"cluster": "dev-cluster", "user": "dev-user"}},
            {"name": "prod", "context": {"cluster": "prod-cluster", "user": "prod-user",
                                         "namespace": "shop"}},
        ],
    }
    doc.update(overrides)
    return doc


def test_current_context_with_data_fields(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "config", two_context_doc())
    cfg = load_kubeconfig(path)
    assert cfg.server == "https://10.0.0.1:6443"  # trailing slash dropped
    assert cfg.ca_data == b"CA-PEM"
    assert cfg.client_cert_data == b"CERT-PEM" and cfg.client_key_data == b"KEY-PEM"
    assert cfg.namespace == "default"
    assert cfg.bearer_token() is None
    assert str(path) in cfg.source and "dev" in cfg.source


def test_named_context_relative_paths_and_token_file(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.crt").write_text("CA")
    (tmp_path / "token").write_text("file-token-1\n")
    path = write_yaml(tmp_path / "config", two_context_doc())
    cfg = load_kubeconfig(path, context="prod")
    assert cfg.server == "https://prod.example:443"
    assert cfg.ca_file == str(tmp_path / "certs" / "ca.crt")  # relative to the kubeconfig
    assert cfg.token_file == str(tmp_path / "token")
    assert cfg.namespace == "shop"
    # The token file wins over the static token and is re-read, so rotation just works.
    assert cfg.bearer_token() == "file-token-1"
    (tmp_path / "token").write_text("file-token-2")
    assert cfg.bearer_token() == "file-token-2"


def test_relative_paths_resolve_against_kubeconfig_dir_not_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kdir = tmp_path / "kube"
    kdir.mkdir()
    (kdir / "certs").mkdir()
    (kdir / "certs" / "ca.crt").write_text("CA")
    (kdir / "token").write_text("t")
    path = write_yaml(kdir / "config", two_context_doc())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_kubeconfig(path, "prod").ca_file == str(kdir / "certs" / "ca.crt")


def test_kubeconfig_env_merges_files_first_wins(tmp_path: Path) -> None:
    a = write_yaml(tmp_path / "a", {
        "current-context": "one",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "contexts": [{"name": "one", "context": {"cluster": "c"}}],
    })
    b = write_yaml(tmp_path / "b", {
        "current-context": "two",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:2"}},
                     {"name": "d", "cluster": {"server": "http://127.0.0.1:3"}}],
        "users": [{"name": "u", "user": {"token": "tok"}}],
        "contexts": [{"name": "two", "context": {"cluster": "d", "user": "u",
                                                  "namespace": "ns2"}}],
    })
    env = {"KUBECONFIG": os.pathsep.join([str(tmp_path / "missing"), str(a), str(b)])}
    cfg = load_kubeconfig(environ=env)
    assert cfg.server == "http://127.0.0.1:1"  # a's current-context and a's cluster "c"
    cfg2 = load_kubeconfig(context="two", environ=env)
    assert cfg2.server == "http://127.0.0.1:3" and cfg2.token == "tok"
    assert cfg2.namespace == "ns2" and cfg2.bearer_token() == "tok"


def test_default_path_is_home_kube_config(tmp_path: Path) -> None:
    (tmp_path / ".kube").mkdir()
    write_yaml(tmp_path / ".kube" / "config", two_context_doc())
    assert load_kubeconfig(environ={"HOME": str(tmp_path)}).server == "https://10.0.0.1:6443"
    with pytest.raises(ConfigError, match="no kubeconfig found"):
        load_kubeconfig(environ={"HOME": str(tmp_path / "nobody")})


def _expect_error(tmp_path: Path, doc: Any, *needles: str, context: str | None = None) -> None:
    path = tmp_path / "config"
    if isinstance(doc, str):
        path.write_text(doc)
    else:
        write_yaml(path, doc)
    with pytest.raises(ConfigError) as info:
        load_kubeconfig(path, context)
    message = str(info.value)
    assert str(path) in message, message
    for needle in needles:
        assert needle in message, message


def test_errors_name_file_and_field(tmp_path: Path) -> None:
    doc = two_context_doc()
    del doc["clusters"][0]["cluster"]["server"]
    _expect_error(tmp_path, doc, "clusters[dev-cluster].cluster.server", "missing")

    doc = two_context_doc()
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = "!!not base64!!"
    _expect_error(tmp_path, doc, "certificate-authority-data", "base64")

    _expect_error(tmp_path, two_context_doc(), "certificate-authority", "ca.crt", "does not exist",
                  context="prod")
    _expect_error(tmp_path, two_context_doc(), "context 'nope'", context="nope")
    _expect_error(tmp_path, two_context_doc(**{"current-context": ""}), "current-context")

    doc = two_context_doc()
    doc["contexts"][0]["context"]["cluster"] = "ghost"
    _expect_error(tmp_path, doc, "contexts[dev].context.cluster", "'ghost'")

    doc = two_context_doc()
    doc["contexts"][0]["context"]["user"] = "ghost"
    _expect_error(tmp_path, doc, "contexts[dev].context.user", "'ghost'")

    doc = two_context_doc()
    del doc["users"][0]["user"]["client-key-data"]
    _expect_error(tmp_path, doc, "users[dev-user].user", "client-key")

    doc = two_context_doc()
    doc["users"][0]["user"] = {"exec": {"command": "aws"}}
    _expect_error(tmp_path, doc, "users[dev-user].user.exec", "not supported")

    doc = two_context_doc()
    doc["clusters"][0]["cluster"]["server"] = "ftp://x"
    _expect_error(tmp_path, doc, "server", "ftp://x")

    doc = two_context_doc()
    doc["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = "maybe"
    _expect_error(tmp_path, doc, "insecure-skip-tls-verify", "true or false")

    _expect_error(tmp_path, "clusters: [unclosed", "not valid YAML")
    _expect_error(tmp_path, "- just\n- a list\n", "mapping")
    _expect_error(tmp_path, {"clusters": {"name": "x"}}, "clusters must be a list",
                  context="x")


def test_quoted_false_is_false_and_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    doc = two_context_doc()
    doc["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = "false"
    doc["users"][0]["user"]["token"] = "s3cret-token"
    cfg = load_kubeconfig(write_yaml(tmp_path / "config", doc))
    assert cfg.insecure_skip_tls_verify is False
    assert "s3cret" not in repr(cfg) and "KEY-PEM" not in repr(cfg)


def test_explicit_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found") as info:
        load_kubeconfig(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value)


def _sa_dir(tmp_path: Path, namespace: str | None = "kube-system") -> Path:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token-1")
    (sa / "ca.crt").write_text("CA")
    if namespace is not None:
        (sa / "namespace").write_text(namespace)
    return sa


def test_incluster(tmp_path: Path) -> None:
    sa = _sa_dir(tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    cfg = load_incluster(environ=env, sa_dir=sa)
    assert cfg.server == "https://10.96.0.1:443"
    assert cfg.ca_file == str(sa / "ca.crt") and cfg.namespace == "kube-system"
    assert cfg.bearer_token() == "sa-token-1"
    (sa / "token").write_text("sa-token-2")  # kubelet rotated it
    assert cfg.bearer_token() == "sa-token-2"


def test_incluster_ipv6_default_namespace_and_errors(tmp_path: Path) -> None:
    sa = _sa_dir(tmp_path, namespace=None)
    cfg = load_incluster(environ={"KUBERNETES_SERVICE_HOST": "fd00::1",
                                  "KUBERNETES_SERVICE_PORT": "6443"}, sa_dir=sa)
    assert cfg.server == "https://[fd00::1]:6443" and cfg.namespace == "default"
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        load_incluster(environ={}, sa_dir=sa)
    (sa / "token").unlink()
    with pytest.raises(ConfigError, match="token"):
        load_incluster(environ={"KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "1"},
                       sa_dir=sa)


def test_load_config_prefers_incluster_then_kubeconfig(tmp_path: Path) -> None:
    sa = _sa_dir(tmp_path)
    kube = write_yaml(tmp_path / "kc", two_context_doc())
    pod_env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
               "HOME": str(tmp_path)}
    assert load_config(environ=pod_env, sa_dir=sa).server == "https://10.96.0.1:443"
    # An explicit path, or KUBECONFIG, wins over the service account.
    assert load_config(kube, environ=pod_env, sa_dir=sa).server == "https://10.0.0.1:6443"
    assert load_config(environ={**pod_env, "KUBECONFIG": str(kube)},
                       sa_dir=sa).server == "https://10.0.0.1:6443"
    # Outside a pod: the default kubeconfig.
    with pytest.raises(ConfigError, match="no kubeconfig found"):
        load_config(environ={"HOME": str(tmp_path)}, sa_dir=sa)


def test_write_kubeconfig_roundtrip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "kubeconfig"
    write_kubeconfig(path, "http://127.0.0.1:43210")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["kubeconfig"]  # no temp file left
    cfg = load_kubeconfig(path)
    assert cfg == ClusterConfig(server="http://127.0.0.1:43210", namespace="default")
    assert cfg.ssl_context() is None
    # Overwriting replaces the file atomically.
    write_kubeconfig(path, "http://127.0.0.1:1", name="other", namespace="ns", token="t")
    cfg = load_kubeconfig(path)
    assert (cfg.server, cfg.namespace, cfg.bearer_token()) == ("http://127.0.0.1:1", "ns", "t")
    with pytest.raises(ConfigError):
        write_kubeconfig(path, "127.0.0.1:1")


def test_write_kubeconfig_accepted_by_official_client(tmp_path: Path) -> None:
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    path = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:43210", namespace="x")
    configuration = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(path), client_configuration=configuration)
    assert configuration.host == "http://127.0.0.1:43210"
    contexts, active = k8s_config.list_kube_config_contexts(config_file=str(path))
    assert active["name"] == "netplane" and active["context"]["namespace"] == "x"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_write_kubeconfig_accepted_by_kubectl(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:43210")
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(path), "config", "view", "--minify", "-o", "json"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    view = json.loads(out)
    assert view["clusters"][0]["cluster"]["server"] == "http://127.0.0.1:43210"
    assert view["current-context"] == "netplane"


def test_ssl_context_insecure_and_plain(tmp_path: Path) -> None:
    assert ClusterConfig(server="http://127.0.0.1:1").ssl_context() is None
    ctx = ClusterConfig(server="https://127.0.0.1:1", insecure_skip_tls_verify=True).ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    with pytest.raises(ConfigError, match="TLS"):
        ClusterConfig(server="https://127.0.0.1:1", ca_data=b"not a pem").ssl_context()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_ssl_context_with_ca_and_client_cert_data(tmp_path: Path) -> None:
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=netplane-test", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True, timeout=60,
    )
    kube = write_yaml(tmp_path / "config", {
        "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443",
                                                "certificate-authority-data": b64(crt.read_bytes())}}],
        "users": [{"name": "u", "user": {"client-certificate-data": b64(crt.read_bytes()),
                                         "client-key-data": b64(key.read_bytes())}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    })
    ctx = load_kubeconfig(kube).ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.get_ca_certs()[0]["subject"] == ((("commonName", "netplane-test"),),)
    # The same material by file path.
    cfg = ClusterConfig(server="https://127.0.0.1:6443", ca_file=str(crt),
                        client_cert_file=str(crt), client_key_file=str(key))
    assert cfg.ssl_context() is not None
