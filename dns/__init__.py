"""netplane.dns: see README.md for what lives here."""

# This folder is mapped to `netplane.dns` by pyproject.toml. Imported as a top-level package it
# would shadow (or be shadowed by) an unrelated distribution, so fail loudly instead.
if __name__ != "netplane.dns":
    raise ImportError(
        f"{__file__} must be imported as 'netplane.dns', not '{__name__}': install netplane "
        "(make setup) and do not put the repository root on sys.path"
    )
