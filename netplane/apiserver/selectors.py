"""Label and field selectors, parsed once per request and matched against stored objects.

Grammar as apimachinery's labels.Parse / fields.ParseSelector:
  labels: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated (AND)
  fields: `k=v`, `k==v`, `k!=v`, comma-separated; only the field labels the resource supports
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from netplane.apiserver.validation_names import qualified_name_errors


class SelectorError(ValueError):
    """The selector text is invalid; the message is shown to the client (400 BadRequest)."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return has and value in self.values
        # "!=" and "notin" match objects without the label, as upstream does.
        return not has or value not in self.values


_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|[^\s(),!=]+)")
_KEY_OK = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE_OK = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise SelectorError(f"unable to parse requirement: unexpected text at {text[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _check_key(key: str) -> str:
    # The prefix must be a DNS subdomain (lowercase, <= 253), as labels.Parse's IsQualifiedName.
    if not _KEY_OK.match(key) or len(key.rsplit("/", 1)[-1]) > 63 or qualified_name_errors(key):
        raise SelectorError(f"invalid label key {key!r}: not a qualified name")
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or not _VALUE_OK.match(value):
        raise SelectorError(f"invalid label value: {value!r}: must be 63 characters or less and "
                            "consist of alphanumerics, '-', '_' or '.'")
    return value


def parse_label_selector(text: str | None) -> tuple[Requirement, ...]:
    if not text or not text.strip():
        return ()
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise SelectorError(f"unable to parse requirement: {what} in {text!r}")

    while i < len(toks):
        if toks[i] == "!":
            need(i + 1 < len(toks), "expected a key after '!'")
            reqs.append(Requirement(_check_key(toks[i + 1]), "!"))
            i += 2
        else:
            key = _check_key(toks[i])
            i += 1
            if i >= len(toks) or toks[i] == ",":
                reqs.append(Requirement(key, "exists"))
            elif toks[i] in ("=", "==", "!="):
                op = "!=" if toks[i] == "!=" else "="
                i += 1
                value = ""
                if i < len(toks) and toks[i] != ",":
                    value = toks[i]
                    i += 1
                reqs.append(Requirement(key, op, (_check_value(value),)))
            elif toks[i] in ("in", "notin"):
                op = toks[i]
                i += 1
                need(i < len(toks) and toks[i] == "(", "expected '(' after " + op)
                i += 1
                values: list[str] = []
                want_value = True  # values are comma-separated; an omitted one is "" (upstream)
                while i < len(toks) and toks[i] != ")":
                    if toks[i] == ",":
                        if want_value:
                            values.append("")
                        want_value = True
                    else:
                        need(want_value, f"expected ',' or ')' before {toks[i]!r}")
                        values.append(_check_value(toks[i]))
                        want_value = False
                    i += 1
                need(i < len(toks), "missing ')'")
                i += 1
                if want_value:  # "()" or a trailing ","
                    values.append("")
                reqs.append(Requirement(key, op, tuple(values)))
            else:
                raise SelectorError(f"unable to parse requirement: unexpected {toks[i]!r} in {text!r}")
        if i < len(toks):
            need(toks[i] == ",", "expected ','")
            i += 1
    return tuple(reqs)


def labels_match(reqs: tuple[Requirement, ...], obj: dict[str, Any]) -> bool:
    if not reqs:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


# -- fields ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    value: str
    negate: bool


def parse_field_selector(text: str | None, supported: tuple[str, ...]) -> tuple[FieldRequirement, ...]:
    if not text or not text.strip():
        return ()
    allowed = {"metadata.name", "metadata.namespace", *supported}
    reqs: list[FieldRequirement] = []
    for part in _split_unescaped(text):
        part = part.strip()
        if not part:
            continue
        for op in ("!=", "==", "="):
            idx = part.find(op)
            if idx > 0:
                key, value = part[:idx].strip(), part[idx + len(op) :].strip()
                break
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        if key not in allowed:
            raise SelectorError(f"field label not supported: {key}")
        reqs.append(FieldRequirement(key, _unescape(value), op == "!="))
    return tuple(reqs)


def _split_unescaped(text: str) -> list[str]:
    parts, cur, esc = [], [], False
    for ch in text:
        if esc:
            cur.append("\\" + ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if esc:
        cur.append("\\")  # a trailing lone backslash: _unescape rejects it
    parts.append("".join(cur))
    return parts


def _unescape(value: str) -> str:
    """fields.UnescapeValue: only \\\\, \\, and \\= are escapes; a bare ',' or '=' is an error."""
    out, esc = [], False
    for ch in value:
        if esc:
            if ch not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{ch}")
            out.append(ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch in ",=":
            raise SelectorError(f"invalid field selector: unescaped {ch!r} in value {value!r}")
        else:
            out.append(ch)
    if esc:
        raise SelectorError("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def field_value(obj: dict[str, Any], label: str) -> str:
    """The string form a field label has for the real server's field selectors."""
    if label == "source":  # events: source.component
        return str(((obj.get("source") or {}).get("component")) or "")
    cur: Any = obj
    for part in label.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if cur is None:
        return "false" if label in ("spec.unschedulable", "spec.hostNetwork") else ""
    return str(cur)


def fields_match(reqs: tuple[FieldRequirement, ...], obj: dict[str, Any]) -> bool:
    for r in reqs:
        equal = field_value(obj, r.field) == r.value
        if equal == r.negate:
            return False
    return True


def matcher(
    labels: tuple[Requirement, ...], fields: tuple[FieldRequirement, ...]
) -> Callable[[dict[str, Any]], bool] | None:
    """One predicate for both selectors, or None when everything matches (the fast path)."""
    if not labels and not fields:
        return None
    return lambda obj: labels_match(labels, obj) and fields_match(fields, obj)
