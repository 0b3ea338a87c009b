"""The iptables backend's rule model, pure: Ruleset, Plan, diff, restore text, save parsing.

A Ruleset is what netplane wants (or found) in its own chains: table → chain → rules, where a
rule is the text after ``-A <chain> ``. Only ``NP-`` chains live in it; the jumps from the
built-in chains (HOOK_JUMPS) are kept separately by the port, as kube-proxy does, because
iptables-restore --noflush cannot replace "our" rules inside PREROUTING without replacing all.

`diff` is chain-granular: a chain whose rules did not change is not written at all, so a sync
after one endpoint change writes a handful of chains, not the whole table. `render_restore`
turns a Plan into one iptables-restore --noflush input: declaring a chain (``:C - [0:0]``)
creates or flushes it, then its rules are appended, and chains that are no longer wanted are
flushed and deleted (``-X``) at the end of the same transaction, after every rewritten chain that
used to reference them.

`parse_save` reads iptables-save output (legacy or nft flavour) back into a Ruleset, to verify
kernel state and detect drift. iptables-save does not print rules the way they were written
(``-d 10.0.0.1`` comes back as ``-d 10.0.0.1/32``, ``--or-mark`` as ``--set-xmark``, REJECT
gains ``--reject-with icmp-port-unreachable``, probabilities are re-rounded, ``-s``/``-d``/``-p``
move to the front, module options are reordered), so both sides go through `normalise_rule`
before they are compared.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain as _chain
from dataclasses import dataclass, field
from types import MappingProxyType

from netplane.errors import NetplaneError
from netplane.proxy.iptables import names

TABLES = ("filter", "nat")  # restore order: filter first, as kube-proxy writes it

Chains = Mapping[str, tuple[str, ...]]


class RuleParseError(NetplaneError):
    """A rule or iptables-save line that this module cannot read."""


class ChainTable(Mapping[str, tuple[str, ...]]):
    """A read-only chain → rules mapping split into buckets that successive compiles share.

    A compile that changes a few chains copies only the buckets holding them, so handing out an
    immutable snapshot of 100,000 chains costs microseconds, and `diff` between two snapshots of
    one compiler skips every bucket they share (``is``). Bucket choice uses Python's str hash,
    which is stable within a process, and tables are never persisted.
    """

    BUCKETS = 256
    __slots__ = ("_buckets",)

    def __init__(self, buckets: tuple[dict[str, tuple[str, ...]], ...]) -> None:
        if len(buckets) != self.BUCKETS:
            raise ValueError(f"ChainTable needs {self.BUCKETS} buckets, got {len(buckets)}")
        self._buckets = buckets

    @classmethod
    def bucket_of(cls, chain: str) -> int:
        return hash(chain) % cls.BUCKETS

    @classmethod
    def from_mapping(cls, chains: Mapping[str, Iterable[str]]) -> ChainTable:
        buckets: tuple[dict[str, tuple[str, ...]], ...] = tuple({} for _ in range(cls.BUCKETS))
        for name, rules in chains.items():
            buckets[cls.bucket_of(name)][name] = tuple(rules)
        return cls(buckets)

    def __getitem__(self, chain: str) -> tuple[str, ...]:
        return self._buckets[hash(chain) % self.BUCKETS][chain]

    def get(self, chain, default=None):  # type: ignore[override]
        return self._buckets[hash(chain) % self.BUCKETS].get(chain, default)

    def __contains__(self, chain: object) -> bool:
        return chain in self._buckets[hash(chain) % self.BUCKETS]

    def __iter__(self) -> Iterator[str]:
        return _chain.from_iterable(self._buckets)

    def __len__(self) -> int:
        return sum(map(len, self._buckets))

    def items(self):  # type: ignore[override]
        return _chain.from_iterable(b.items() for b in self._buckets)

    def __repr__(self) -> str:
        return f"ChainTable({len(self)} chains)"


def _bucket_pairs(have: Chains, want: Chains) -> list[tuple[Mapping, Mapping]]:
    """The (have, want) sub-mappings that may differ: shared buckets are skipped."""
    if isinstance(have, ChainTable) and isinstance(want, ChainTable):
        return [(h, w) for h, w in zip(have._buckets, want._buckets) if h is not w]
    return [(have, want)]


@dataclass(frozen=True, slots=True)
class Ruleset:
    # table ("nat" | "filter") → chain name → rules (text after "-A <chain> ").
    tables: Mapping[str, Chains]

    def chains(self, table: str) -> Chains:
        return self.tables.get(table, MappingProxyType({}))

    def rule_count(self) -> int:
        return sum(len(rules) for chains in self.tables.values() for rules in chains.values())


def make_ruleset(tables: Mapping[str, Mapping[str, Iterable[str]]]) -> Ruleset:
    """A Ruleset from plain dicts/lists (tests and parsers): tuples, read-only mappings."""
    return Ruleset(MappingProxyType({
        table: MappingProxyType({chain: tuple(rules) for chain, rules in chains.items()})
        for table, chains in tables.items()}))


@dataclass(frozen=True, slots=True)
class Plan:
    full: bool
    write: Mapping[str, Chains] = field(default_factory=dict)  # ":C - [0:0]" + its -A lines
    delete: Mapping[str, frozenset[str]] = field(default_factory=dict)  # flush + "-X"

    def empty(self) -> bool:
        return not any(self.write.values()) and not any(self.delete.values())


def diff(applied: Ruleset | None, desired: Ruleset, *, full: bool = False) -> Plan:
    """What turns `applied` into `desired`. `applied` None (nothing known) or `full` writes
    every desired chain; chains in `applied` but not in `desired` are deleted either way."""
    full = full or applied is None
    write: dict[str, Chains] = {}
    delete: dict[str, frozenset[str]] = {}
    for table in sorted(set(desired.tables) | set(applied.tables if applied else ())):
        want = desired.tables.get(table, {})
        have = applied.tables.get(table, {}) if applied else {}
        changed: dict[str, tuple[str, ...]] = {}
        gone: list[str] = []
        if full:
            changed.update(want.items())
            gone.extend(chain for chain in have if chain not in want)
        else:
            for old_part, new_part in _bucket_pairs(have, want):
                get = old_part.get
                # Unchanged chains usually share their tuple with the previous compile: `is`
                # first, equality only for the rest.
                changed.update((chain, rules) for chain, rules in new_part.items()
                               if (old := get(chain)) is not rules and old != rules)
                gone.extend(chain for chain in old_part if chain not in new_part)
        if changed:
            write[table] = MappingProxyType(changed)
        if gone:
            delete[table] = frozenset(gone)
    return Plan(full=full, write=MappingProxyType(write), delete=MappingProxyType(delete))


def render_restore(plan: Plan) -> str:
    """The input for ``iptables-restore -w --noflush``; "" when there is nothing to do."""
    out: list[str] = []
    for table in TABLES:
        write = plan.write.get(table, {})
        delete = sorted(plan.delete.get(table, ()))
        if not write and not delete:
            continue
        written = sorted(write)
        out.append(f"*{table}")
        out.extend(f":{chain} - [0:0]" for chain in written)
        out.extend(f":{chain} - [0:0]" for chain in delete)  # flushes them before -X
        for chain in written:
            prefix = f"-A {chain} "
            out.extend(prefix + rule for rule in write[chain])
        out.extend(f"-X {chain}" for chain in delete)
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def jump_targets(rule: str) -> list[str]:
    """Chains a rule jumps (-j) or goes (-g) to; built-in targets included."""
    tokens = rule.split()
    return [tokens[i + 1] for i, tok in enumerate(tokens[:-1]) if tok in ("-j", "-g", "--jump",
                                                                          "--goto")]


def missing_jump_targets(ruleset: Ruleset) -> list[tuple[str, str, str]]:
    """(table, chain, target) for every jump to an NP- chain the ruleset does not define."""
    missing = []
    for table, chains in ruleset.tables.items():
        for chain, rules in chains.items():
            for rule in rules:
                for target in jump_targets(rule):
                    if names.is_owned_chain(target) and target not in chains:
                        missing.append((table, chain, target))
    return missing


# -- hook jumps -----------------------------------------------------------------------------------

_NEW = "-m conntrack --ctstate NEW "
# (table, built-in chain, rule), in the order they should appear from the top of each built-in
# chain (the port inserts them so that this order holds).
HOOK_JUMPS: tuple[tuple[str, str, str], ...] = (
    ("nat", "PREROUTING", f'-m comment --comment "netplane service portals" -j {names.SERVICES}'),
    ("nat", "OUTPUT", f'-m comment --comment "netplane service portals" -j {names.SERVICES}'),
    ("nat", "POSTROUTING",
     f'-m comment --comment "netplane postrouting rules" -j {names.POSTROUTING}'),
    ("filter", "INPUT", f'-m comment --comment "netplane health check service ports" '
                        f"-j {names.FILTER_NODEPORTS}"),
    ("filter", "INPUT", _NEW + '-m comment --comment "netplane externally-visible service '
                               f'portals" -j {names.EXTERNAL_SERVICES}'),
    ("filter", "INPUT", _NEW + '-m comment --comment "netplane load balancer firewall" '
                               f"-j {names.PROXY_FIREWALL}"),
    ("filter", "FORWARD", f'-m comment --comment "netplane forwarding rules" -j {names.FORWARD}'),
    ("filter", "FORWARD", _NEW + '-m comment --comment "netplane service portals" '
                                 f"-j {names.FILTER_SERVICES}"),
    ("filter", "FORWARD", _NEW + '-m comment --comment "netplane externally-visible service '
                                 f'portals" -j {names.EXTERNAL_SERVICES}'),
    ("filter", "FORWARD", _NEW + '-m comment --comment "netplane load balancer firewall" '
                                 f"-j {names.PROXY_FIREWALL}"),
    ("filter", "OUTPUT", _NEW + '-m comment --comment "netplane service portals" '
                                f"-j {names.FILTER_SERVICES}"),
    ("filter", "OUTPUT", _NEW + '-m comment --comment "netplane load balancer firewall" '
                                f"-j {names.PROXY_FIREWALL}"),
)


# -- parsing --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Option:
    name: str  # "--dport", or a header flag "-s" / "-d" / "-p" / "-i" / "-o"
    args: tuple[str, ...] = ()
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Match:
    module: str
    options: tuple[Option, ...]


@dataclass(frozen=True, slots=True)
class ParsedRule:
    header: tuple[Option, ...]
    matches: tuple[Match, ...]
    target: str = ""  # "" = a rule without -j (it only counts)
    target_options: tuple[Option, ...] = ()
    goto: bool = False

    def header_option(self, flag: str) -> Option | None:
        return next((opt for opt in self.header if opt.name == flag), None)


_HEADER_FLAGS = {"-s": "-s", "--source": "-s", "--src": "-s", "-d": "-d",
                 "--destination": "-d", "--dst": "-d", "-p": "-p", "--protocol": "-p",
                 "-i": "-i", "--in-interface": "-i", "-o": "-o", "--out-interface": "-o"}
_HEADER_ORDER = ("-s", "-d", "-i", "-o", "-p")  # iptables-save's order


def tokenize(text: str) -> list[tuple[str, bool]]:
    """Split like iptables-restore: whitespace, double quotes with backslash escapes.
    Returns (token, was_quoted) pairs."""
    tokens: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch == '"':
            buf = []
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(text[i])
                i += 1
            if i >= n:
                raise RuleParseError(f"unterminated quote in rule: {text!r}")
            tokens.append(("".join(buf), True))
            i += 1
            continue
        j = i
        while j < n and not text[j].isspace():
            j += 1
        tokens.append((text[i:j], False))
        i = j
    return tokens


def _is_value(token: tuple[str, bool]) -> bool:
    text, quoted = token
    return quoted or (text != "!" and not text.startswith("-"))


def parse_rule(text: str) -> ParsedRule:
    """Structure of one rule (the text after "-A <chain> ")."""
    tokens = tokenize(text)
    header: list[Option] = []
    matches: list[tuple[str, list[Option]]] = []
    target, goto = "", False
    target_options: list[Option] = []
    negate = False
    i = 0
    while i < len(tokens):
        tok, quoted = tokens[i]
        i += 1
        if tok == "!" and not quoted:
            negate = True
            continue
        if quoted or not tok.startswith("-"):
            raise RuleParseError(f"unexpected {tok!r} in rule: {text!r}")
        if tok in _HEADER_FLAGS:
            if i >= len(tokens):
                raise RuleParseError(f"{tok} without a value in rule: {text!r}")
            header.append(Option(_HEADER_FLAGS[tok], (tokens[i][0],), negate))
            i += 1
        elif tok in ("-m", "--match"):
            matches.append((tokens[i][0], []))
            i += 1
        elif tok in ("-j", "--jump", "-g", "--goto"):
            target, goto = tokens[i][0], tok in ("-g", "--goto")
            i += 1
        elif tok.startswith("--"):
            args = []
            while i < len(tokens) and _is_value(tokens[i]):
                args.append(tokens[i][0])
                i += 1
            opt = Option(tok, tuple(args), negate)
            if target:
                target_options.append(opt)
            elif matches:
                matches[-1][1].append(opt)
            else:  # "-p tcp --dport 80": the protocol's match module is implied
                proto = next((h.args[0].lower() for h in header if h.name == "-p"), "")
                if not proto:
                    raise RuleParseError(f"option {tok} outside any match in rule: {text!r}")
                matches.append((proto, [opt]))
        else:
            raise RuleParseError(f"unsupported flag {tok!r} in rule: {text!r}")
        negate = False
    return ParsedRule(tuple(header), tuple(Match(m, tuple(o)) for m, o in matches), target,
                      tuple(target_options), goto)


# -- normalisation --------------------------------------------------------------------------------

def _hex(value: str) -> int:
    return int(value, 0)


def _mark_pair(value: str) -> tuple[int, int | None]:
    if "/" in value:
        v, m = value.split("/", 1)
        return _hex(v), _hex(m)
    return _hex(value), None


def _canon_header(opt: Option) -> Option:
    value = opt.args[0]
    if opt.name in ("-s", "-d"):
        value = str(ipaddress.IPv4Network(value, strict=False))
    elif opt.name == "-p":
        value = value.lower()
    return Option(opt.name, (value,), opt.negated)


def _canon_match_option(module: str, opt: Option) -> Option:
    name, args = opt.name, opt.args
    if name in ("--destination-port", "--source-port"):
        name = "--dport" if name == "--destination-port" else "--sport"
    if name in ("--dport", "--sport") and args:
        lo, _, hi = args[0].partition(":")
        args = (lo if not hi or hi == lo else f"{lo}:{hi}",)
    elif module == "statistic" and name == "--probability":
        # The kernel keeps round(p * 2^31); iptables-save prints it back with 11 decimals.
        scaled = int(float(args[0]) * 0x80000000 + 0.5)
        args = (f"{scaled / 0x80000000:.11f}",)
    elif module == "mark" and name == "--mark":
        value, mask = _mark_pair(args[0])
        args = (f"0x{value:x}" if mask is None else f"0x{value:x}/0x{mask:x}",)
    return Option(name, args, opt.negated)


def _canon_target(target: str, options: tuple[Option, ...]) -> tuple[Option, ...]:
    if target == "MARK":
        out = []
        for opt in options:
            value, mask = _mark_pair(opt.args[0]) if opt.args else (0, None)
            if opt.name == "--or-mark":
                value, mask = value, value
            elif opt.name == "--xor-mark":
                mask = 0
            elif opt.name == "--and-mark":
                value, mask = 0, ~value & 0xFFFFFFFF
            elif opt.name == "--set-mark":
                mask = 0xFFFFFFFF if mask is None else mask
            elif opt.name != "--set-xmark":
                out.append(opt)
                continue
            mask = 0xFFFFFFFF if mask is None else mask
            out.append(Option("--set-xmark", (f"0x{value:x}/0x{mask:x}",)))
        return tuple(out)
    if target == "REJECT" and not any(o.name == "--reject-with" for o in options):
        return options + (Option("--reject-with", ("icmp-port-unreachable",)),)
    return options


def _render_args(args: tuple[str, ...], quote: bool) -> list[str]:
    if not quote:
        return list(args)
    return ['"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"' for a in args]


def _render_option(opt: Option, quote: bool = False) -> list[str]:
    return (["!"] if opt.negated else []) + [opt.name] + _render_args(opt.args, quote)


def normalise_parsed(rule: ParsedRule) -> str:
    """Canonical text of a parsed rule (see the module docstring for what is canonicalised)."""
    out: list[str] = []
    header = {opt.name: _canon_header(opt) for opt in rule.header}
    for flag in _HEADER_ORDER:
        if flag in header:
            out.extend(_render_option(header[flag]))
    for match in rule.matches:
        out += ["-m", match.module]
        options = sorted((_canon_match_option(match.module, o) for o in match.options),
                         key=lambda o: o.name)
        for opt in options:
            out.extend(_render_option(opt, quote=match.module == "comment"))
    if rule.target:
        out += ["-g" if rule.goto else "-j", rule.target]
        for opt in sorted(_canon_target(rule.target, rule.target_options), key=lambda o: o.name):
            out.extend(_render_option(opt))
    return " ".join(out)


def normalise_rule(text: str) -> str:
    """The canonical form of a rule: equal for a rule as netplane writes it and as iptables-save
    (legacy or nft) prints it back."""
    try:
        return normalise_parsed(parse_rule(text))
    except (ValueError, IndexError) as e:
        raise RuleParseError(f"cannot normalise rule {text!r}: {e}") from None


def normalise_ruleset(ruleset: Ruleset) -> Ruleset:
    return make_ruleset({table: {chain: [normalise_rule(r) for r in rules]
                                 for chain, rules in chains.items()}
                         for table, chains in ruleset.tables.items()})


def parse_save(text: str, *, normalise: bool = True) -> Ruleset:
    """iptables-save output → Ruleset of the NP- chains it shows (rules normalised)."""
    tables: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], {})
        elif line == "COMMIT":
            current = None
        elif current is None:
            raise RuleParseError(f"line {lineno} outside a table: {raw!r}")
        elif line.startswith(":"):
            chain = line[1:].split()[0]
            if names.is_owned_chain(chain):
                current.setdefault(chain, [])
        elif line.startswith("-A ") or line.startswith("["):
            if line.startswith("["):  # "[pkts:bytes] -A CHAIN ..." from iptables-save -c
                line = line.split("]", 1)[1].strip()
            _, chain, *rest = line.split(" ", 2)
            if names.is_owned_chain(chain):
                rule = rest[0] if rest else ""
                current.setdefault(chain, []).append(normalise_rule(rule) if normalise else rule)
        else:
            raise RuleParseError(f"line {lineno} not understood: {raw!r}")
    return make_ruleset({t: c for t, c in tables.items() if c})
