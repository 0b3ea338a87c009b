"""Prefix-tree dispatch chains: the replacement for kube-proxy's linear KUBE-SERVICES.

kube-proxy puts one rule per service IP:port into KUBE-SERVICES, so the first packet of every
connection walks, on average, half of a list with one rule per service-port (10,000 services →
~5,000 rule evaluations). netplane puts the same rules into the leaves of a nibble trie over the
destination address instead:

- A node covers a prefix ``p/L`` (L a multiple of 4) and the entries whose key falls inside it.
- A node with at most ``LEAF`` (16) entries is a *leaf*: its chain holds the entries' rules
  themselves, e.g. ``-d 10.96.0.10/32 -p udp -m udp --dport 53 ... -j NP-SVC-…``.
- A larger node is *internal*: it splits on the next 4 bits of the key and its chain holds one
  rule per non-empty child, ``-d 10.96.16.0/20 -j NP-D-0a601000-20``. A child that would only
  hand everything on to one grandchild is skipped (path compression), so a cluster whose
  services all sit in 10.96.0.0/12 does not pay for three levels of one-rule chains.
- The root node's chain is a fixed chain (``NP-SERVICES``) and ends with the fixed *tail* rules:
  for NP-SERVICES that is the NodePort jump, which therefore still comes after every VIP rule,
  exactly as kube-proxy's "this must be the last rule in this chain".

Why this bounds the first-packet walk: every chain has at most 16 child rules (one per nibble
value) or at most 16 leaf rules, and a key of W bits is at most W/4 levels deep (8 for IPv4, 4
for ports). So a packet evaluates at most ~16 rules per level and ≤ 8 levels, ~130 rules in the
very worst case and typically 2-3 levels (≈ 40 rules), independent of the number of services.
(Only many entries on one single key, e.g. one IP with 40 service ports, can exceed 16 in a leaf,
and then only for that key.) Matching is first-match exactly as in one flat list: children
cover disjoint prefixes and entries for one key stay together, in one fixed order, in one leaf.

Why updates stay small: a node's chain is a pure function of the entries under it. Adding or
removing one entry changes the counts on one root-to-key path only; the leaf holding the entry is
rewritten, and an ancestor's chain changes only if its list of children changes, i.e. when the
tree shape changes (a child appears or empties, a node crosses the 16-entry limit, or the
compression skips a different level). `flush()` re-renders exactly the nodes on dirty paths and
reports the chains that changed or vanished, so an endpoint change that does not change a
service's dispatch entries costs nothing here at all.

There are two flavours: IpDispatchTree (32-bit IPv4 destinations, child rules ``-d p/L``) and
PortDispatchTree (16-bit ports, child rules ``-p proto -m proto --dport lo:hi``, one per protocol
present below the child, since a port match needs a protocol).
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left, insort
from collections.abc import Iterable

LEAF = 16
NIBBLE = 4

Node = tuple[int, int]  # (prefix length L, the key's top L bits as an integer)


class DispatchTree:
    """A nibble trie over `width`-bit keys whose nodes render to iptables chains.

    Entries are (key, rule text, protocol) added and removed one by one; `flush()` renders the
    chains that changed since the last flush. `chains()` is every chain of the tree.
    """

    width = 32

    def __init__(self, root: str, prefix: str, tail: Iterable[str] = ()) -> None:
        self.root = root
        self.prefix = prefix
        self.tail = tuple(tail)
        self._rules_at: dict[int, dict[str, int]] = {}  # key → rule text → multiplicity
        self._keys: list[int] = []  # sorted keys that have rules
        self._count: dict[Node, int] = {}  # node → number of entries below it
        self._proto_count: dict[tuple[int, int, str], int] = {}  # (L, p, proto) → entries
        self._dirty: set[Node] = set()
        self._chains: dict[str, tuple[str, ...]] = {}
        self._children: dict[str, tuple[Node, ...]] = {}  # rendered internal chain → children
        self._levels = tuple(range(0, self.width + 1, NIBBLE))

    # -- entries --------------------------------------------------------------------------------

    def add(self, key: int, rule: str, protocol: str = "") -> None:
        at = self._rules_at.get(key)
        if at is None:
            at = self._rules_at[key] = {}
            insort(self._keys, key)
        at[rule] = at.get(rule, 0) + 1
        self._account(key, protocol, +1)

    def remove(self, key: int, rule: str, protocol: str = "") -> None:
        at = self._rules_at[key]
        left = at[rule] - 1
        if left:
            at[rule] = left
        else:
            del at[rule]
            if not at:
                del self._rules_at[key]
                del self._keys[bisect_left(self._keys, key)]
        self._account(key, protocol, -1)

    def _account(self, key: int, protocol: str, delta: int) -> None:
        width, count, dirty = self.width, self._count, self._dirty
        track_proto = self._tracks_protocol()
        for length in self._levels:
            node = (length, key >> (width - length))
            n = count.get(node, 0) + delta
            if n:
                count[node] = n
            else:
                del count[node]
            dirty.add(node)
            if track_proto:
                pkey = (length, node[1], protocol)
                pn = self._proto_count.get(pkey, 0) + delta
                if pn:
                    self._proto_count[pkey] = pn
                else:
                    del self._proto_count[pkey]

    def __len__(self) -> int:
        return self._count.get((0, 0), 0)

    # -- rendering ------------------------------------------------------------------------------

    def chains(self) -> dict[str, tuple[str, ...]]:
        """Every chain of the tree (renders pending changes first)."""
        self.flush()
        return dict(self._chains)

    def flush(self) -> tuple[dict[str, tuple[str, ...]], set[str]]:
        """Render what changed since the last flush: (chains written, chains that vanished)."""
        updated: dict[str, tuple[str, ...]] = {}
        removed: set[str] = set()
        root = (0, 0)
        if root in self._dirty or self.root not in self._chains:
            self._render(root, updated, removed)
        self._dirty.clear()
        removed.difference_update(updated)
        return updated, removed

    def _render(self, node: Node, updated: dict[str, tuple[str, ...]], removed: set[str]) -> None:
        name = self.chain_name(node)
        children = () if self._is_leaf(node) else tuple(self._compressed_children(node))
        if children:
            rules = [rule for child in children for rule in self._child_rules(child)]
        else:
            rules = self._leaf_rules(node)
        if node == (0, 0):
            rules.extend(self.tail)
        rendered = tuple(rules)
        if self._chains.get(name) != rendered:
            self._chains[name] = rendered
            updated[name] = rendered
        new_names = {self.chain_name(child) for child in children}
        for old in self._children.pop(name, ()):
            old_name = self.chain_name(old)
            if old_name not in new_names:
                self._drop(old, removed)
        if children:
            self._children[name] = children
        for child in children:
            if child in self._dirty or self.chain_name(child) not in self._chains:
                self._render(child, updated, removed)

    def _drop(self, node: Node, removed: set[str]) -> None:
        name = self.chain_name(node)
        if self._chains.pop(name, None) is not None:
            removed.add(name)
        for child in self._children.pop(name, ()):
            self._drop(child, removed)

    def _is_leaf(self, node: Node) -> bool:
        return node[0] >= self.width or self._count.get(node, 0) <= LEAF

    def _nonempty_children(self, node: Node) -> list[Node]:
        length, prefix = node
        count = self._count
        base = prefix << NIBBLE
        return [child for nibble in range(1 << NIBBLE)
                if (child := (length + NIBBLE, base | nibble)) in count]

    def _compressed_children(self, node: Node) -> list[Node]:
        out = []
        for child in self._nonempty_children(node):
            while not self._is_leaf(child):
                below = self._nonempty_children(child)
                if len(below) != 1:
                    break
                child = below[0]
            out.append(child)
        return out

    def _leaf_rules(self, node: Node) -> list[str]:
        length, prefix = node
        shift = self.width - length
        lo, hi = prefix << shift, (prefix + 1) << shift
        keys = self._keys
        rules: list[str] = []
        for i in range(bisect_left(keys, lo), bisect_left(keys, hi)):
            at = self._rules_at[keys[i]]
            for rule in sorted(at):
                rules.extend([rule] * at[rule])
        return rules

    # -- flavour hooks --------------------------------------------------------------------------

    def _tracks_protocol(self) -> bool:
        return False

    def chain_name(self, node: Node) -> str:
        raise NotImplementedError

    def _child_rules(self, child: Node) -> list[str]:
        raise NotImplementedError


class IpDispatchTree(DispatchTree):
    """Keys are IPv4 addresses as integers; child rules match ``-d prefix/L``."""

    width = 32

    def chain_name(self, node: Node) -> str:
        length, prefix = node
        if length == 0:
            return self.root
        return f"{self.prefix}{prefix << (32 - length):08x}-{length}"

    def _child_rules(self, child: Node) -> list[str]:
        length, prefix = child
        net = ipaddress.IPv4Address(prefix << (32 - length))
        return [f"-d {net}/{length} -j {self.chain_name(child)}"]


class PortDispatchTree(DispatchTree):
    """Keys are port numbers; child rules match ``-p proto -m proto --dport lo:hi``."""

    width = 16

    def _tracks_protocol(self) -> bool:
        return True

    def _range(self, node: Node) -> tuple[int, int]:
        length, prefix = node
        lo = prefix << (16 - length)
        return lo, lo + (1 << (16 - length)) - 1

    def chain_name(self, node: Node) -> str:
        if node[0] == 0:
            return self.root
        lo, hi = self._range(node)
        return f"{self.prefix}{lo}-{hi}"

    def _child_rules(self, child: Node) -> list[str]:
        length, prefix = child
        lo, hi = self._range(child)
        name = self.chain_name(child)
        ports = str(lo) if lo == hi else f"{lo}:{hi}"
        return [f"-p {proto} -m {proto} --dport {ports} -j {name}"
                for proto in ("tcp", "udp", "sctp")
                if (length, prefix, proto) in self._proto_count]


def ip_key(ip: str) -> int:
    """The dispatch key of a (validated) IPv4 address."""
    return int(ipaddress.IPv4Address(ip))
