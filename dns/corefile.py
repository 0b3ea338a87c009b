"""The Corefile's syntax, without its meaning: tokens, directives with line numbers, and the value
parsers (integers, Go durations, zones, listen addresses) that report errors as
`FILE:LINE: DIRECTIVE: message`. config.py gives the directives their meaning.

    SERVER_KEY [KEY…] {            # a server block
        directive arg… [{          # one directive per line
            subdirective arg…      # optional block
        }]
    }

`#` starts a comment; "double quotes" group words.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from netplane.errors import ConfigError


@dataclass(frozen=True)
class ListenAddress:
    host: str          # "" = every address
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass
class Directive:
    name: str
    args: list[str]
    line: int
    block: list[Directive] | None = None


_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|([{}])|([^\s{}"#]+)|(#[^\n]*)|(\n)|([ \t\r]+)|(.)')


def tokenize(text: str, source: str) -> list[tuple[str, int]]:
    """(token, line) with "\\n" kept as a token: directives end at the end of a line."""
    out: list[tuple[str, int]] = []
    line = 1
    for m in _TOKEN.finditer(text):
        quoted, brace, word, _comment, newline, _space, bad = m.groups()
        if quoted is not None:
            out.append((re.sub(r"\\(.)", r"\1", quoted), line))
            line += quoted.count("\n")
        elif brace or word:
            out.append((brace or word, line))
        elif newline:
            out.append(("\n", line))
            line += 1
        elif bad:
            what = "a quoted string is never closed" if bad == '"' else f"unexpected character {bad!r}"
            raise ConfigError(f"{source}:{line}: {what}")
    return out


def parse_directives(tokens: list[tuple[str, int]], source: str) -> list[Directive]:
    """Top level: server blocks `KEY… {` directives `}`; a directive is the words of one line,
    optionally followed by `{` sub-directives `}`."""
    pos = 0

    def directive_list(depth: int, opened_at: int) -> list[Directive]:
        nonlocal pos
        items: list[Directive] = []
        while pos < len(tokens):
            tok, line = tokens[pos]
            if tok == "\n":
                pos += 1
                continue
            if tok == "}":
                if depth == 0:
                    raise ConfigError(f"{source}:{line}: unexpected '}}'")
                pos += 1
                return items
            if tok == "{":
                raise ConfigError(f"{source}:{line}: '{{' without a directive before it")
            words = []
            while pos < len(tokens) and tokens[pos][0] not in ("\n", "{", "}"):
                words.append(tokens[pos][0])
                pos += 1
            item = Directive(words[0], words[1:], line)
            if pos < len(tokens) and tokens[pos][0] == "{":
                pos += 1
                item.block = directive_list(depth + 1, line)
            items.append(item)
        if depth > 0:
            raise ConfigError(f"{source}:{opened_at}: '{{' is never closed")
        return items

    return directive_list(0, 0)


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Context:
    """Where we are, for error messages: file:line: directive: …"""

    def __init__(self, source: str, base_dir: Path | None) -> None:
        self.source, self.base_dir = source, base_dir

    def error(self, d: Directive, message: str) -> ConfigError:
        return ConfigError(f"{self.source}:{d.line}: {d.name}: {message}")

    def no_block(self, d: Directive) -> None:
        if d.block is not None:
            raise self.error(d, "takes no block")

    def nargs(self, d: Directive, lo: int, hi: int) -> None:
        if not lo <= len(d.args) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise self.error(d, f"takes {want} argument(s), got {len(d.args)}")

    def integer(self, d: Directive, text: str, what: str, lo: int = 0, hi: int | None = None) -> int:
        if not re.fullmatch(r"\d+", text) or int(text) < lo or (hi is not None and int(text) > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise self.error(d, f"{what} must be an integer {bound}, got {text!r}")
        return int(text)

    def duration(self, d: Directive, text: str, what: str) -> float:
        """Go durations (500ms, 10s, 1m30s); a bare number is seconds."""
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise self.error(d, f"{what}: bad duration {text!r} (e.g. 500ms, 5s, 1m)")
        return sum(float(n) * _UNITS[u] for n, u in parts)

    def zone(self, d: Directive, text: str) -> str:
        name = text.lower().rstrip(".")
        if name and not re.fullmatch(r"[a-z0-9_*-]+(\.[a-z0-9_*-]+)*", name):
            raise self.error(d, f"bad zone {text!r}")
        return name + "." if name else "."

    def listen(self, d: Directive, text: str, default_port: int) -> ListenAddress:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, str(default_port)
        host = host.strip("[]")
        if host == "localhost":
            host = "127.0.0.1"
        if host:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise self.error(d, f"bad address {text!r} (an IP address is needed)") from None
        return ListenAddress(host, self.integer(d, port, "port", 0, 65535))
