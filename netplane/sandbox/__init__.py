"""The sandbox cluster: kind-like clusters made of network namespaces and processes.
See netplane/sandbox/README.md for the design and who owns which module."""
