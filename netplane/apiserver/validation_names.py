"""Name, label, IP and CIDR rules of the Kubernetes API, and the `Cause` every rule reports.

Facts and message texts follow upstream apimachinery (pkg/util/validation, pkg/api/validate/content,
pkg/apis/meta/v1/validation, pkg/util/validation/field), so clients see the same 422 text as from a
real API server. Everything here is pure: no I/O, no state; regexes are left to `re`'s own cache.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
DUPLICATE = "FieldValueDuplicate"
FORBIDDEN = "FieldValueForbidden"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
TYPE_INVALID = "FieldValueTypeInvalid"


@dataclass(frozen=True)
class Cause:
    """One field error; `message` is upstream's ErrorBody() (type text, bad value, detail)."""

    field: str
    message: str
    reason: str = INVALID

    def to_status_cause(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}

    def __str__(self) -> str:  # upstream Error(): "<field>: <body>", even when field is empty
        return f"{self.field}: {self.message}"


# --- bad-value formatting and cause constructors (field/errors.go) ---------------------------


def fmt_value(value: Any) -> str:
    """Render a bad value as the server does: Go %q for strings, %v for scalars, JSON otherwise
    (servers since v1.34 print structured values as JSON)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value, ensure_ascii=False)
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                          default=str)
    except (TypeError, ValueError):  # unsortable keys or a reference cycle in hostile input
        return repr(value)


def required(path: str, detail: str = "") -> Cause:
    return Cause(path, "Required value" + (f": {detail}" if detail else ""), REQUIRED)


def invalid(path: str, value: Any, detail: str) -> Cause:
    return Cause(path, f"Invalid value: {fmt_value(value)}" + (f": {detail}" if detail else ""))


def not_supported(path: str, value: Any, supported: Iterable[str]) -> Cause:
    quoted = ", ".join(json.dumps(v) for v in supported)
    return Cause(path, f"Unsupported value: {fmt_value(value)}: supported values: {quoted}",
                 NOT_SUPPORTED)


def duplicate(path: str, value: Any) -> Cause:
    return Cause(path, f"Duplicate value: {fmt_value(value)}", DUPLICATE)


def forbidden(path: str, detail: str) -> Cause:
    return Cause(path, "Forbidden" + (f": {detail}" if detail else ""), FORBIDDEN)


def too_long(path: str, max_bytes: int) -> Cause:
    # TooLong never echoes the value: it is the one that is too big to print.
    return Cause(path, f"Too long: may not be more than {max_bytes} bytes", TOO_LONG)


def too_many(path: str, actual: int, maximum: int) -> Cause:
    return Cause(path, f"Too many: {actual}: must have at most {maximum} items", TOO_MANY)


_JSON_TYPES = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list}


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    for name, typ in _JSON_TYPES.items():
        if isinstance(value, typ):
            return name
    return type(value).__name__


def type_invalid(path: str, value: Any, expected: str) -> Cause:
    # The bad value is named by its JSON type, like the server's schema errors, so a huge object
    # in the wrong place never ends up in the message.
    return Cause(path, f"Invalid value: {json.dumps(json_type(value))}: must be of type {expected}",
                 TYPE_INVALID)


def is_type(value: Any, expected: str) -> bool:
    if expected == "int-or-string":
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    if expected == "integer":  # bool is an int subclass in Python, never in JSON
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, _JSON_TYPES[expected])


# --- field paths (field/path.go) --------------------------------------------------------------


def child(path: str, *names: str) -> str:
    for name in names:
        path = f"{path}.{name}" if path else name
    return path


def index(path: str, i: int | str) -> str:
    """`path[i]`; map keys are rendered the same way, unquoted, as upstream's Path.Key."""
    return f"{path}[{i}]"


# --- generic message builders (validation.go) ------------------------------------------------


def max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def range_error(lo: int, hi: int) -> str:
    return f"must be between {lo} and {hi}, inclusive"


def regex_error(msg: str, fmt: str, *examples: str) -> str:
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def _blen(value: str) -> int:
    """Length in bytes, as Go's len() measures it."""
    return len(value.encode("utf-8", "surrogatepass"))


def _match(fmt: str, value: str) -> bool:
    # fullmatch, not `^...$`: Python's `$` also matches before a trailing newline, Go's does not.
    return re.fullmatch(fmt, value) is not None


# --- DNS names ---------------------------------------------------------------------------------

DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + "(\\." + DNS1123_LABEL_FMT + ")*"
DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
              "'-', and must start and end with an alphanumeric character")
_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                  "characters, '-' or '.', and must start and end with an alphanumeric character")
_DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character")


def dns1123_label_errors(value: str) -> list[str]:
    errs = [max_len_error(63)] if _blen(value) > 63 else []
    if not _match(DNS1123_LABEL_FMT, value):
        if _match(DNS1123_SUBDOMAIN_FMT, value):
            errs.append("must not contain dots")  # a fine subdomain; length was checked above
        else:
            errs.append(regex_error(_LABEL_MSG, DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errs


def dns1123_subdomain_errors(value: str) -> list[str]:
    errs = [max_len_error(253)] if _blen(value) > 253 else []
    if not _match(DNS1123_SUBDOMAIN_FMT, value):
        errs.append(regex_error(_SUBDOMAIN_MSG, DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errs


def dns1035_label_errors(value: str) -> list[str]:
    errs = [max_len_error(63)] if _blen(value) > 63 else []
    if not _match(DNS1035_LABEL_FMT, value):
        errs.append(regex_error(_DNS1035_MSG, DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errs


def is_dns1123_label(value: str) -> bool:
    return isinstance(value, str) and not dns1123_label_errors(value)


def is_dns1123_subdomain(value: str) -> bool:
    return isinstance(value, str) and not dns1123_subdomain_errors(value)


def is_dns1035_label(value: str) -> bool:
    return isinstance(value, str) and not dns1035_label_errors(value)


def fqdn_errors(value: str) -> list[str]:
    """IsFullyQualifiedDomainName: a trailing dot is allowed and at least two labels."""
    name = value[:-1] if value.endswith(".") else value
    if errs := dns1123_subdomain_errors(name):
        return [",".join(errs)]
    if len(name.split(".")) < 2:
        return ["should be a domain with at least two segments separated by dots"]
    for label in name.split("."):
        if errs := dns1123_label_errors(label):
            return [",".join(errs)]
    return []


def _mask_trailing_dash(name: str) -> str:
    # Upstream's quirk, kept so the same generateName values pass: the slice drops two
    # characters and appends one; all that matters is that no trailing dash remains.
    return name[:-2] + "a" if len(name) > 1 and name.endswith("-") else name


def name_is_dns_subdomain(name: str, prefix: bool) -> list[str]:
    return dns1123_subdomain_errors(_mask_trailing_dash(name) if prefix else name)


def name_is_dns_label(name: str, prefix: bool) -> list[str]:
    return dns1123_label_errors(_mask_trailing_dash(name) if prefix else name)


def name_is_dns1035_label(name: str, prefix: bool) -> list[str]:
    return dns1035_label_errors(_mask_trailing_dash(name) if prefix else name)


def path_segment_errors(name: str) -> list[str]:
    """IsValidPathSegmentName: what the storage key function demands of every name."""
    if name in (".", ".."):
        return [f"may not be '{name}'"]
    return [f"may not contain '{c}'" for c in "/%" if c in name]


# --- label keys and values, qualified names, port names, config keys ----------------------

_LABEL_KEY_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_KEY_MSG = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                  "end with an alphanumeric character")
_LABEL_VALUE_FMT = "(" + _LABEL_KEY_FMT + ")?"
_LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric "
                    "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                    "character")


def qualified_name_errors(value: str) -> list[str]:
    """IsQualifiedName / IsLabelKey: optional DNS-subdomain prefix, '/', name of <= 63 chars."""
    parts = value.split("/")
    if len(parts) > 2:
        return ["a valid label key " + regex_error(_LABEL_KEY_MSG, _LABEL_KEY_FMT, "MyName",
                                                   "my.name", "123-abc")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    errs: list[str] = []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs += ["prefix part " + m for m in dns1123_subdomain_errors(prefix)]
    name = parts[-1]
    if not name:
        errs.append("name part must be non-empty")
    elif _blen(name) > 63:
        errs.append("name part " + max_len_error(63))
    if not _match(_LABEL_KEY_FMT, name):
        errs.append("name part " + regex_error(_LABEL_KEY_MSG, _LABEL_KEY_FMT, "MyName",
                                               "my.name", "123-abc"))
    return errs


def label_value_errors(value: str) -> list[str]:
    errs = [max_len_error(63)] if _blen(value) > 63 else []
    if not _match(_LABEL_VALUE_FMT, value):
        errs.append(regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


def port_name_errors(port: str) -> list[str]:
    """IsValidPortName (IANA_SVC_NAME): <= 15 chars of [-a-z0-9], a letter, no '--', no edge '-'."""
    errs = [max_len_error(15)] if _blen(port) > 15 else []
    if not _match("[-a-z0-9]+", port):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if re.search("[a-z]", port) is None:
        errs.append("must contain at least one letter (a-z)")
    if "--" in port:
        errs.append("must not contain consecutive hyphens")
    if port and (port[0] == "-" or port[-1] == "-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def config_map_key_errors(value: str) -> list[str]:
    errs = [max_len_error(253)] if _blen(value) > 253 else []
    if not _match("[-._a-zA-Z0-9]+", value):
        errs.append(regex_error("a valid config key must consist of alphanumeric characters, "
                                "'-', '_' or '.'", "[-._a-zA-Z0-9]+", "key.name", "KEY_NAME",
                                "key-name"))
    if value == ".":
        errs.append("must not be '.'")
    elif value == "..":
        errs.append("must not be '..'")
    elif value.startswith(".."):
        errs.append("must not start with '..'")
    return errs


def percent_errors(value: str) -> list[str]:
    if _match("[0-9]+%", value):
        return []
    return [regex_error("a valid percent string must be a numeric string followed by an ending "
                        "'%'", "[0-9]+%", "1%", "93%")]


# --- IPs and CIDRs (ip.go, with StrictIPCIDRValidation) --------------------------------------

_BAD_IP = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
_BAD_CIDR = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def small_int(digits: str) -> int:
    """int() of an ASCII digit string, capped: Python refuses to parse over 4300 digits, and
    anything past ten digits is out of every range checked here anyway."""
    return int(digits) if len(digits) <= 10 else 10**10


def _parse_ip(value: str) -> Address | None:
    # Go's parser takes no zone ("fe80::1%eth0") and no non-ASCII digits; Python's takes both.
    if not value.isascii() or "%" in value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _sloppy_ipv4(value: str) -> bool:
    """True for what Go's ParseIPSloppy still takes but strict parsing rejects: 0-prefixed
    octets such as 010.0.0.1, which libc reads as octal and other software as decimal."""
    parts = value.split(".")
    return len(parts) == 4 and all(p.isascii() and p.isdigit() and small_int(p) <= 255
                                   for p in parts)


def ip_errors(value: Any) -> list[str]:
    """Rules for IP fields as the server applies them (IsValidIPForLegacyField, strict): no
    leading zeros, no IPv4-mapped IPv6; non-canonical IPv6 spellings are still accepted."""
    if not isinstance(value, str):
        return [_BAD_IP]
    addr = _parse_ip(value)
    if addr is None:
        return ["must not have leading 0s"] if _sloppy_ipv4(value) else [_BAD_IP]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return ["must not be an IPv4-mapped IPv6 address"]
    return []


def is_valid_ip(value: Any) -> bool:
    return not ip_errors(value)


def ip_family(value: Any) -> int | None:
    """4 or 6 for a valid IP, None otherwise."""
    return _parse_ip(value).version if is_valid_ip(value) else None  # type: ignore[union-attr]


def non_special_ip_errors(value: str) -> list[str]:
    """ValidateNonSpecialIP: addresses no Service or endpoint may point at."""
    addr = _parse_ip(value)
    if addr is None:
        return ["must be a valid IP address"]
    errs = []
    if addr.is_unspecified:
        errs.append(f"may not be unspecified ({value})")
    if addr.is_loopback:
        errs.append("may not be in the loopback range (127.0.0.0/8, ::1/128)")
    if addr.is_link_local:
        errs.append("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
    raw = addr.packed  # Go's IsLinkLocalMulticast: 224.0.0.0/24, or ff02::/16 with any flags
    if raw[:3] == b"\xe0\x00\x00" or (len(raw) == 16 and raw[0] == 0xFF and raw[1] & 0x0F == 2):
        errs.append("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)")
    return errs


def cidr_errors(value: Any) -> list[str]:
    """Rules for CIDR fields (IsValidCIDRForLegacyField, strict): an a.b.c.d/n or v6/n value with
    no leading zeros, no IPv4-mapped address, and no bits set past the prefix length."""
    if not isinstance(value, str) or value.count("/") != 1:
        return [_BAD_CIDR]
    ip_text, _, plen_text = value.partition("/")
    if not (plen_text.isascii() and plen_text.isdigit()):
        return [_BAD_CIDR]
    addr = _parse_ip(ip_text)
    if addr is None and not _sloppy_ipv4(ip_text):
        return [_BAD_CIDR]
    bits = 128 if isinstance(addr, ipaddress.IPv6Address) else 32
    if small_int(plen_text) > bits:
        return [_BAD_CIDR]
    if addr is None or (len(plen_text) > 1 and plen_text[0] == "0"):
        return ["must not have leading 0s in IP or prefix length"]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return ["must not have an IPv4-mapped IPv6 address"]
    if ipaddress.ip_network(f"{addr}/{small_int(plen_text)}", strict=False).network_address != addr:
        return ["must not have bits set beyond the prefix length"]
    return []


def is_valid_cidr(value: Any) -> bool:
    return not cidr_errors(value)


def parse_cidr(value: Any) -> Network | None:
    """The network of a valid CIDR value, None otherwise."""
    if not is_valid_cidr(value):
        return None
    return ipaddress.ip_network(value)


# --- labels and annotations (meta/v1/validation, api/validation/objectmeta.go) ---------------

TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024


def validate_labels(labels: Any, field: str) -> list[Cause]:
    """Every key a qualified name, every value a label value; errors name the map's path."""
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [type_invalid(field, labels, "object")]
    out: list[Cause] = []
    for k, v in labels.items():
        if not isinstance(k, str):
            out.append(type_invalid(field, k, "string"))
            continue
        out += [invalid(field, k, m) for m in qualified_name_errors(k)]
        if not isinstance(v, str):
            out.append(type_invalid(index(field, k), v, "string"))
            continue
        out += [invalid(field, v, m) for m in label_value_errors(v)]
    return out


def validate_annotations(annotations: Any, field: str) -> list[Cause]:
    """Keys are qualified names ignoring case; keys plus values total at most 256 KiB."""
    if annotations is None:
        return []
    if not isinstance(annotations, dict):
        return [type_invalid(field, annotations, "object")]
    out: list[Cause] = []
    total = 0
    for k, v in annotations.items():
        if not isinstance(k, str):
            out.append(type_invalid(field, k, "string"))
            continue
        out += [invalid(field, k, m) for m in qualified_name_errors(k.lower())]
        if not isinstance(v, str):
            out.append(type_invalid(index(field, k), v, "string"))
            continue
        total += _blen(k) + _blen(v)
    if total > TOTAL_ANNOTATION_SIZE_LIMIT:
        out.append(too_long(field, TOTAL_ANNOTATION_SIZE_LIMIT))
    return out


# --- walking untyped JSON ------------------------------------------------------------------


class Walk:
    """Reads an untyped JSON object one field at a time. A value of the wrong type becomes a
    FieldValueTypeInvalid cause and reads as absent, so rules never see (or raise on) it."""

    def __init__(self) -> None:
        self.errs: list[Cause] = []

    def add(self, *causes: Cause) -> None:
        self.errs.extend(causes)

    def get(self, parent: Any, name: str, path: str, expected: str) -> Any:
        value = parent.get(name) if isinstance(parent, dict) else None
        if value is None or is_type(value, expected):
            return value
        self.errs.append(type_invalid(path, value, expected))
        return None

    def str(self, parent: Any, name: str, path: str) -> str | None:
        return self.get(parent, name, path, "string")

    def int(self, parent: Any, name: str, path: str) -> int | None:
        return self.get(parent, name, path, "integer")

    def bool(self, parent: Any, name: str, path: str) -> bool | None:
        return self.get(parent, name, path, "boolean")

    def obj(self, parent: Any, name: str, path: str) -> dict | None:
        return self.get(parent, name, path, "object")

    def arr(self, parent: Any, name: str, path: str) -> list | None:
        return self.get(parent, name, path, "array")

    def items(self, values: Any, path: str, expected: str) -> Iterator[tuple[int, Any, str]]:
        """(i, item, path[i]) for list items of the expected type; the rest are type errors."""
        if not isinstance(values, list):
            return
        for i, item in enumerate(values):
            if is_type(item, expected):
                yield i, item, index(path, i)
            else:
                self.errs.append(type_invalid(index(path, i), item, expected))

    def strings(self, parent: Any, name: str, path: str) -> list[str]:
        """A list-of-strings field with bad items dropped (and reported)."""
        return [v for _, v, _ in self.items(self.arr(parent, name, path), path, "string")]


# --- label selectors (meta/v1/validation, labels) --------------------------------------------

_SELECTOR_OPS = ("In", "NotIn", "Exists", "DoesNotExist")


def validate_label_selector(w: Walk, selector: Any, path: str) -> None:
    if not isinstance(selector, dict):
        return
    w.add(*validate_labels(w.obj(selector, "matchLabels", child(path, "matchLabels")),
                           child(path, "matchLabels")))
    exprs_path = child(path, "matchExpressions")
    for _, expr, p in w.items(w.arr(selector, "matchExpressions", exprs_path), exprs_path,
                              "object"):
        op = w.str(expr, "operator", child(p, "operator")) or ""
        values = w.strings(expr, "values", child(p, "values"))
        if op in ("In", "NotIn"):
            if not values:
                w.add(required(child(p, "values"),
                               "must be specified when `operator` is 'In' or 'NotIn'"))
        elif op in ("Exists", "DoesNotExist"):
            if values:
                w.add(forbidden(child(p, "values"),
                                "may not be specified when `operator` is 'Exists' or "
                                "'DoesNotExist'"))
        else:
            w.add(invalid(child(p, "operator"), op, "not a valid selector operator"))
        k = w.str(expr, "key", child(p, "key")) or ""
        w.add(*[invalid(child(p, "key"), k, m) for m in qualified_name_errors(k)])
        for j, v in enumerate(values):
            w.add(*[invalid(index(child(p, "values"), j), v, m) for m in label_value_errors(v)])


def selector_is_empty(selector: Any) -> bool:
    return isinstance(selector, dict) and not selector.get("matchLabels") \
        and not selector.get("matchExpressions")


def selector_matches(selector: dict, labels: dict) -> bool:
    """Whether a (valid) label selector selects `labels`; an empty selector selects all."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        k, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = k in labels
        if op == "In" and not (present and labels[k] in values):
            return False
        if op == "NotIn" and present and labels[k] in values:
            return False
        if (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True
