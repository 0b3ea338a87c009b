#!/usr/bin/env bash
# Demo: a sandbox cluster (topologies/default.yaml: 2 nodes on netplane's CNI, web pods, a client
# pod, a Service)
# made of network namespaces, driven with kubectl and `netplane exec`, then removed.
#
#   make demo        (or: bash scripts/demo.sh after `make setup`)
#
# Everything it creates lives in namespaces named np-demo-*; `netplane down` runs on exit, also
# on failure or Ctrl-C. The root network namespace is never touched.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NETPLANE=${NETPLANE:-$repo/.venv/bin/netplane}
NAME=demo

if [[ -t 1 ]]; then bold=$'\e[1m' plain=$'\e[0m'; else bold= plain=; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

[[ -x $NETPLANE ]] || { echo "demo: $NETPLANE not found: run 'make setup' first" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "demo: run as root (the sandbox creates network namespaces)" >&2; exit 1; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    step "netplane down --name $NAME"
    "$NETPLANE" down --name "$NAME" || rc=1
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "netplane up topologies/default.yaml --name $NAME"
"$NETPLANE" up "$repo/topologies/default.yaml" --name "$NAME"
export KUBECONFIG=$("$NETPLANE" kubeconfig --name "$NAME")
k() { kubectl --request-timeout=20s "$@"; }

step "kubectl get nodes,pods,svc,endpointslices -o wide"
k get nodes,pods,svc,endpointslices -o wide

web1=$(k get pod web-1 -o jsonpath='{.status.podIP}')
web2=$(k get pod web-2 -o jsonpath='{.status.podIP}')
client_node=$(k get pod client -o jsonpath='{.spec.nodeName}')

step "client ($client_node) -> web-1 $web1:8080, a pod on the same node"
"$NETPLANE" exec --name "$NAME" client -- curl -sS -o /dev/null -w 'HTTP %{http_code} in %{time_total}s\n' "http://$web1:8080/"

step "client -> web-2 $web2:8080, a pod on the other node (over netplane's VXLAN overlay)"
"$NETPLANE" exec --name "$NAME" client -- curl -sS -o /dev/null -w 'HTTP %{http_code} in %{time_total}s\n' "http://$web2:8080/"

step "node1's overlay: route, neighbour and FDB entry for node2 (programmed by netplane agent)"
"$NETPLANE" exec --name "$NAME" --node node1 -- ip route show dev np.vx1
"$NETPLANE" exec --name "$NAME" --node node1 -- ip neigh show dev np.vx1
"$NETPLANE" exec --name "$NAME" --node node1 -- bridge fdb show dev np.vx1

step "ping from the client pod to web-2"
"$NETPLANE" exec --name "$NAME" client -- ping -c 2 -W 1 "$web2"

step "the client pod's /etc/resolv.conf (ClusterFirst)"
"$NETPLANE" exec --name "$NAME" client -- cat /etc/resolv.conf

step "client -> the web Service by name: resolv.conf search path -> netplane dns -> ClusterIP -> netplane proxy"
"$NETPLANE" exec --name "$NAME" client -- dig +search +short web
for i in 1 2 3 4; do
    "$NETPLANE" exec --name "$NAME" client -- curl -sS -o /dev/null -w "http://web/ -> HTTP %{http_code} from %{remote_ip}:%{remote_port} in %{time_total}s\n" http://web/
done

step "node1's Service rules (netplane proxy: a prefix tree instead of one rule per Service)"
"$NETPLANE" exec --name "$NAME" --node node1 -- iptables -t nat -S | grep -E -- '-A (NP-SERVICES|NP-D-|NP-SVC-)' | head -8

step "a pod created with kubectl apply is realised by the sandbox"
k apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: web-3, labels: {app: web}}
spec:
  containers:
  - name: web
    image: netplane/host
    command: [python3, -m, http.server, "8080"]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
YAML
k wait --for=condition=Ready pod/web-3 --timeout=60s
k get pod web-3 -o wide
k get endpointslices -l kubernetes.io/service-name=web -o wide

step "netplane status --name $NAME"
"$NETPLANE" status --name "$NAME"
