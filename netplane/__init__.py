"""netplane: a Kubernetes networking data plane (CNI, kube-proxy replacement, cluster DNS, trace)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("netplane")
except PackageNotFoundError:  # running from a tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
