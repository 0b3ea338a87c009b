"""The sandbox's proxy command line and its per-node extra flags file (pure parts)."""

from __future__ import annotations

import sys

from netplane.sandbox.node_proxy import parse_extra_args, proxy_command, read_extra_args


def test_proxy_command_carries_the_node_settings() -> None:
    cmd = proxy_command("node1", backend="iptables", kubeconfig="/k", cluster_cidr="10.244.0.0/16",
                        node_ip="172.30.0.2", extra=["--masquerade-all"])
    assert cmd[:4] == [sys.executable, "-m", "netplane", "proxy"]
    flags = dict(zip(cmd[4::2], cmd[5::2]))
    assert flags["--backend"] == "iptables" and flags["--node-name"] == "node1"
    assert flags["--kubeconfig"] == "/k" and flags["--cluster-cidr"] == "10.244.0.0/16"
    assert flags["--metrics-addr"] == "172.30.0.2:10249" and flags["--healthz-addr"] == "0.0.0.0:10256"
    assert cmd[-1] == "--masquerade-all"


def test_extra_args_one_per_line_without_comments_and_blanks() -> None:
    text = "# node2 only\n--nodeport-addresses\n  172.30.0.3/32  \n\n--masquerade-all\n"
    assert parse_extra_args(text) == ["--nodeport-addresses", "172.30.0.3/32", "--masquerade-all"]
    assert parse_extra_args("") == []


def test_missing_extra_args_file_means_none(tmp_path) -> None:
    assert read_extra_args(str(tmp_path)) == []
    (tmp_path / "proxy.args").write_text("--sync-period\n3s\n")
    assert read_extra_args(str(tmp_path)) == ["--sync-period", "3s"]
