#!/usr/bin/env bash
# Make eBPF socket balancing loadable on this machine (run as root; idempotent).
#
#  1. Debian's bcc (python3-bpfcc) and a kernel header tree package (linux-headers-<arch>).
#  2. bcc compiles against a kernel header tree. When the running kernel ships none
#     (/lib/modules/$(uname -r)/build missing, no /sys/kernel/kheaders.tar.xz), merge Debian's
#     split "-common" + "-<arch>" header packages into /usr/src/waxflow-kernel-headers, which
#     bpf/loader.py uses. The program only needs stable UAPI (struct sk_reuseport_md and
#     bpf_sk_select_reuseport, Linux >= 4.19), so the nearest Debian headers serve any newer
#     kernel.
#  3. bpffs mounted at /sys/fs/bpf, where the per-listener socket maps are pinned so that
#     every process of a Bytewax cluster joins the same map.
#
# Without root (or on a machine where this fails), the inlet falls back to classic BPF and
# says so in its log and its waxflow_inlet_balancing_mode gauge.
set -euo pipefail

TREE=/usr/src/waxflow-kernel-headers

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-ebpf: must run as root" >&2
    exit 1
fi

arch=$(dpkg --print-architecture)
missing=()
for pkg in python3-bpfcc "linux-headers-$arch"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup-ebpf: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi

if [[ -d /lib/modules/$(uname -r)/build/include || -e /sys/kernel/kheaders.tar.xz ]]; then
    echo "setup-ebpf: the running kernel has its own headers; no tree needed"
else
    # The newest Debian header package pair: linux-headers-X-common + linux-headers-X-<arch>.
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
    [[ -n $common ]] || { echo "setup-ebpf: no /usr/src/linux-headers-*-common" >&2; exit 1; }
    archdir=${common%-common}-$arch
    [[ -d $archdir ]] || { echo "setup-ebpf: $archdir missing" >&2; exit 1; }
    stamp="$common $archdir"
    if [[ ! -f $TREE/.waxflow-source || $(cat "$TREE/.waxflow-source") != "$stamp" ]]; then
        rm -rf "$TREE.new"
        mkdir -p "$TREE.new"
        # A symlink farm: the arch-specific (generated) files override the common ones.
        cp -as "$common/." "$TREE.new/"
        cp -as --remove-destination "$archdir/." "$TREE.new/"
        echo "$stamp" > "$TREE.new/.waxflow-source"
        rm -rf "$TREE"
        mv "$TREE.new" "$TREE"
    fi
    echo "setup-ebpf: kernel headers for bcc at $TREE (from $(basename "$common"))"
fi

if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
fi
echo "setup-ebpf: bpffs mounted at /sys/fs/bpf"
