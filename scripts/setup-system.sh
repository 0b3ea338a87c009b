#!/usr/bin/env bash
# Install the Debian 12 packages netplane needs, and make bcc find kernel headers.
#
# Idempotent: when every package is already installed it only checks (dpkg-query) and exits.
# `apt-get update` runs only when something has to be installed and the package lists are stale
# or do not know a package. Never touches the network configuration of the host.
#
# `make setup` runs this and records a stamp keyed on this file's content, so editing the list
# below makes the next `make setup` run it again.
set -euo pipefail

# name                          why
PACKAGES=(
    iptables                    # kube-proxy iptables mode, masquerade; iptables-save/restore
    python3-venv                # the venv is made by Debian's /usr/bin/python3
    python3-bpfcc               # bcc (import bcc) for the eBPF card; only /usr/bin/python3 sees it
    linux-headers-amd64         # kernel headers bcc compiles BPF programs against
    bind9-dnsutils              # dig
    iperf3                      # throughput benchmarks
    dnsperf                     # DNS benchmarks
    dnsmasq-base                # dnsmasq binary as a DNS benchmark anchor, without the service
    containernetworking-plugins # reference CNI plugins in /usr/lib/cni
    iproute2                    # ip, ss, tc
    procps                      # sysctl, ps, pkill
    conntrack                   # conntrack -L/-D
    tcpdump
    ethtool
    kmod                        # modprobe, lsmod
    util-linux                  # nsenter, unshare
    iputils-ping                # ping (pods and tests check reachability with ICMP)
    netcat-openbsd              # nc for quick TCP/UDP checks from pods
    ca-certificates
    gcc                         # builds the C CNI shim (cni/shim/*.c)
    libc6-dev                   # its headers and libc.a (the shim is linked statically)
    clang-14                    # compiles ebpf/*.bpf.c (libbpf programs: they call kfuncs, bcc cannot)
    libbpf-dev                  # their headers (bpf_helpers.h); libbpf1 loads them at run time
    libbpf1
)

log() { printf 'setup-system: %s\n' "$*"; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        log "not root and no sudo: cannot install packages" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)

installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

has_candidate() {
    local c
    c=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [[ -n $c && $c != "(none)" ]]
}

# The package lists are "stale" when older than a day (mirrors drop superseded .debs).
lists_stale() {
    local newest
    newest=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -printf '%T@\n' 2>/dev/null |
        sort -n | tail -1)
    [[ -z $newest ]] && return 0
    (($(date +%s) - ${newest%.*} > 86400))
}

missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    need_update=0
    if lists_stale; then
        need_update=1
    else
        for p in "${missing[@]}"; do
            has_candidate "$p" || need_update=1
        done
    fi
    if ((need_update)); then
        log "apt-get update"
        "${SUDO[@]}" apt-get "${APT_OPTS[@]}" update -qq
    fi
    install=("${SUDO[@]}" apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends "${missing[@]}")
    if ! "${install[@]}"; then
        ((need_update)) && exit 1
        log "install failed with the current package lists; apt-get update and retry"
        "${SUDO[@]}" apt-get "${APT_OPTS[@]}" update -qq
        "${install[@]}"
    fi
    # dnsmasq-base has no service; make sure nobody pulled in the full dnsmasq package with it.
    if installed dnsmasq; then
        log "WARNING: the dnsmasq package (system service) is installed; netplane only needs dnsmasq-base"
    fi
fi

# bcc compiles BPF C against /lib/modules/$(uname -r)/build (generated headers, Makefile) and
# /lib/modules/$(uname -r)/source (the rest; Debian splits them into -amd64 and -common). Kernels
# without a matching headers package (custom or VM kernels) have neither, so point them at
# Debian's newest headers. BPF programs that use helpers and stable UAPI structs work across these
# versions; anything reading kernel-internal structs may not.
kver=$(uname -r)
moddir=/lib/modules/$kver
if [[ ! -e $moddir/build ]]; then
    headers=$(find /usr/src -maxdepth 1 -type d -name 'linux-headers-*-amd64' -printf '%f\n' 2>/dev/null |
        sort -V | tail -1)
    if [[ -z $headers ]]; then
        log "bcc: the running kernel $kver has no headers and no /usr/src/linux-headers-*-amd64 exists" >&2
        exit 1
    fi
    "${SUDO[@]}" mkdir -p "$moddir"
    "${SUDO[@]}" ln -sfn "/usr/src/$headers" "$moddir/build"
    echo "bcc: the running kernel $kver has no headers; linked $moddir/build -> /usr/src/$headers"
fi
if [[ ! -e $moddir/source ]]; then
    # The -common tree that goes with the -amd64 one, as the Debian kernel's own link has it.
    headers=$(basename "$(readlink -f "$moddir/build")")
    common=/usr/src/${headers%-amd64}-common
    if [[ $headers == linux-headers-*-amd64 && -d $common ]]; then
        "${SUDO[@]}" ln -sfn "$common" "$moddir/source"
        echo "bcc: linked $moddir/source -> $common"
    fi
fi

# Final check, cheap: every package installed, bcc importable by Debian's python.
for p in "${PACKAGES[@]}"; do
    installed "$p" || { log "package $p is still not installed" >&2; exit 1; }
done
/usr/bin/python3 -c 'import bcc' || { log "/usr/bin/python3 cannot import bcc" >&2; exit 1; }
