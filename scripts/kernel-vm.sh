#!/usr/bin/env bash
# Run a command on Debian 12's stock kernel in a qemu VM (TCG), with this machine's own root file system,
# for the virtqos features the running kernel lacks (fq_codel, sfq, police, matchall, the OVS kernel datapath).
#
#   scripts/kernel-vm.sh [options] -- COMMAND [ARG...]
#   scripts/kernel-vm.sh -- bin/virtqos doctor
#
# The guest mounts the host's / read-only over 9p, puts a tmpfs overlay on it and chroots into it, so it runs
# the host's node, iproute2, iperf3, Open vSwitch and this checkout, at the same path and in the same working
# directory. Writes land in the guest's tmpfs and vanish with it, except in $VIRTQOS_KERNEL_VM_OUT (a
# writable 9p share; its files are copied to --out DIR). The command's output is streamed (serial console)
# and its exit status is this script's. No network device: traffic stays in the guest's own namespaces.
#
# Options:
#   --timeout SECONDS   stop the VM after this long (default 1200 = 20 min; also 30m, 1h); exit status 124
#   --out DIR           copy what the command wrote to $VIRTQOS_KERNEL_VM_OUT into DIR (created if missing)
#   --mem MB            guest memory (default 2048)     --smp N   guest CPUs (default 2)
#   --accel tcg|kvm     default tcg; kvm only where /dev/kvm really works
#   --cpu MODEL         qemu -cpu (default: max under TCG, host under KVM)
#   --kernel VERSION    a version under /lib/modules with /boot/vmlinuz-VERSION (default: newest installed)
#   --rebuild           rebuild the cached initramfs
#
# Environment passed to the command: PATH, CI, TERM, LANG, NO_COLOR/FORCE_COLOR, every VIRTQOS_*, and
# VIRTQOS_KERNEL_VM=1 (tests use it to fail, not skip, when a feature they test is missing).
# Exit status: the command's; 124 timeout; 130 interrupted (the VM is stopped); 125 the runner failed or the VM
# ended without reporting one (kernel panic, boot failure: the console output says why).
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
CACHE_ROOT=${VIRTQOS_KERNEL_VM_CACHE:-/var/cache/virtqos-kernel-vm}
MARKER=VIRTQOS-KERNEL-VM-EXIT
# Loaded in this order by the initramfs: virtio PCI transport, 9p over virtio, overlayfs.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet
  9pnet_virtio 9p overlay)

log() { printf 'kernel-vm: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 125
}

timeout_s=1200 out_dir="" mem=2048 smp=2 accel=tcg cpu="" kver="" rebuild=0
seconds() {
  case "$1" in
  *[!0-9smh]* | "") die "--timeout: not a duration: $1" ;;
  *h) echo $((${1%h} * 3600)) ;;
  *m) echo $((${1%m} * 60)) ;;
  *s) echo "${1%s}" ;;
  *) echo "$1" ;;
  esac
}
while (($#)); do
  case "$1" in
  --timeout) timeout_s=$(seconds "${2:?--timeout needs a value}") && shift 2 ;;
  --timeout=*) timeout_s=$(seconds "${1#*=}") && shift ;;
  --out) out_dir=${2:?--out needs a directory} && shift 2 ;;
  --out=*) out_dir=${1#*=} && shift ;;
  --mem) mem=${2:?} && shift 2 ;;
  --smp) smp=${2:?} && shift 2 ;;
  --accel) accel=${2:?} && shift 2 ;;
  --cpu) cpu=${2:?} && shift 2 ;;
  --kernel) kver=${2:?} && shift 2 ;;
  --rebuild) rebuild=1 && shift ;;
  -h | --help)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SCRIPT"
    exit 0
    ;;
  --) shift && break ;;
  *) die "unknown option $1 (the command goes after --)" ;;
  esac
done
(($#)) || die "no command given: scripts/kernel-vm.sh [options] -- COMMAND [ARG...]"
[[ $(id -u) -eq 0 ]] || die "run as root (installs packages, caches the initramfs under $CACHE_ROOT)"

# The guest mounts fresh tmpfs on /tmp, /run and /dev/shm over the host's root: a checkout under them is not
# there to cd into. Say so here instead of the guest's bare `cd: No such file or directory`.
case "$PWD/" in
/tmp/* | /run/* | /dev/*)
  echo "kernel-vm: the working directory $PWD is under /tmp, /run or /dev, which the VM mounts afresh; run from a checkout elsewhere (e.g. /var/tmp or /srv)" >&2
  exit 2
  ;;
esac
# ---- packages: Debian's stock kernel (to /boot and /lib/modules; the running kernel is untouched) ----
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
need=()
for p in linux-image-amd64 busybox-static qemu-system-x86 cpio; do installed "$p" || need+=("$p"); done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    apt-get update -qq
  fi
  # INITRD=No: Debian's own initramfs (update-initramfs, minutes) is not needed; we build a small one below.
  INITRD=No DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [[ -z $kver ]]; then
  # The newest installed kernel that has both an image and a module tree.
  kver=$(for d in /lib/modules/*; do
    v=${d##*/}
    [[ -f /boot/vmlinuz-$v && -f $d/modules.dep ]] && echo "$v"
  done | sort -V | tail -n1)
  [[ -n $kver ]] || die "no kernel with /boot/vmlinuz-VERSION and /lib/modules/VERSION/modules.dep found"
fi
kernel=/boot/vmlinuz-$kver
[[ -r $kernel ]] || die "$kernel not found"

# ---- the initramfs: busybox + the modules to mount the host's root; built once per kernel and script ----
hash=$(sha256sum "$SCRIPT" | cut -c1-12)
cache="$CACHE_ROOT/$kver-$hash"
initrd="$cache/initramfs.cpio.gz"
if ((rebuild)) || [[ ! -s $initrd ]]; then
  log "building the initramfs for $kver in $cache"
  mkdir -p "$CACHE_ROOT"
  build=$(mktemp -d "$CACHE_ROOT/build.XXXXXX")
  trap 'rm -rf "$build"' EXIT
  root="$build/root"
  mkdir -p "$root"/{bin,dev,proc,sys,lower,rw,newroot,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  moddir=/lib/modules/$kver
  for m in "${MODULES[@]}"; do
    rel=$(grep -m1 -E "(^|/)${m}\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep" | cut -d: -f1) ||
      die "module $m not in $moddir/modules.dep"
    src="$moddir/$rel"
    # busybox insmod takes plain .ko files only.
    case "$src" in
    *.xz) xz -dc "$src" >"$root/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$src" >"$root/lib/modules/$m.ko" ;;
    *.gz) gzip -dc "$src" >"$root/lib/modules/$m.ko" ;;
    *) cp "$src" "$root/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$root/lib/modules/order"
  done
  cat >"$root/init" <<'INIT'
#!/bin/busybox sh
# PID 1: mount the host's root (9p, read-only) under a tmpfs overlay, run the job chrooted, report, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
stty -onlcr 2>/dev/null
fail() { echo "kernel-vm: $*"; echo "VIRTQOS-KERNEL-VM-EXIT=125"; poweroff -f; sleep 5; reboot -f; }
for m in $(cat /lib/modules/order); do insmod "/lib/modules/$m.ko" || fail "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower || fail "mounting the host root failed"
mount -t tmpfs -o mode=755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "overlay failed"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t tmpfs -o mode=755 run $R/run
mount -t tmpfs -o mode=1777 tmp $R/tmp
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
mkdir -p $R/run/netns $R/run/virtqos-kernel-vm
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=512000 job $R/run/virtqos-kernel-vm || fail "mounting the job share failed"
hostname kernel-vm
chroot $R /bin/bash /run/virtqos-kernel-vm/runner.sh
rc=$?
echo "$rc" >$R/run/virtqos-kernel-vm/rc
sync
echo "VIRTQOS-KERNEL-VM-EXIT=$rc"
umount $R/run/virtqos-kernel-vm 2>/dev/null
poweroff -f
sleep 5
reboot -f
INIT
  chmod 755 "$root/init"
  # The kernel loads modules on demand (ifb, sch_sfq, act_police, ...) by running /sbin/modprobe in PID 1's
  # root, which is this initramfs: hand such requests to the host's modprobe and module tree in the chroot.
  mkdir -p "$root/sbin"
  printf '#!/bin/busybox sh\nexec /bin/busybox chroot /newroot /sbin/modprobe "$@"\n' >"$root/sbin/modprobe"
  chmod 755 "$root/sbin/modprobe"
  (cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$build/initramfs.cpio.gz"
  mkdir -p "$cache"
  mv -f "$build/initramfs.cpio.gz" "$initrd"
  rm -rf "$build"
  trap - EXIT
  # Older builds of the same kernel (another script version) are of no further use.
  for old in "$CACHE_ROOT/$kver"-*; do [[ $old == "$cache" ]] || rm -rf "$old"; done
fi

# ---- the job: argv, cwd and environment, read by the guest from a writable 9p share ----
job=$(mktemp -d "${TMPDIR:-/tmp}/virtqos-kernel-vm.XXXXXX")
share="$job/share" # what the guest sees at /run/virtqos-kernel-vm; the rest of $job is the host's
cleanup() {
  # The VM's `timeout` process (its own process group): stopping it stops qemu.
  if [[ -s $job/vm.pid ]]; then
    kill "$(<"$job/vm.pid")" 2>/dev/null && wait 2>/dev/null
  fi
  rm -rf "$job"
}
trap cleanup EXIT
trap 'log "interrupted: stopping the VM"; exit 130' INT TERM
mkdir -p "$share/out"
printf '%s\0' "$@" >"$share/argv"
printf '%s' "$PWD" >"$share/cwd"
{
  for v in PATH CI TERM LANG LC_ALL NO_COLOR FORCE_COLOR $(compgen -v VIRTQOS_ || true); do
    [[ -v $v ]] && printf 'export %s=%q\n' "$v" "${!v}"
  done
  # Output goes through the serial console (a tty in the guest): no colours unless the host has a terminal.
  [[ -t 1 || -v FORCE_COLOR ]] || echo "export NO_COLOR=1"
  echo "export HOME=/root VIRTQOS_KERNEL_VM=1 VIRTQOS_KERNEL_VM_OUT=/run/virtqos-kernel-vm/out"
} >"$share/env"
cat >"$share/runner.sh" <<'RUNNER'
# Runs in the guest under the host's bash, chrooted into the overlay of the host's root.
J=/run/virtqos-kernel-vm
. "$J/env"
ip link set lo up
# Under TCG a receiving process is scheduled late: with the default 208 KiB socket buffer a UDP receiver drops
# datagrams at ~100 Mbit/s (measured: 8-15 % "loss" unshaped), which would be charged to the shaper. These
# two are global (not per network namespace) on 6.1.
sysctl -q -w net.core.rmem_default=4194304 net.core.rmem_max=8388608
mapfile -d '' -t argv <"$J/argv"
cd "$(cat "$J/cwd")" || exit 125
"${argv[@]}"
RUNNER

log "booting $kver ($accel, ${smp} CPUs, ${mem} MB, timeout ${timeout_s} s): $*"
accel_args=(-accel tcg,thread=multi -cpu "${cpu:-max}")
[[ $accel == kvm ]] && accel_args=(-accel kvm -cpu "${cpu:-host}")
run_vm() {
  # stdin /dev/null: nothing is typed into the console. `timeout` runs qemu in its own process group, so a
  # Ctrl-C reaches this script (which stops the VM), not qemu's console.
  timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 \
    "${accel_args[@]}" -m "$mem" -smp "$smp" \
    -nodefaults -no-user-config -display none -nic none -no-reboot \
    -serial stdio -monitor none \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$share,mount_tag=job,security_model=none,multidevs=remap" \
    </dev/null &
  echo $! >"$job/vm.pid"
  local status=0
  wait $! || status=$?
  echo "$status" >"$job/vm.status"
}
started=$(date +%s)
# In the background and waited for: a signal to this script is handled at once (bash runs traps only
# between foreground commands).
run_vm | sed -u -e 's/\r$//' -e "/^$MARKER=/d" -e '/^\[ *[0-9.]*\] reboot: Power down$/d' &
wait $! || true
vm_status=$(cat "$job/vm.status" 2>/dev/null || echo "?")
rm -f "$job/vm.pid"
elapsed=$(($(date +%s) - started))
if [[ $vm_status == 124 ]]; then
  log "TIMEOUT: the VM ran for ${timeout_s} s and was stopped (raise --timeout)"
  exit 124
fi
if [[ ! -s $share/rc ]]; then
  log "the VM ended after ${elapsed} s without an exit status (qemu exit ${vm_status}): boot failure or kernel panic, see above"
  exit 125
fi
rc=$(<"$share/rc")
if [[ -n $out_dir ]]; then
  mkdir -p "$out_dir"
  cp -a "$share/out/." "$out_dir/"
fi
log "exit status $rc after ${elapsed} s"
exit "$rc"
