"""The only module that runs iptables: IptablesPort, its real (ExecIptables) and in-memory
(FakeIptables) implementations, and kube-proxy's legacy/nft mode detection.

Modes are never mixed: a port is built for one mode and every command it runs is that mode's
binary (``iptables-nft``, ``iptables-nft-restore``, ``iptables-nft-save``, or the ``-legacy``
ones), whatever the ``iptables`` alternative points to.

Measured on the 2-core dev VM (Linux 6.18, iptables 1.8.9, a nat table of 10,000 services x 10
endpoints, 430k restore lines): a 2-chain ``--noflush`` restore takes 1.0-1.6 s with legacy (it
rewrites the whole table blob) and 40-55 ms with nft, plus ~40 ms per built-in chain jumping
into the graph once the hook jumps exist (the kernel re-validates the jump graph on each commit),
so 120-150 ms with PREROUTING and OUTPUT hooked; every ``iptables -C/-S`` costs 0.7 s with legacy
and 3-8 ms with nft. One big ``iptables-nft-restore --noflush`` transaction, however, is
quadratic in its rule count (1k services: 4.5 s, 2k: 50 s, 10k: not done after 18 min), while
the same rules in transactions of about 5,000 rules load in 17 s. So in nft mode `restore` splits
large inputs into transactions of whole chains, written leaves first (see `split_restore`);
small inputs (every partial sync) stay one atomic transaction. Legacy is linear, never split.
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from netplane.errors import NetplaneError
from netplane.proxy.iptables import names
from netplane.proxy.iptables.ruleset import HOOK_JUMPS, jump_targets

log = logging.getLogger(__name__)

MODES = ("legacy", "nft")
TABLES = ("nat", "filter")  # the tables netplane's proxy writes
WAIT = ("-w", "5")  # wait up to 5 s for the xtables lock instead of failing at once
# nft transactions above this many rules are split (see the module docstring).
NFT_CHUNK_RULES = 5000
# Chains earlier netplane versions created under names that are no longer NP-prefixed:
# (table, chain). `cleanup` removes them too. None so far; keep renamed chains here.
CLEANUP_ONLY_CHAINS: tuple[tuple[str, str], ...] = ()
# Chain names in rule text that mean "someone still uses iptables for Kubernetes here".
_OWNER_MARKERS = ("KUBE-", names.PREFIX, "NETPLANE-")
_KUBELET_CHAINS = re.compile(r"^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)\b", re.M)
# "iptables-restore: line N failed" / "Error occurred at line: N" (nft reports the COMMIT line)
_LINE_FAILED = re.compile(r"line (\d+) failed|Error occurred at line: (\d+)")
_QUOTED_NAME = re.compile(r"['`]([A-Za-z0-9_.:-]+)'")
_BUILTIN_TARGETS = frozenset({
    "ACCEPT", "DROP", "REJECT", "RETURN", "MARK", "CONNMARK", "MASQUERADE", "DNAT", "SNAT",
    "REDIRECT", "LOG", "NFLOG", "NOTRACK", "CT", "QUEUE", "NFQUEUE", "TRACE", "TCPMSS"})
BUILTIN_CHAINS = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}

Run = Callable[..., "subprocess.CompletedProcess[str]"]
Jump = tuple[str, str, str]  # (table, built-in chain, rule)


class IptablesError(NetplaneError):
    """An iptables command failed. `command` is the argv, `line` the offending input line."""

    def __init__(self, command: Sequence[str], returncode: int, stderr: str,
                 line: str | None = None, line_number: int | None = None) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.line = line
        self.line_number = line_number
        where = f"; input line {line_number}: {line}" if line is not None else ""
        super().__init__(f"`{shlex.join(self.command)}` failed (exit {returncode}): "
                         f"{self.stderr or 'no error output'}{where}")


class IptablesPort(Protocol):
    mode: str

    def restore(self, text: str) -> None: ...
    def save(self, table: str) -> str: ...
    def ensure_jumps(self, jumps: Iterable[Jump] = HOOK_JUMPS) -> None: ...
    def chain_exists(self, table: str, chain: str) -> bool: ...
    def chains_exist(self, pairs: Sequence[tuple[str, str]]) -> list[bool]: ...
    def cleanup(self) -> list[str]: ...


# -- mode detection -----------------------------------------------------------------------------


def _owned_rule_count(save_output: str) -> int:
    return sum(1 for line in save_output.splitlines()
               if line.startswith("-A ") and any(m in line for m in _OWNER_MARKERS))


def detect_mode(run: Run = subprocess.run, prefix: Sequence[str] = ()) -> str:
    """kube-proxy's iptables-wrapper choice between "legacy" and "nft", best effort:

    1. the kubelet's canary/hint chains (nft's mangle table first, then legacy);
    2. else the mode holding more rules that mention KUBE-, NP- or NETPLANE- chains;
    3. else the mode the `iptables` alternative points to (`iptables --version`); else nft.
    `prefix` runs the commands elsewhere, e.g. ("ip", "netns", "exec", NAME)."""
    def output(*argv: str) -> str:
        try:
            proc = run([*prefix, *argv], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            log.debug("mode detection: %s: %s", argv[0], e)
            return ""
        return proc.stdout or "" if proc.returncode == 0 else ""

    nft_mangle = output("iptables-nft-save", "-t", "mangle")
    if _KUBELET_CHAINS.search(nft_mangle):
        return _chosen("nft", "kubelet chains in iptables-nft")
    # No `-t mangle` for legacy: asking for a table makes the kernel create it.
    legacy_all = output("iptables-legacy-save")
    if _KUBELET_CHAINS.search(legacy_all):
        return _chosen("legacy", "kubelet chains in iptables-legacy")
    legacy_rules = _owned_rule_count(legacy_all)
    nft_rules = _owned_rule_count(output("iptables-nft-save"))
    if legacy_rules != nft_rules:
        mode = "legacy" if legacy_rules > nft_rules else "nft"
        return _chosen(mode, f"{legacy_rules} Kubernetes/netplane rules in legacy, "
                             f"{nft_rules} in nft")
    version = output("iptables", "--version")
    if "legacy" in version:
        return _chosen("legacy", f"the iptables alternative is {version.strip()!r}")
    return _chosen("nft", f"the iptables alternative is {version.strip()!r}" if version
                   else "nothing to go by")


def _chosen(mode: str, why: str) -> str:
    log.info("iptables mode %s (%s)", mode, why)
    return mode


# -- pure helpers shared by the real and the fake port ------------------------------------------


@dataclass
class _TableBlock:
    table: str
    declared: list[str] = field(default_factory=list)  # chain names, in order
    rules: dict[str, list[str]] = field(default_factory=dict)  # chain -> "-A chain ..." lines
    deleted: list[str] = field(default_factory=list)  # -X chain names
    other: list[str] = field(default_factory=list)  # anything else (-I, -D, -F, -N, ...)


def _parse_blocks(text: str) -> list[_TableBlock] | None:
    """Restore text → per-table blocks, or None if it is not the simple shape `split_restore`
    knows how to reorder."""
    blocks: list[_TableBlock] = []
    current: _TableBlock | None = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = _TableBlock(line[1:].strip())
            blocks.append(current)
        elif current is None:
            return None
        elif line == "COMMIT":
            current = None
        elif line.startswith(":"):
            current.declared.append(line[1:].split()[0])
        elif line.startswith("-A "):
            chain = line.split(None, 2)[1]
            current.rules.setdefault(chain, []).append(line)
        elif line.startswith("-X "):
            current.deleted.append(line.split()[1])
        else:
            current.other.append(line)
    return blocks


def _leaves_first(block: _TableBlock) -> list[str]:
    """Written chains ordered so that every chain comes after the chains it jumps to (an
    iterative depth-first post-order; iptables forbids loops, so there are no cycles)."""
    deleted = set(block.deleted)
    written = [c for c in block.declared if c not in deleted]
    written_set = set(written)

    def children(chain: str) -> list[str]:
        return [t for line in block.rules.get(chain, ()) for t in jump_targets(line)
                if t in written_set]

    order: list[str] = []
    seen: set[str] = set()
    for root in written:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(children(root)))]
        while stack:
            chain, pending = stack[-1]
            nxt = next((t for t in pending if t not in seen), None)
            if nxt is None:
                order.append(chain)
                stack.pop()
            else:
                seen.add(nxt)
                stack.append((nxt, iter(children(nxt))))
    return order


def split_restore(text: str, max_rules: int) -> list[str]:
    """Split one --noflush restore input into several, each writing whole chains and none
    jumping to a chain that a later part creates; deletions come last. Inputs with at most
    `max_rules` rules, or with lines other than ``:C``, ``-A``, ``-X``, stay as they are."""
    blocks = _parse_blocks(text)
    if blocks is None or any(b.other for b in blocks):
        return [text]
    if sum(len(v) for b in blocks for v in b.rules.values()) <= max_rules:
        return [text]
    parts: list[str] = []
    for block in blocks:
        batch: list[str] = []
        size = 0

        def flush() -> None:
            nonlocal batch, size
            if batch:
                lines = [f"*{block.table}", *(f":{c} - [0:0]" for c in batch)]
                for chain in batch:
                    lines.extend(block.rules.get(chain, ()))
                parts.append("\n".join(lines + ["COMMIT"]) + "\n")
            batch, size = [], 0

        for chain in _leaves_first(block):
            batch.append(chain)
            size += len(block.rules.get(chain, ())) + 1
            if size >= max_rules:
                flush()
        flush()
        if block.deleted:
            lines = [f"*{block.table}", *(f":{c} - [0:0]" for c in block.deleted),
                     *(f"-X {c}" for c in block.deleted), "COMMIT"]
            parts.append("\n".join(lines) + "\n")
    return parts


def _owned(chain: str, table: str, cleanup_only: Iterable[tuple[str, str]]) -> bool:
    return names.is_owned_chain(chain) or (table, chain) in set(cleanup_only)


def cleanup_restore(table: str, save_output: str,
                    cleanup_only: Iterable[tuple[str, str]] = CLEANUP_ONLY_CHAINS
                    ) -> tuple[str, list[str]]:
    """From one table's iptables-save output: the restore text that removes everything netplane
    owns there (rules in other chains that jump to an owned chain, then the owned chains) and a
    description of each removal. ("", []) when there is nothing to remove."""
    cleanup_only = tuple(cleanup_only)
    chains: list[str] = []
    jumps: list[str] = []
    for line in save_output.splitlines():
        if line.startswith(":"):
            chain = line[1:].split()[0]
            if _owned(chain, table, cleanup_only):
                chains.append(chain)
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            if _owned(chain, table, cleanup_only):
                continue
            if any(_owned(t, table, cleanup_only) for t in jump_targets(rest[0] if rest else "")):
                jumps.append(f"-D {chain} {rest[0]}")
    if not chains and not jumps:
        return "", []
    lines = [f"*{table}", *(f":{c} - [0:0]" for c in chains), *jumps,
             *(f"-X {c}" for c in chains), "COMMIT"]
    removed = [f"{table}: rule {j[3:]}" for j in jumps] + [f"{table}: chain {c}" for c in chains]
    return "\n".join(lines) + "\n", removed


def _failing_line(text: str, stderr: str) -> tuple[int | None, str | None]:
    """(number, text) of the input line the error is about. iptables-nft only notices most
    errors at COMMIT; then the first line using the name the message quotes is the culprit."""
    m = _LINE_FAILED.search(stderr)
    if not m:
        return None, None
    number = int(m.group(1) or m.group(2))
    lines = text.splitlines()
    line = lines[number - 1] if 0 < number <= len(lines) else None
    if line == "COMMIT":
        for name in _QUOTED_NAME.findall(stderr):
            for i, candidate in enumerate(lines[:number - 1], 1):
                if name in candidate.split() and not candidate.startswith(":"):
                    return i, candidate
    return number, line


# -- the real port -------------------------------------------------------------------------------


class ExecIptables:
    """IptablesPort over the iptables binaries of one mode. `prefix` runs every command elsewhere
    (tests pass ("ip", "netns", "exec", NAME)); `run` is subprocess.run-compatible."""

    def __init__(self, mode: str, *, run: Run = subprocess.run, prefix: Sequence[str] = (),
                 chunk_rules: int = NFT_CHUNK_RULES, timeout: float = 600.0) -> None:
        if mode not in MODES:
            raise ValueError(f"iptables mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self._run = run
        self._prefix = tuple(prefix)
        self._chunk_rules = chunk_rules
        self._timeout = timeout
        self.iptables = f"iptables-{mode}"
        self.restore_binary = f"iptables-{mode}-restore"
        self.save_binary = f"iptables-{mode}-save"

    def __repr__(self) -> str:
        return f"ExecIptables({self.mode!r})"

    def _exec(self, argv: Sequence[str], *, input: str | None = None
              ) -> subprocess.CompletedProcess[str]:
        full = [*self._prefix, *argv]
        try:
            return self._run(full, input=input, capture_output=True, text=True,
                             timeout=self._timeout)
        except (OSError, subprocess.SubprocessError) as e:
            raise IptablesError(argv, -1, str(e)) from None

    def restore(self, text: str) -> None:
        if not text.strip():
            return
        parts = split_restore(text, self._chunk_rules) if self.mode == "nft" else [text]
        if len(parts) > 1:
            log.info("restoring %d lines in %d nft transactions", text.count("\n"), len(parts))
        argv = [self.restore_binary, *WAIT, "--noflush"]
        for part in parts:
            proc = self._exec(argv, input=part)
            if proc.returncode != 0:
                number, line = _failing_line(part, proc.stderr or "")
                raise IptablesError(argv, proc.returncode, proc.stderr or "", line, number)

    def save(self, table: str) -> str:
        argv = [self.save_binary, "-t", table]
        proc = self._exec(argv)
        if proc.returncode != 0:
            raise IptablesError(argv, proc.returncode, proc.stderr or "")
        return proc.stdout or ""

    def chain_exists(self, table: str, chain: str) -> bool:
        argv = [self.iptables, *WAIT, "-t", table, "-S", chain]
        proc = self._exec(argv)
        if proc.returncode == 0:
            return True
        # Exit 1 is "no such chain": legacy says "No chain/target/match by that name", nft
        # 1.8.9 "chain `X' in table `nat' is incompatible". Lock or parameter problems are 4/2.
        if proc.returncode == 1:
            return False
        raise IptablesError(argv, proc.returncode, proc.stderr or "")

    def chains_exist(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """chain_exists of each (table, chain), the commands run side by side: each is a
        process of ~2-3 ms, and the canary check runs before every partial sync."""
        results: list[bool | IptablesError] = [False] * len(pairs)

        def check(i: int) -> None:
            try:
                results[i] = self.chain_exists(*pairs[i])
            except IptablesError as e:
                results[i] = e

        others = [threading.Thread(target=check, args=(i,), daemon=True)
                  for i in range(1, len(pairs))]
        for thread in others:
            thread.start()
        if pairs:
            check(0)
        for thread in others:
            thread.join()
        for result in results:
            if isinstance(result, IptablesError):
                raise result
        return [bool(r) for r in results]

    def ensure_jumps(self, jumps: Iterable[Jump] = HOOK_JUMPS) -> None:
        """Each jump present in its built-in chain; missing ones are inserted at the top (as
        kube-proxy prepends its jumps). Jumps of one chain are handled last to first, so that
        when all are missing they end up in the listed order."""
        for table, chain, rule in reversed(list(jumps)):
            spec = shlex.split(rule)
            check = [self.iptables, *WAIT, "-t", table, "-C", chain, *spec]
            proc = self._exec(check)
            if proc.returncode == 0:
                continue
            if proc.returncode != 1:
                raise IptablesError(check, proc.returncode, proc.stderr or "")
            insert = [self.iptables, *WAIT, "-t", table, "-I", chain, "1", *spec]
            proc = self._exec(insert)
            if proc.returncode != 0:
                raise IptablesError(insert, proc.returncode, proc.stderr or "")
            log.info("inserted jump %s %s: %s", table, chain, rule)

    def cleanup(self) -> list[str]:
        return cleanup_owned(self)


def cleanup_owned(port: IptablesPort) -> list[str]:
    """Remove every NP- chain and hook jump through `port`'s own save/restore, table by table
    (the real port and the fake share this: the fake stands in for the kernel, not the logic)."""
    removed: list[str] = []
    for table in TABLES:
        text, what = cleanup_restore(table, port.save(table))
        if text:
            port.restore(text)
            removed += what
    return removed


# -- the fake ------------------------------------------------------------------------------------


class FakeIptables:
    """An in-memory iptables that applies iptables-restore --noflush text like the real one:
    each ``*table`` ... ``COMMIT`` block is checked line by line and committed atomically; a
    failing line raises IptablesError("line N failed") and leaves that table unchanged.

    Declaring a user chain (``:C``) creates or flushes it; built-in chains are never flushed.
    ``-A`` needs its chain and any non-builtin jump target to exist; ``-X`` needs the chain to
    exist, be empty and unreferenced. Tests can make restores fail (`fail_next_restore`) and
    simulate an outside flush (`flush_everything`, `delete_chain`)."""

    def __init__(self, mode: str = "nft") -> None:
        self.mode = mode
        self.tables: dict[str, dict[str, list[str]]] = {
            t: {c: [] for c in chains} for t, chains in BUILTIN_CHAINS.items()}
        self.restores: list[str] = []  # every restore input that was attempted
        self._failures: list[str] = []

    # -- test controls ------------------------------------------------------------------------

    def fail_next_restore(self, message: str = "iptables-restore: line 2 failed",
                          count: int = 1) -> None:
        self._failures.extend([message] * count)

    def flush_everything(self) -> None:
        """What `iptables -F; iptables -X` in every table (e.g. a firewall reload) does."""
        for t, chains in BUILTIN_CHAINS.items():
            self.tables[t] = {c: [] for c in chains}

    def delete_chain(self, table: str, chain: str) -> None:
        """Remove one chain and every rule jumping to it, as an outside actor might."""
        chains = self.tables[table]
        chains.pop(chain, None)
        for name, rules in chains.items():
            chains[name] = [r for r in rules if chain not in jump_targets(r)]

    def rules(self, table: str, chain: str) -> list[str]:
        """The rules of one chain (text after "-A CHAIN ")."""
        return list(self.tables[table][chain])

    # -- IptablesPort --------------------------------------------------------------------------

    def restore(self, text: str) -> None:
        if not text.strip():
            return
        self.restores.append(text)
        argv = [f"iptables-{self.mode}-restore", *WAIT, "--noflush"]
        if self._failures:
            stderr = self._failures.pop(0)
            number, line = _failing_line(text, stderr)
            raise IptablesError(argv, 1, stderr, line, number)
        work: dict[str, list[str]] | None = None
        table = ""
        for number, line in enumerate(text.splitlines(), 1):
            try:
                if not line.strip() or line.startswith("#"):
                    continue
                if line.startswith("*"):
                    table = line[1:].strip()
                    if table not in self.tables:
                        raise ValueError(f"unknown table {table}")
                    work = {c: list(r) for c, r in self.tables[table].items()}
                elif work is None:
                    raise ValueError("line outside a table")
                elif line == "COMMIT":
                    self.tables[table] = work
                    work = None
                else:
                    self._apply(table, work, line)
            except ValueError as e:
                stderr = f"iptables-restore: line {number} failed: {e}"
                raise IptablesError(argv, 1, stderr, line, number) from None
        if work is not None:
            raise IptablesError(argv, 1, "iptables-restore: COMMIT expected at line "
                                f"{len(text.splitlines()) + 1}")

    def _apply(self, table: str, work: dict[str, list[str]], line: str) -> None:
        builtins = BUILTIN_CHAINS[table]
        if line.startswith(":"):
            chain = line[1:].split()[0]
            if chain not in builtins:
                work[chain] = []
            return
        op, _, rest = line.partition(" ")
        chain, _, rule = rest.partition(" ")
        if op == "-N":
            if chain in work:
                raise ValueError(f"chain {chain} already exists")
            work[chain] = []
            return
        if chain not in work:
            raise ValueError(f"no chain {chain}")
        if op in ("-A", "-I"):
            position = 0 if op == "-I" else len(work[chain])
            if op == "-I" and rule.split(" ", 1)[0].isdigit():
                pos, _, rule = rule.partition(" ")
                position = int(pos) - 1
            for target in jump_targets(rule):
                if target not in work and target not in _BUILTIN_TARGETS:
                    raise ValueError(f"no chain/target {target}")
            work[chain].insert(position, rule)
        elif op == "-D":
            if rule not in work[chain]:
                raise ValueError(f"no such rule in {chain}: {rule}")
            work[chain].remove(rule)
        elif op == "-F":
            work[chain] = []
        elif op == "-X":
            if chain in builtins:
                raise ValueError(f"cannot delete built-in chain {chain}")
            if work[chain]:
                raise ValueError(f"chain {chain} is not empty")
            if any(chain in jump_targets(r) for rules in work.values() for r in rules):
                raise ValueError(f"chain {chain} is still referenced")
            del work[chain]
        else:
            raise ValueError(f"unsupported command {op}")

    def save(self, table: str) -> str:
        chains = self.tables[table]
        builtins = BUILTIN_CHAINS[table]
        lines = [f"*{table}"]
        lines += [f":{c} ACCEPT [0:0]" for c in builtins]
        lines += [f":{c} - [0:0]" for c in chains if c not in builtins]
        lines += [f"-A {c} {r}" for c, rules in chains.items() for r in rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def chain_exists(self, table: str, chain: str) -> bool:
        return chain in self.tables.get(table, {})

    def chains_exist(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        return [self.chain_exists(table, chain) for table, chain in pairs]

    def ensure_jumps(self, jumps: Iterable[Jump] = HOOK_JUMPS) -> None:
        for table, chain, rule in reversed(list(jumps)):
            rules = self.tables[table][chain]
            if rule not in rules:
                for target in jump_targets(rule):
                    if target not in self.tables[table] and target not in _BUILTIN_TARGETS:
                        raise IptablesError([f"iptables-{self.mode}", "-I", chain], 1,
                                            f"Couldn't load target `{target}'")
                rules.insert(0, rule)

    def cleanup(self) -> list[str]:
        return cleanup_owned(self)

    def owned_state(self) -> Mapping[str, Mapping[str, Any]]:
        """Owned chains per table (for assertions)."""
        return {t: {c: tuple(r) for c, r in chains.items() if names.is_owned_chain(c)}
                for t, chains in self.tables.items()}
