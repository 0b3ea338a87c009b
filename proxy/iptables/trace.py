"""A pure packet tracer over a Ruleset, in the style of kube-proxy's tracePacket.

Given the first packet of a connection (source, protocol, destination, port, whether the node
itself sent it), `trace` walks what the kernel would: nat PREROUTING (or OUTPUT for a
node-originated packet) through the hook jumps into NP-SERVICES and on, applies the DNAT, then
the filter hooks the DNATed packet traverses (OUTPUT for node-originated, INPUT when the
destination is the node, FORWARD otherwise) and finally nat POSTROUTING, whose MASQUERADE
decides whether the source is rewritten.

Random and stateful matches are not guessed: ``-m statistic`` and ``-m recent --rcheck`` are
followed both ways, so the result is the *set* of endpoints a new connection may reach, as in
upstream's packet-flow tests. The tracer understands exactly the matches and targets netplane
writes and raises TraceError on anything else, so a rule it cannot judge never passes silently.
Used by the packet-flow tests and (later) by `netplane trace`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from netplane.errors import NetplaneError
from netplane.proxy.iptables import names
from netplane.proxy.iptables.ruleset import HOOK_JUMPS, Option, ParsedRule, Ruleset, parse_rule
from netplane.proxy.model import NodeContext

_MAX_DEPTH = 64
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


class TraceError(NetplaneError):
    """The ruleset contains something the tracer cannot evaluate (or loops)."""


@dataclass(frozen=True, slots=True)
class Packet:
    source: str
    protocol: str  # "tcp" | "udp" | "sctp" (any case)
    destination: str
    port: int
    local_source: bool = False  # sent by the node itself (nat OUTPUT, addrtype src LOCAL)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One possible fate of the packet."""

    endpoint: str | None  # "ip:port" it was DNATed to, or None
    masquerade: bool
    verdict: str  # "ACCEPT" | "REJECT" | "DROP"
    path: tuple[str, ...]  # NP- chains entered, in order


@dataclass(frozen=True, slots=True)
class TraceResult:
    outcomes: tuple[Outcome, ...]

    @property
    def endpoints(self) -> frozenset[str]:
        return frozenset(o.endpoint for o in self.outcomes if o.endpoint)

    @property
    def masquerade(self) -> bool:
        return any(o.masquerade for o in self.outcomes)

    @property
    def verdict(self) -> str:
        """The verdict, or several joined with "|" when different paths disagree."""
        return "|".join(sorted({o.verdict for o in self.outcomes}))


@dataclass(frozen=True, slots=True)
class _State:
    mark: int = 0
    dnat: str | None = None
    path: tuple[str, ...] = ()


_Result = list[tuple[_State, str | None]]  # (state, terminal verdict or None = returned)


def _net(value: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(value, strict=False)


def _mark_pair(value: str) -> tuple[int, int]:
    v, _, m = value.partition("/")
    return int(v, 0), int(m, 0) if m else 0xFFFFFFFF


class Tracer:
    """Traces packets through one Ruleset for one node (rules are parsed once, lazily)."""

    def __init__(self, ruleset: Ruleset, node: NodeContext,
                 local_ips: Iterable[str] | None = None) -> None:
        self.ruleset = ruleset
        self.node = node
        self._local = frozenset(ipaddress.IPv4Address(ip) for ip in (
            node.node_ips if local_ips is None else local_ips))
        self._parsed: dict[tuple[str, str], tuple[ParsedRule, ...]] = {}
        for table, builtin, rule in HOOK_JUMPS:
            self._parsed.setdefault((table, builtin), ())
            self._parsed[(table, builtin)] += (parse_rule(rule),)

    def trace(self, packet: Packet) -> TraceResult:
        pkt = Packet(packet.source, packet.protocol.lower(), packet.destination, packet.port,
                     packet.local_source)
        nat_hook = "OUTPUT" if pkt.local_source else "PREROUTING"
        outcomes = []
        for state, _final in self._run("nat", nat_hook, pkt, _State(), 0):
            if state.dnat:
                ip, _, port = state.dnat.rpartition(":")
                after = Packet(pkt.source, pkt.protocol, ip, int(port), pkt.local_source)
            else:
                after = pkt
            verdict = self._filter_verdict(after, state)
            masquerade = False
            if verdict == "ACCEPT":
                post = self._run("nat", "POSTROUTING", after, state, 0)
                masquerade = any(final == "MASQUERADE" for _s, final in post)
            outcomes.append(Outcome(state.dnat, masquerade, verdict, state.path))
        return TraceResult(tuple(outcomes))

    # -- hooks ----------------------------------------------------------------------------------

    def _is_local(self, ip: str) -> bool:
        addr = ipaddress.IPv4Address(ip)
        return addr in self._local or addr in _LOOPBACK

    def _filter_verdict(self, pkt: Packet, state: _State) -> str:
        local = self._is_local(pkt.destination)
        if pkt.local_source:  # sent by the node: OUTPUT, then INPUT if it stays on the node
            hooks = ["OUTPUT", "INPUT"] if local else ["OUTPUT"]
        else:
            hooks = ["INPUT" if local else "FORWARD"]
        verdicts = set()
        for state_after, final in self._run_hooks("filter", hooks, pkt, state):
            verdicts.add(final if final in ("DROP", "REJECT") else "ACCEPT")
        return "|".join(sorted(verdicts))

    def _run_hooks(self, table: str, hooks: list[str], pkt: Packet, state: _State) -> _Result:
        results: _Result = []
        for state_after, final in self._run(table, hooks[0], pkt, state, 0):
            if final in ("DROP", "REJECT") or len(hooks) == 1:
                results.append((state_after, final))
            else:
                results.extend(self._run_hooks(table, hooks[1:], pkt, state_after))
        return results

    # -- chains ---------------------------------------------------------------------------------

    def _rules(self, table: str, chain: str) -> tuple[ParsedRule, ...]:
        key = (table, chain)
        parsed = self._parsed.get(key)
        if parsed is None:
            rules = self.ruleset.chains(table).get(chain)
            if rules is None:
                raise TraceError(f"jump to missing chain {table}/{chain}")
            parsed = self._parsed[key] = tuple(parse_rule(r) for r in rules)
        return parsed

    def _run(self, table: str, chain: str, pkt: Packet, state: _State, depth: int) -> _Result:
        if depth > _MAX_DEPTH:
            raise TraceError(f"chain nesting deeper than {_MAX_DEPTH} at {table}/{chain}")
        if names.is_owned_chain(chain):
            state = _State(state.mark, state.dnat, state.path + (chain,))
        return self._run_from(table, self._rules(table, chain), 0, pkt, state, depth)

    def _run_from(self, table: str, rules: tuple[ParsedRule, ...], i: int, pkt: Packet,
                  state: _State, depth: int) -> _Result:
        results: _Result = []
        while i < len(rules):
            rule = rules[i]
            i += 1
            matched = self._matches(rule, pkt, state)
            if matched is False:
                continue
            if matched is None:  # statistic / recent: follow the not-taken branch as well
                results.extend(self._run_from(table, rules, i, pkt, state, depth))
            target = rule.target
            if not target:
                continue
            if target in ("ACCEPT", "DROP", "REJECT", "MASQUERADE"):
                results.append((state, target))
                return results
            if target == "RETURN":
                results.append((state, None))
                return results
            if target == "DNAT":
                dest = self._option(rule.target_options, "--to-destination", rule)
                results.append((_State(state.mark, dest, state.path), "DNAT"))
                return results
            if target == "MARK":
                state = _State(self._set_mark(state.mark, rule), state.dnat, state.path)
                continue
            if not names.is_owned_chain(target):
                raise TraceError(f"unsupported target {target!r}")
            for sub_state, final in self._run(table, target, pkt, state, depth + 1):
                if final is not None:
                    results.append((sub_state, final))
                elif rule.goto:
                    results.append((sub_state, None))
                else:
                    results.extend(self._run_from(table, rules, i, pkt, sub_state, depth))
            return results
        results.append((state, None))
        return results

    @staticmethod
    def _option(options: tuple[Option, ...], name: str, rule: ParsedRule) -> str:
        for opt in options:
            if opt.name == name and opt.args:
                return opt.args[0]
        raise TraceError(f"{name} missing in {rule}")

    @staticmethod
    def _set_mark(mark: int, rule: ParsedRule) -> int:
        for opt in rule.target_options:
            value, mask = _mark_pair(opt.args[0])
            if opt.name == "--set-xmark":
                return (mark & ~mask) ^ value
            if opt.name == "--or-mark":
                return mark | value
            if opt.name == "--xor-mark":
                return mark ^ value
            if opt.name == "--and-mark":
                return mark & value
            if opt.name == "--set-mark":
                return (mark & ~mask) | value
        raise TraceError(f"MARK without a supported option in {rule}")

    # -- matches: True, False, or None for "either" ----------------------------------------------

    def _matches(self, rule: ParsedRule, pkt: Packet, state: _State) -> bool | None:
        for opt in rule.header:
            value = opt.args[0]
            if opt.name == "-s":
                hit = ipaddress.IPv4Address(pkt.source) in _net(value)
            elif opt.name == "-d":
                hit = ipaddress.IPv4Address(pkt.destination) in _net(value)
            elif opt.name == "-p":
                hit = value.lower() == pkt.protocol
            else:
                raise TraceError(f"unsupported header match {opt.name}")
            if hit == opt.negated:
                return False
        maybe = False
        for match in rule.matches:
            for opt in match.options:
                hit = self._module_option(match.module, opt, pkt, state)
                if hit is None:
                    maybe = True
                elif hit == opt.negated:
                    return False
        return None if maybe else True

    def _module_option(self, module: str, opt: Option, pkt: Packet, state: _State) -> bool | None:
        name, args = opt.name, opt.args
        if module == "comment":
            return not opt.negated  # never filters
        if module in names.PROTOCOLS:
            if module != pkt.protocol:
                return opt.negated  # the module only matches its own protocol
            if name in ("--dport", "--destination-port"):
                lo, _, hi = args[0].partition(":")
                return int(lo) <= pkt.port <= int(hi or lo)
            raise TraceError(f"unsupported {module} option {name}")
        if module == "addrtype":
            if args[0] != "LOCAL":
                raise TraceError(f"unsupported address type {args[0]}")
            if name == "--dst-type":
                return self._is_local(pkt.destination)
            if name == "--src-type":
                return pkt.local_source or self._is_local(pkt.source)
        elif module == "mark" and name == "--mark":
            value, mask = _mark_pair(args[0])
            return state.mark & mask == value
        elif module == "statistic":
            return None if name == "--probability" else not opt.negated
        elif module == "recent":
            if name == "--rcheck":
                return None
            return not opt.negated  # --set, --name, --mask, --seconds, ...: no verdict alone
        elif module == "conntrack" and name == "--ctstate":
            states = set(args[0].split(","))
            return "NEW" in states or ("DNAT" in states and state.dnat is not None)
        raise TraceError(f"unsupported match -m {module} {name}")


def trace(ruleset: Ruleset, packet: Packet, node: NodeContext) -> TraceResult:
    """One-shot convenience around Tracer."""
    return Tracer(ruleset, node).trace(packet)
