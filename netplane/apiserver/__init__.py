"""The embedded Kubernetes API server (a subset): see netplane/apiserver/README.md."""
