"""netplane.cni.protocol and netplane.cni.errors: skel's validation rules, version negotiation,
result shapes and conversions, GC attachments, CNI_ARGS, and the shim ↔ agent helpers."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from netplane.cni import errors as codes
from netplane.cni.errors import CniError
from netplane.cni.protocol import (
    SHIM_ENV_KEYS,
    SUPPORTED_VERSIONS,
    CniRequest,
    build_add_result,
    convert_result,
    error_reply,
    parse_cni_args,
    parse_request,
    parse_result,
    parse_shim_request,
    parse_spooled_del,
    shim_reply,
    shim_request,
    version_reply,
)
from netplane.errors import NetplaneError

CID = "a1b2c3d4e5f6"
CONTAINERD_ARGS = ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
                   "K8S_POD_INFRA_CONTAINER_ID=a1b2c3d4e5f6;K8S_POD_UID=7f9c-11ee")


def env_for(command: str, **over: str) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": CID, "CNI_NETNS": "/var/run/netns/cni-1",
           "CNI_IFNAME": "eth0", "CNI_ARGS": CONTAINERD_ARGS, "CNI_PATH": "/opt/cni/bin"}
    if command in ("GC", "STATUS"):
        env = {"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}
    env.update(over)
    return {k: v for k, v in env.items() if v is not None}


def conf(version: str | None = "1.1.0", **extra: Any) -> bytes:
    obj: dict[str, Any] = {"name": "netplane", "type": "netplane", **extra}
    if version is not None:
        obj["cniVersion"] = version
    return json.dumps(obj).encode()


def gc_conf(**extra: Any) -> bytes:
    return conf("1.1.0", **{"cni.dev/valid-attachments": [], **extra})


def fails(env: dict[str, str], stdin: bytes, code: int, text: str = "") -> CniError:
    with pytest.raises(CniError) as e:
        parse_request(env, stdin)
    assert e.value.code == code, e.value
    assert text in e.value.msg, e.value.msg
    return e.value


# --------------------------------------------------------------------------- errors.py


def test_cni_error_json_and_identity() -> None:
    e = CniError(codes.INVALID_CONFIG, "invalid mtu 1", "mtu must be …")
    assert isinstance(e, NetplaneError)
    assert e.to_json("1.0.0") == {"cniVersion": "1.0.0", "code": 7, "msg": "invalid mtu 1",
                                  "details": "mtu must be …"}
    assert CniError(11, "later").to_json("1.1.0") == {"cniVersion": "1.1.0", "code": 11, "msg": "later"}
    assert e == CniError(7, "invalid mtu 1", "mtu must be …") and e != CniError(7, "x")
    assert "invalid mtu 1" in str(e) and "7" in str(e)


def test_spec_codes() -> None:
    assert (codes.INCOMPATIBLE_VERSION, codes.UNSUPPORTED_FIELD, codes.UNKNOWN_CONTAINER, codes.INVALID_ENV,
            codes.IO_FAILURE, codes.DECODE_FAILURE, codes.INVALID_CONFIG, codes.TRY_AGAIN_LATER,
            codes.NOT_AVAILABLE, codes.NOT_AVAILABLE_DEGRADED) == (1, 2, 3, 4, 5, 6, 7, 11, 50, 51)
    assert (codes.IPAM_FAILURE, codes.WIRING_FAILURE, codes.CHECK_FAILURE) == (101, 102, 103)


def test_error_reply() -> None:
    assert error_reply(CniError(4, "bad env", "CNI_IFNAME"), "0.4.0") == {
        "cniVersion": "0.4.0", "code": 4, "msg": "bad env", "details": "CNI_IFNAME"}
    assert error_reply(CniError(4, "bad env"), "")["cniVersion"] == "1.1.0"


# --------------------------------------------------------------------------- VERSION


def test_version_reply() -> None:
    assert version_reply() == {"cniVersion": "1.1.0",
                               "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    assert tuple(version_reply()["supportedVersions"]) == SUPPORTED_VERSIONS


def test_version_needs_only_the_command_and_ignores_stdin() -> None:
    req = parse_request({"CNI_COMMAND": "VERSION"}, b"\xff not json")
    assert req.command == "VERSION" and req.config == {}


# --------------------------------------------------------------------------- env vars


@pytest.mark.parametrize("command,required", [
    ("ADD", ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
    ("CHECK", ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
    ("DEL", ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"]),
    ("GC", ["CNI_COMMAND", "CNI_PATH"]),
    ("STATUS", ["CNI_COMMAND", "CNI_PATH"]),
    ("VERSION", ["CNI_COMMAND"]),
])
def test_required_env_per_verb(command: str, required: list[str]) -> None:
    # Everything but the command missing: all the others are listed at once, in skel's order.
    missing = [name for name in required if name != "CNI_COMMAND"]
    if missing:
        e = fails({"CNI_COMMAND": command}, conf(), 4)
        assert e.msg == f"required env variables [{','.join(missing)}] missing"
    stdin = gc_conf() if command == "GC" else conf()
    full = {name: ("/opt/cni/bin" if name == "CNI_PATH" else CID if name == "CNI_CONTAINERID"
                   else "eth0" if name == "CNI_IFNAME" else "/var/run/netns/x" if name == "CNI_NETNS"
                   else command) for name in required}
    assert parse_request(full, stdin).command == command  # exactly the required set is enough


def test_missing_env_names_everything_in_declaration_order() -> None:
    e = fails({"CNI_COMMAND": "ADD", "CNI_NETNS": "/x"}, conf(), 4)
    assert e.msg == "required env variables [CNI_CONTAINERID,CNI_IFNAME,CNI_PATH] missing"


def test_no_command_at_all() -> None:
    e = fails({}, conf(), 4)
    assert e.msg == "required env variables [CNI_COMMAND] missing"


def test_empty_values_count_as_missing() -> None:
    fails(env_for("ADD", CNI_IFNAME=""), conf(), 4, "[CNI_IFNAME]")


def test_del_does_not_need_a_netns() -> None:
    req = parse_request(env_for("DEL", CNI_NETNS=""), conf())
    assert req.netns == "" and req.command == "DEL"


def test_unknown_command() -> None:
    e = fails(env_for("ADD", CNI_COMMAND="GET"), conf(), 4)
    assert e.msg == "unknown CNI_COMMAND: GET"


@pytest.mark.parametrize("cid", ["-abc", "abc/def", "a b", "abc\n", "ü", ".hidden"])
def test_invalid_container_id(cid: str) -> None:
    e = fails(env_for("ADD", CNI_CONTAINERID=cid), conf(), 4, "CNI_CONTAINERID")
    assert e.details == cid


@pytest.mark.parametrize("ifname,problem", [
    ("x" * 16, "too long"), (".", ". or .."), ("..", ". or .."), ("a/b", "/ or :"), ("a:1", "/ or :"),
    ("a b", "whitespace"), ("a\tb", "whitespace"), ("ééééééééé", "too long"),  # 18 bytes
])
def test_invalid_ifname(ifname: str, problem: str) -> None:
    e = fails(env_for("ADD", CNI_IFNAME=ifname), conf(), 4, "CNI_IFNAME")
    assert problem in e.msg


def test_fifteen_byte_ifname_is_fine() -> None:
    assert parse_request(env_for("ADD", CNI_IFNAME="x" * 15), conf()).ifname == "x" * 15


# --------------------------------------------------------------------------- stdin / config


@pytest.mark.parametrize("stdin", [b"", b"not json", b"[1, 2]", b'"str"', b"\xff\xfe"])
def test_stdin_that_is_not_a_json_object(stdin: bytes) -> None:
    fails(env_for("ADD"), stdin, 6, "error unmarshall network config")


def test_missing_or_empty_name() -> None:
    fails(env_for("ADD"), json.dumps({"cniVersion": "1.0.0"}).encode(), 7, "missing network name")
    fails(env_for("ADD"), json.dumps({"cniVersion": "1.0.0", "name": ""}).encode(), 7, "missing network name")


def test_name_with_invalid_characters() -> None:
    e = fails(env_for("ADD"), json.dumps({"cniVersion": "1.0.0", "name": "my net"}).encode(), 7,
              "invalid characters found in network name")
    assert e.details == "my net"


def test_name_of_the_wrong_type_is_a_decode_failure() -> None:
    fails(env_for("ADD"), json.dumps({"cniVersion": "1.0.0", "name": 5}).encode(), 6)


def test_config_is_checked_before_container_id() -> None:
    # skel validates the network config before the container ID and the interface name.
    fails(env_for("ADD", CNI_CONTAINERID="bad id"), b"nope", 6)


def test_unknown_top_level_keys_are_allowed() -> None:
    req = parse_request(env_for("ADD"), conf(runtimeConfig={"portMappings": []}, foo={"bar": 1},
                                             ipam={"type": "host-local"}))
    assert req.config["foo"] == {"bar": 1}


def test_full_add_request() -> None:
    req = parse_request(env_for("ADD"), conf("1.0.0", mtu=1450, ipMasq=True, socket="/run/np.sock"))
    assert req == CniRequest(
        command="ADD", container_id=CID, netns="/var/run/netns/cni-1", ifname="eth0",
        args={"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0",
              "K8S_POD_INFRA_CONTAINER_ID": "a1b2c3d4e5f6", "K8S_POD_UID": "7f9c-11ee"},
        path="/opt/cni/bin",
        config={"name": "netplane", "type": "netplane", "mtu": 1450, "ipMasq": True,
                "socket": "/run/np.sock", "cniVersion": "1.0.0"},
        cni_version="1.0.0", prev_result=None, valid_attachments=())
    assert req.network_name == "netplane"
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.command = "DEL"  # type: ignore[misc]


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_supported_versions_are_accepted(version: str) -> None:
    assert parse_request(env_for("ADD"), conf(version)).cni_version == version


def test_missing_cni_version_is_0_1_0_and_unsupported() -> None:
    e = fails(env_for("ADD"), conf(None), 1)
    assert e.msg == "incompatible CNI versions"
    assert '"0.1.0"' in e.details or "'0.1.0'" in e.details


@pytest.mark.parametrize("version", ["0.2.0", "0.1.0", "2.0.0", "1.2.0"])
def test_unsupported_versions(version: str) -> None:
    fails(env_for("ADD"), conf(version), 1, "incompatible CNI versions")


@pytest.mark.parametrize("version", ["abc", "1.0", "1.0.0-rc1", "", "v1.0.0"])
def test_unparsable_versions_are_decode_failures(version: str) -> None:
    fails(env_for("ADD"), conf(version), 6)


def test_non_string_version_is_a_decode_failure() -> None:
    fails(env_for("ADD"), json.dumps({"name": "n", "cniVersion": 1.0}).encode(), 6)


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.2.0"])
def test_check_needs_0_4_0(version: str) -> None:
    e = fails(env_for("CHECK"), conf(version), 1)
    assert e.msg == "config version does not allow CHECK"


def test_check_with_0_4_0() -> None:
    assert parse_request(env_for("CHECK"), conf("0.4.0")).command == "CHECK"


@pytest.mark.parametrize("command", ["GC", "STATUS"])
@pytest.mark.parametrize("version", ["1.0.0", "0.4.0", None])
def test_gc_and_status_need_1_1_0(command: str, version: str | None) -> None:
    stdin = conf(version, **{"cni.dev/valid-attachments": []})
    e = fails(env_for(command), stdin, 1)
    assert e.msg == f"config version does not allow {command}"


def test_status_request() -> None:
    req = parse_request(env_for("STATUS"), conf())
    assert (req.command, req.container_id, req.ifname, req.args, req.valid_attachments) == (
        "STATUS", "", "", {}, ())


# --------------------------------------------------------------------------- CNI_ARGS


def test_containerd_args() -> None:
    assert parse_cni_args(CONTAINERD_ARGS)["K8S_POD_NAME"] == "web-0"
    assert parse_cni_args("") == {}


def test_known_args_without_ignore_unknown() -> None:
    assert parse_cni_args("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p") == {"K8S_POD_NAMESPACE": "ns",
                                                                     "K8S_POD_NAME": "p"}


def test_unknown_args_are_refused_naming_key_and_value() -> None:
    with pytest.raises(CniError) as e:
        parse_cni_args("K8S_POD_NAME=p;FOO=bar")
    assert e.value.code == codes.UNSUPPORTED_FIELD
    assert "FOO=bar" in e.value.msg
    fails(env_for("ADD", CNI_ARGS="FOO=bar"), conf(), 2, "FOO=bar")


@pytest.mark.parametrize("flag", ["1", "true", "TRUE", "True"])
def test_ignore_unknown_anywhere_in_the_string(flag: str) -> None:
    assert parse_cni_args(f"FOO=bar;IgnoreUnknown={flag}")["FOO"] == "bar"


@pytest.mark.parametrize("flag", ["0", "false"])
def test_ignore_unknown_false(flag: str) -> None:
    with pytest.raises(CniError) as e:
        parse_cni_args(f"IgnoreUnknown={flag};FOO=bar")
    assert e.value.code == 2


@pytest.mark.parametrize("text", ["FOO", "A=b=c", "K8S_POD_NAME=p;", ";K8S_POD_NAME=p", "IgnoreUnknown=maybe"])
def test_malformed_args(text: str) -> None:
    with pytest.raises(CniError) as e:
        parse_cni_args(text)
    assert e.value.code == codes.INVALID_ENV and "CNI_ARGS" in e.value.msg


def test_args_are_not_parsed_for_gc() -> None:
    assert parse_request(env_for("GC", CNI_ARGS="garbage"), gc_conf()).args == {}


# --------------------------------------------------------------------------- netplane fields


@pytest.mark.parametrize("field,value", [
    ("mtu", 575), ("mtu", 9001), ("mtu", "1450"), ("mtu", True), ("mtu", 1450.5), ("mtu", 1450.0),
    ("socket", "relative.sock"), ("socket", 5), ("socket", ""),
    ("ipMasq", "true"), ("ipMasq", 1),
])
def test_invalid_plugin_fields(field: str, value: Any) -> None:
    e = fails(env_for("ADD"), conf(**{field: value}), 7)
    assert field in e.msg


@pytest.mark.parametrize("field,value", [("mtu", 576), ("mtu", 9000), ("mtu", None), ("socket", "/x.sock"),
                                         ("ipMasq", False)])
def test_valid_plugin_fields(field: str, value: Any) -> None:
    assert parse_request(env_for("ADD"), conf(**{field: value})).config[field] == value


def test_del_tolerates_bad_plugin_fields() -> None:
    # DEL must be able to release what a (failed) ADD may have left; the fields are not needed.
    assert parse_request(env_for("DEL"), conf(mtu=1)).command == "DEL"
    fails(env_for("CHECK"), conf(mtu=1), 7)


# --------------------------------------------------------------------------- prevResult


def sample_result(version: str = "1.1.0") -> dict[str, Any]:
    return build_add_result(version, host_ifname="np0123456789a", host_mac="aa:bb:cc:00:00:01",
                            pod_ifname="eth0", pod_mac="aa:bb:cc:00:00:02", netns="/var/run/netns/cni-1",
                            mtu=1450, ip="10.244.1.5", prefixlen=32, gateway="10.244.1.1",
                            routes=[{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}])


def test_prev_result_is_parsed_to_the_1x_shape() -> None:
    req = parse_request(env_for("CHECK"), conf("1.1.0", prevResult=sample_result("1.1.0")))
    assert req.prev_result == sample_result("1.1.0")
    assert req.config["prevResult"] == sample_result("1.1.0")  # the raw one stays in the config


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_prev_result_from_0x_drops_ip_version(version: str) -> None:
    req = parse_request(env_for("CHECK" if version == "0.4.0" else "ADD"),
                        conf(version, prevResult=sample_result(version)))
    assert req.prev_result is not None
    assert req.prev_result["ips"] == [{"interface": 1, "address": "10.244.1.5/32", "gateway": "10.244.1.1"}]
    assert [i.get("sandbox") for i in req.prev_result["interfaces"]] == [None, "/var/run/netns/cni-1"]
    assert "dns" not in req.prev_result  # empty dns is dropped in 1.x


@pytest.mark.parametrize("prev", [
    "str", [1], {"ips": [{"address": "10.0.0.300/24"}]}, {"ips": [{"address": "10.0.0.1/24", "gateway": "x"}]},
    {"interfaces": [{"mac": "aa"}]}, {"ips": [{"address": "10.0.0.1/24", "interface": -1}]},
    {"routes": [{"dst": "nope"}]}, {"routes": "x"}, {"dns": []}, {"cniVersion": 1},
])
def test_bad_prev_result(prev: Any) -> None:
    fails(env_for("ADD"), conf(prevResult=prev), 6, "prevResult")


def test_del_tolerates_empty_or_bad_prev_result() -> None:
    assert parse_request(env_for("DEL"), conf(prevResult={})).prev_result == {"cniVersion": "1.1.0"}
    assert parse_request(env_for("DEL"), conf(prevResult="garbage")).prev_result is None
    assert parse_request(env_for("DEL"), conf(prevResult=None)).prev_result is None


def test_parse_result_keeps_1_1_extras() -> None:
    raw = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "mtu": 1450, "socketPath": "/s"}],
           "routes": [{"dst": "10.0.0.0/8", "mtu": 1400, "table": 5}], "dns": {"nameservers": ["10.96.0.10"]}}
    assert parse_result(raw) == raw


# --------------------------------------------------------------------------- GC


def test_gc_attachments_union_of_both_keys() -> None:
    a = {"containerID": "c1", "ifname": "eth0"}
    b = {"containerID": "c2", "ifname": "eth0"}
    c = {"containerID": "c1", "ifname": "net1"}
    req = parse_request(env_for("GC"), conf("1.1.0", **{"cni.dev/valid-attachments": [a, b],
                                                          "cni.dev/attachments": [b, c]}))
    assert req.valid_attachments == (a, b, c)


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_either_key_alone(key: str) -> None:
    a = {"containerID": "c1", "ifname": "eth0"}
    assert parse_request(env_for("GC"), conf("1.1.0", **{key: [a]})).valid_attachments == (a,)


def test_gc_null_list_is_empty() -> None:
    # Go marshals a nil slice as null: "nothing is valid any more".
    req = parse_request(env_for("GC"), conf("1.1.0", **{"cni.dev/valid-attachments": None}))
    assert req.valid_attachments == ()


def test_gc_without_the_list_is_refused() -> None:
    fails(env_for("GC"), conf("1.1.0"), 7, "cni.dev/valid-attachments")


@pytest.mark.parametrize("bad", [{"containerID": "c1"}, {"ifname": "eth0"}, "c1/eth0",
                                 {"containerID": 1, "ifname": "eth0"}, {"containerID": "", "ifname": "eth0"}])
def test_gc_malformed_attachment_is_refused(bad: Any) -> None:
    e = fails(env_for("GC"), conf("1.1.0", **{"cni.dev/attachments": [bad]}), 7, "cni.dev/attachments[0]")
    assert e.details


def test_gc_attachments_not_a_list() -> None:
    fails(env_for("GC"), conf("1.1.0", **{"cni.dev/valid-attachments": {"c": "e"}}), 7, "must be a list")


def test_attachments_are_only_read_for_gc() -> None:
    req = parse_request(env_for("ADD"), conf("1.1.0", **{"cni.dev/valid-attachments": "junk"}))
    assert req.valid_attachments == ()


# --------------------------------------------------------------------------- results


def test_add_result_1_1_0() -> None:
    assert sample_result("1.1.0") == {
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "np0123456789a", "mac": "aa:bb:cc:00:00:01", "mtu": 1450},
            {"name": "eth0", "mac": "aa:bb:cc:00:00:02", "mtu": 1450, "sandbox": "/var/run/netns/cni-1"},
        ],
        "ips": [{"interface": 1, "address": "10.244.1.5/32", "gateway": "10.244.1.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
    }


def test_add_result_1_0_0_has_no_1_1_fields() -> None:
    r = sample_result("1.0.0")
    assert r["cniVersion"] == "1.0.0"
    assert [set(i) for i in r["interfaces"]] == [{"name", "mac"}, {"name", "mac", "sandbox"}]
    assert r["ips"] == sample_result("1.1.0")["ips"] and "dns" not in r


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_add_result_0x(version: str) -> None:
    assert sample_result(version) == {
        "cniVersion": version,
        "interfaces": [
            {"name": "np0123456789a", "mac": "aa:bb:cc:00:00:01"},
            {"name": "eth0", "mac": "aa:bb:cc:00:00:02", "sandbox": "/var/run/netns/cni-1"},
        ],
        "ips": [{"version": "4", "interface": 1, "address": "10.244.1.5/32", "gateway": "10.244.1.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
        "dns": {},
    }


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_result_works_for_chained_plugins(version: str) -> None:
    r = sample_result(version)
    # bandwidth: the host veth is the (only) interface without a sandbox.
    assert [i["name"] for i in r["interfaces"] if not i.get("sandbox")] == ["np0123456789a"]
    # tuning/portmap: the container interface is in the sandbox, and the IP points at it.
    pod = r["interfaces"][r["ips"][0]["interface"]]
    assert (pod["name"], pod["sandbox"]) == ("eth0", "/var/run/netns/cni-1")
    assert parse_result(r)["ips"][0]["address"] == "10.244.1.5/32"
    json.dumps(r)  # plain JSON


def test_add_result_dns() -> None:
    dns = {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"], "domain": "", "options": []}
    r = build_add_result("1.1.0", host_ifname="h", host_mac="m", pod_ifname="eth0", pod_mac="m2", netns="/n",
                         mtu=1450, ip="10.0.0.2", prefixlen=32, gateway="10.0.0.1", routes=[], dns=dns)
    assert r["dns"] == {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
    assert "routes" not in r
    assert convert_result(r, "0.4.0")["dns"] == r["dns"]


def test_convert_ipv6_gets_version_6() -> None:
    r = convert_result({"ips": [{"address": "fd00::5/128", "gateway": "fd00::1", "interface": 0}]}, "0.3.1")
    assert r["ips"] == [{"version": "6", "interface": 0, "address": "fd00::5/128", "gateway": "fd00::1"}]


@pytest.mark.parametrize("version", ["0.2.0", "0.1.0", "2.0.0"])
def test_no_result_for_unsupported_versions(version: str) -> None:
    with pytest.raises(CniError) as e:
        sample_result(version)
    assert e.value.code == 1


def test_round_trip_0x_to_1x() -> None:
    back = parse_result(sample_result("0.4.0"))
    expected = sample_result("1.1.0")
    for intf in expected["interfaces"]:
        del intf["mtu"]  # 0.4.0 cannot carry it
    assert back == expected


# --------------------------------------------------------------------------- shim helpers


def test_shim_reply() -> None:
    assert shim_reply(0, None) == {"exitCode": 0, "stdout": ""}
    reply = shim_reply(1, {"cniVersion": "1.1.0", "code": 11, "msg": "later"})
    assert reply["exitCode"] == 1 and json.loads(reply["stdout"])["code"] == 11
    with pytest.raises(ValueError):
        shim_reply(256, None)


def test_shim_request_round_trip() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": CID, "OTHER": "x"}
    stdin = b'{"name": "n"}\n\x00\xff'
    body = json.dumps(shim_request(env, stdin)).encode()
    got_env, got_stdin = parse_shim_request(body)
    assert got_stdin == stdin
    assert list(got_env) == list(SHIM_ENV_KEYS)
    assert got_env["CNI_COMMAND"] == "ADD" and got_env["CNI_ARGS"] == "" and "OTHER" not in got_env


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"env": 1}', b'{"env": {"A": 1}}',
                                  b'{"env": {}, "stdin": 5}', b'{"env": {}, "stdin": "!!"}'])
def test_parse_shim_request_rejects_garbage(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_shim_request(body)


def spooled(env: dict[str, str], stdin: bytes) -> bytes:
    return json.dumps(shim_request(env, stdin)).encode()


def test_parse_spooled_del() -> None:
    stdin = conf("1.0.0", prevResult=sample_result("1.0.0"))
    req = parse_spooled_del(spooled(env_for("DEL"), stdin))
    assert req == parse_request(env_for("DEL"), stdin)


def test_parse_spooled_del_without_config_still_identifies_the_attachment() -> None:
    req = parse_spooled_del(spooled(env_for("DEL", CNI_NETNS="", CNI_PATH=""), b""))
    assert (req.command, req.container_id, req.ifname, req.netns, req.config, req.cni_version) == (
        "DEL", CID, "eth0", "", {}, "1.1.0")


def test_parse_spooled_del_is_lenient_where_nobody_could_act_on_an_error() -> None:
    req = parse_spooled_del(spooled(env_for("DEL", CNI_ARGS="FOO=bar"), conf("0.4.0")))
    assert req.args == {} and req.cni_version == "0.4.0" and req.config["name"] == "netplane"
    req = parse_spooled_del(spooled(env_for("DEL"), conf("0.2.0")))
    assert req.cni_version == "1.1.0"


@pytest.mark.parametrize("env,code", [
    (env_for("ADD"), 4), (env_for("DEL", CNI_CONTAINERID="../x"), 4), (env_for("DEL", CNI_IFNAME="a/b"), 4),
    (env_for("DEL", CNI_CONTAINERID=""), 3),
])
def test_parse_spooled_del_refuses_what_is_not_a_del(env: dict[str, str], code: int) -> None:
    with pytest.raises(CniError) as e:
        parse_spooled_del(spooled(env, conf()))
    assert e.value.code == code


def test_parse_spooled_del_unreadable() -> None:
    with pytest.raises(CniError) as e:
        parse_spooled_del(b"\x00garbage")
    assert e.value.code == codes.DECODE_FAILURE
