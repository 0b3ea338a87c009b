#!/usr/bin/env bash
# Demo: start netplane's embedded apiserver on a free port and drive it with kubectl.
#
#   bash scripts/demo-apiserver.sh after `make setup` (make demo runs the sandbox demo)
#
# Creates a namespace, a Service, an EndpointSlice and a Pod, lists them, watches pods while one
# is labelled, patched and deleted. Everything it starts (apiserver, watch) is stopped by PID and
# its temp dir removed on exit, also on failure or Ctrl-C. It does not touch the network setup.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NETPLANE=${NETPLANE:-$repo/.venv/bin/netplane}
READY_TIMEOUT=${READY_TIMEOUT:-20}  # seconds to wait for the apiserver's "ready" log line
NS=netplane-demo

tmp=$(mktemp -d -t netplane-demo.XXXXXX)
kubeconfig=$tmp/kubeconfig
apiserver_pid=
watch_pid=

if [[ -t 1 ]]; then bold=$'\e[1m' plain=$'\e[0m'; else bold= plain=; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

stop_pid() {  # stop_pid PID NAME: TERM, wait up to 5 s, then KILL; only PIDs this script started
    local pid=$1 name=$2 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo: $name (pid $pid) ignored SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$watch_pid" "kubectl watch"
    stop_pid "$apiserver_pid" "apiserver"
    if ((rc != 0)) && [[ -s $tmp/apiserver.log ]]; then
        echo "--- apiserver log (last 30 lines) ---" >&2
        tail -n 30 "$tmp/apiserver.log" >&2
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ -x $NETPLANE ]] || die "$NETPLANE not found: run 'make setup' first"
command -v kubectl >/dev/null || die "kubectl not found on PATH"

k() { kubectl --kubeconfig "$kubeconfig" --cache-dir "$tmp/kube-cache" --request-timeout=10s "$@"; }

step "starting netplane apiserver on 127.0.0.1 (free port)"
"$NETPLANE" apiserver --listen 127.0.0.1:0 --write-kubeconfig "$kubeconfig" \
    </dev/null >"$tmp/apiserver.out" 2>"$tmp/apiserver.log" &
apiserver_pid=$!
echo "pid $apiserver_pid, log $tmp/apiserver.log"

deadline=$((SECONDS + READY_TIMEOUT))
until grep -q ready "$tmp/apiserver.log" 2>/dev/null; do
    kill -0 "$apiserver_pid" 2>/dev/null || die "apiserver exited before it was ready"
    ((SECONDS < deadline)) || die "apiserver not ready after ${READY_TIMEOUT}s"
    sleep 0.1
done
[[ -s $kubeconfig ]] || die "apiserver said ready but did not write $kubeconfig"
grep ready "$tmp/apiserver.log" | head -n 1
echo "server: $(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')"

step "kubectl version"
k version 2>&1 || true

step "creating namespace $NS, Service web, EndpointSlice web-1, Pod web-1"
k create -f - <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NS
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: $NS
spec:
  selector:
    app: web
  ports:
    - name: http
      port: 80
      targetPort: 8080
      protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: $NS
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
endpoints:
  - addresses: ["10.244.0.10"]
    conditions:
      ready: true
ports:
  - name: http
    port: 8080
    protocol: TCP
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: $NS
  labels:
    app: web
spec:
  containers:
    - name: web
      image: registry.k8s.io/e2e-test-images/agnhost:2.47
      args: ["netexec", "--http-port=8080"]
      ports:
        - containerPort: 8080
EOF

step "kubectl get ns,svc,pods,endpointslices -A -o wide"
k get ns,svc,pods,endpointslices -A -o wide

step "watching pods in $NS (kubectl get pods -w) while labelling, patching, deleting web-1"
k get pods -n "$NS" -w --output-watch-events >"$tmp/watch.out" 2>&1 </dev/null &
watch_pid=$!
# Wait for the watch to list the existing pod before changing it (bounded).
deadline=$((SECONDS + 10))
until grep -q web-1 "$tmp/watch.out" 2>/dev/null; do
    kill -0 "$watch_pid" 2>/dev/null || { cat "$tmp/watch.out" >&2; die "kubectl watch exited"; }
    ((SECONDS < deadline)) || { cat "$tmp/watch.out" >&2; die "watch showed nothing in 10s"; }
    sleep 0.1
done

k label pod web-1 -n "$NS" tier=frontend
k patch pod web-1 -n "$NS" --type=merge -p '{"metadata":{"annotations":{"netplane.io/demo":"patched"}}}'
k get pod web-1 -n "$NS" --show-labels
k delete pod web-1 -n "$NS" --timeout=15s

# Give the watch a moment to receive the DELETED event, then stop it.
deadline=$((SECONDS + 5))
until grep -q DELETED "$tmp/watch.out" 2>/dev/null || ((SECONDS >= deadline)); do sleep 0.1; done
stop_pid "$watch_pid" "kubectl watch"
watch_pid=

step "what the watch saw"
cat "$tmp/watch.out"
grep -q DELETED "$tmp/watch.out" || die "the watch did not show the deletion"

step "remaining objects in $NS"
k get svc,endpointslices,pods -n "$NS" -o wide

step "done; stopping the apiserver (pid $apiserver_pid)"
