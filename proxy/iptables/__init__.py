"""netplane.proxy.iptables: the iptables backend of the proxy (see ../README.md).

Pure modules: names.py (chain names, rule-text tokens), dispatch.py (the prefix-tree dispatch
chains), rules.py (ProxyState → Ruleset, incrementally), ruleset.py (Ruleset, Plan, diff,
restore text, iptables-save parsing and normalisation), trace.py (a packet tracer over a
Ruleset). Only port.py runs iptables.
"""
