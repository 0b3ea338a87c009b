"""Chain names and the small pieces of rule text everything else is built from.

Everything netplane owns in iptables starts with ``NP-``. Per-service chains are named like
kube-proxy's: a prefix plus the first 16 characters of base32(sha256(...)), so a name is stable
across restarts and always fits iptables' 28-character limit (``NP-SVC-`` + 16 = 23).

Rule text is assembled from values that end up as iptables-restore tokens. The tracker already
validates every field, but this module does not rely on that: `comment()` keeps only printable
characters that cannot end a quoted token, and the ``*_token`` helpers raise UnsafeRuleText for
anything that is not exactly an IPv4 address, CIDR, protocol or port. One restore line can
therefore never turn into two, whatever an API object contains.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

from netplane.errors import NetplaneError

PREFIX = "NP-"
MAX_CHAIN_LEN = 28  # iptables refuses longer user-defined chain names

# -- fixed chains ------------------------------------------------------------------------------
# nat
SERVICES = "NP-SERVICES"  # root of the destination-IP dispatch tree; NodePort jump is last
NODEPORTS = "NP-NODEPORTS"  # root of the NodePort dispatch tree
MARK_MASQ = "NP-MARK-MASQ"
POSTROUTING = "NP-POSTROUTING"
CANARY = "NP-PROXY-CANARY"  # in nat and filter; empty; if it vanishes someone flushed us
# filter
FILTER_SERVICES = "NP-FILTER-SERVICES"  # cluster IPs without (local) endpoints: REJECT / DROP
EXTERNAL_SERVICES = "NP-EXTERNAL-SERVICES"  # external/LB IPs without (local) endpoints
EXTERNAL_NODEPORTS = "NP-EXTERNAL-NODEPORTS"  # NodePorts without (local) endpoints
FILTER_NODEPORTS = "NP-FILTER-NODEPORTS"  # health-check node ports: ACCEPT
FORWARD = "NP-FORWARD"
PROXY_FIREWALL = "NP-PROXY-FIREWALL"  # LB IPs with source ranges: what NP-FW-x did not take

NAT_FIXED_CHAINS = (SERVICES, NODEPORTS, MARK_MASQ, POSTROUTING, CANARY)
FILTER_FIXED_CHAINS = (FILTER_SERVICES, EXTERNAL_SERVICES, EXTERNAL_NODEPORTS, FILTER_NODEPORTS,
                       FORWARD, PROXY_FIREWALL, CANARY)

# -- dispatch-tree chain prefixes (one per tree; a table never holds two trees with one prefix)
NAT_IP_TREE = "NP-D-"
NAT_PORT_TREE = "NP-P-"
FILTER_SERVICES_TREE = "NP-FD-"
EXTERNAL_IP_TREE = "NP-XD-"
EXTERNAL_PORT_TREE = "NP-XP-"
FIREWALL_TREE = "NP-WD-"
HEALTHCHECK_TREE = "NP-HP-"

# -- per-service chain prefixes (kube-proxy's KUBE-SVC-/SVL-/EXT-/FW-/SEP-)
SVC = "NP-SVC-"
SVL = "NP-SVL-"
EXT = "NP-EXT-"
FW = "NP-FW-"
SEP = "NP-SEP-"
SERVICE_CHAIN_PREFIXES = (SVC, SVL, EXT, FW, SEP)

PROTOCOLS = ("tcp", "udp", "sctp")
# xt_comment stores at most 256 bytes including the terminating NUL.
MAX_COMMENT_LEN = 255
# Characters a comment may keep: printable ASCII except the ones that could close or escape the
# double-quoted token iptables-restore reads (and the single quote, which some versions honour).
_COMMENT_OK = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\", "'"}
_COMMENT_BAD = re.compile(r"[^\x20-\x7e]|[\"\\']")
# Canonical dotted quad only (no leading zeros): what ipaddress prints, checked ~5x faster.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


class UnsafeRuleText(NetplaneError):
    """A value would not be a single, well-formed iptables-restore token."""


def is_owned_chain(name: str) -> bool:
    """True for every chain netplane creates (and may therefore flush or delete)."""
    return name.startswith(PREFIX)


def is_service_chain(name: str) -> bool:
    return name.startswith(SERVICE_CHAIN_PREFIXES)


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # RFC 4648 base32 alphabet
_B32_PAIRS = tuple(a + b for a in _B32 for b in _B32)  # 10 bits → 2 characters


def _hash16(text: str) -> str:
    """base32(sha256(text))[:16]. 16 base32 characters are exactly the first 80 bits (10
    bytes) of the digest; encoding them with a pair table is ~5x faster than base64.b32encode
    (this runs once per endpoint: 100,000 times in a full compile of a large cluster)."""
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    p = _B32_PAIRS
    return (p[n >> 70] + p[(n >> 60) & 1023] + p[(n >> 50) & 1023] + p[(n >> 40) & 1023]
            + p[(n >> 30) & 1023] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023])


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """kube-proxy's portProtoHash: base32(sha256(name + lower-case protocol))[:16]."""
    return _hash16(service_port_name + protocol.lower())


def service_chain(prefix: str, service_port_name: str, protocol: str) -> str:
    """NP-SVC-/SVL-/EXT-/FW- chain of one service-port (name as in ServicePortName.kube_string)."""
    return prefix + port_proto_hash(service_port_name, protocol)


def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """NP-SEP- chain of one endpoint ("ip:port") of one service-port."""
    return SEP + _hash16(service_port_name + protocol.lower() + endpoint)


# -- tokens -------------------------------------------------------------------------------------


def comment_text(text: str) -> str:
    """`text` reduced to what can sit inside a double-quoted restore token: every character
    that could end the token, escape, or start a new line becomes '?'; capped at 255."""
    if _COMMENT_BAD.search(text):
        text = "".join(ch if ch in _COMMENT_OK else "?" for ch in text)
    return text[:MAX_COMMENT_LEN]


def comment(text: str) -> str:
    """``-m comment --comment "<text>"``, always quoted (as iptables-save prints it)."""
    return f'-m comment --comment "{comment_text(text)}"'


def ipv4_token(value: object) -> str:
    """A canonical dotted-quad IPv4 address, or UnsafeRuleText."""
    if not isinstance(value, str) or not _IPV4.fullmatch(value):
        raise UnsafeRuleText(f"not a canonical IPv4 address: {value!r}")
    return value


def cidr_token(value: object) -> str:
    """A canonical IPv4 CIDR ("10.0.0.0/8"; host bits cleared as the kernel stores it)."""
    if not isinstance(value, str):
        raise UnsafeRuleText(f"CIDR must be a string, got {value!r}")
    try:
        net = ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise UnsafeRuleText(f"not an IPv4 CIDR: {value!r}") from None
    return str(net)


def port_token(value: object, *, allow_zero: bool = False) -> int:
    """A TCP/UDP/SCTP port number (1-65535; 0 too when `allow_zero`)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise UnsafeRuleText(f"port must be an integer, got {value!r}")
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise UnsafeRuleText(f"port out of range: {value}")
    return value


def protocol_token(value: object) -> str:
    """The lower-case protocol name iptables wants ("tcp", "udp", "sctp")."""
    proto = value.lower() if isinstance(value, str) else ""
    if proto not in PROTOCOLS:
        raise UnsafeRuleText(f"unsupported protocol {value!r}")
    return proto


def seconds_token(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 2**31 - 1:
        raise UnsafeRuleText(f"not a number of seconds: {value!r}")
    return value


def probability(n: int) -> str:
    """Probability of the first of `n` remaining endpoints, kube-proxy's "%.10f" of 1/n."""
    return f"{1.0 / n:.10f}"


def mark_token(mark: int) -> str:
    if not isinstance(mark, int) or isinstance(mark, bool) or not 0 < mark <= 0xFFFFFFFF:
        raise UnsafeRuleText(f"not a 32-bit mark: {mark!r}")
    return f"0x{mark:x}"
