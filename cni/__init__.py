"""netplane.cni: see README.md for what lives here."""

from __future__ import annotations

# This folder is mapped to `netplane.cni` by pyproject.toml. Imported as a top-level package it
# would shadow (or be shadowed by) an unrelated distribution, so fail loudly instead.
if __name__ != "netplane.cni":
    raise ImportError(
        f"{__file__} must be imported as 'netplane.cni', not '{__name__}': install netplane "
        "(make setup) and do not put the repository root on sys.path"
    )


def shim_path(package_dir: str | None = None) -> str:
    """The CNI shim to install as `netplane` in a node's CNI bin dir.

    The C shim (`shim/netplane-c`, built from shim/netplane.c by `make setup`) when it has been
    built, else the bash shim (`shim/netplane`, same contract, needs bash + curl + jq).
    `package_dir` (tests) stands for this package's directory.
    """
    import os

    base = os.path.join(package_dir or os.path.dirname(os.path.abspath(__file__)), "shim")
    compiled = os.path.join(base, "netplane-c")
    if os.path.isfile(compiled) and os.access(compiled, os.X_OK):
        return compiled
    return os.path.join(base, "netplane")
