"""netplane.ebpf: see README.md for what lives here."""

# This folder is mapped to `netplane.ebpf` by pyproject.toml. Imported as a top-level package it
# would shadow (or be shadowed by) an unrelated distribution, so fail loudly instead.
if __name__ != "netplane.ebpf":
    raise ImportError(
        f"{__file__} must be imported as 'netplane.ebpf', not '{__name__}': install netplane "
        "(make setup) and do not put the repository root on sys.path"
    )


def object_path(name: str) -> "Path":
    """Where `make setup` puts the compiled `<name>.bpf.c` of this folder."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "build" / f"{name}.bpf.o"
