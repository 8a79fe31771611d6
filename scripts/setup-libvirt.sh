#!/usr/bin/env bash
# Prepare a real libvirtd + QEMU (TCG) environment for the e2e tests.
#
# Idempotent: every step checks first and only acts when something is missing,
# so tests may call it before each suite. Works with and without systemd as
# PID 1 (CI containers usually have no init system at all).
#
# Usage: scripts/setup-libvirt.sh [--ovs] [--reload-libvirtd] [--restart-libvirtd]
#                                 [--no-install] [--timeout SECONDS]
#
#   --ovs               also start Open vSwitch (ovsdb-server + ovs-vswitchd)
#                       through ovs-ctl; bridges must use datapath_type=netdev
#                       because the kernel has no openvswitch module.
#   --reload-libvirtd   send SIGHUP: libvirtd re-scans /etc/libvirt/hooks on
#                       SIGHUP, which is all a newly installed hook needs.
#   --restart-libvirtd  stop libvirtd (SIGTERM, wait for exit) and start it
#                       again; running QEMU domains survive (the qemu hook is
#                       called with "reconnect begin" for each of them).
#   --no-install        skip the apt-get step (fail if something is missing).
#   --timeout SECONDS   how long to wait for each daemon to answer (default 90:
#                       a cold first start probes QEMU capabilities, ~8 s here).
set -euo pipefail

URI="qemu:///system"
HOOK_DIR="/etc/libvirt/hooks/qemu.d"
LIBVIRTD_PIDFILE="/run/libvirtd.pid"
VIRTLOGD_PIDFILE="/run/virtlogd.pid"
LOG_DIR="/var/log/libvirt"
# libvirtd logs to stderr (i.e. /dev/null once daemonised) when there is no
# journald; send warnings to a file so hook/network failures can be diagnosed.
LIBVIRTD_LOG="${LOG_DIR}/libvirtd.log"
PACKAGES=(libvirt-daemon-system libvirt-clients qemu-system-x86 openvswitch-switch
          iproute2 iperf3 iptables dnsmasq-base procps)
# Daemons must not inherit the caller's environment (CI variables, NODE_OPTIONS,
# a test's cwd-relative PATH): hooks run with the daemon's PATH and LANG.
DAEMON_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
            LANG=C.UTF-8 HOME=/root)

want_ovs=0
want_reload=0
want_restart=0
do_install=1
timeout_s=90

log() { printf 'setup-libvirt: %s\n' "$*"; }
die() { printf 'setup-libvirt: ERROR: %s\n' "$*" >&2; exit 1; }

while (($#)); do
  case "$1" in
    --ovs) want_ovs=1 ;;
    --reload-libvirtd) want_reload=1 ;;
    --restart-libvirtd) want_restart=1 ;;
    --no-install) do_install=0 ;;
    --timeout)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "--timeout needs a number of seconds"
      timeout_s="$2"; shift ;;
    -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

[[ "$(id -u)" -eq 0 ]] || die "must run as root (libvirtd system mode, tap devices, apt-get)"

# systemd is only used when it really is PID 1; a unit file on disk means nothing
# inside a container whose PID 1 is something else.
has_systemd=0
pid1="$(cat /proc/1/comm 2>/dev/null || echo '?')"
if [[ -d /run/systemd/system && "$pid1" == systemd ]]; then
  has_systemd=1
fi

# ---------------------------------------------------------------- packages --
install_packages() {
  local missing=() p status
  for p in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    log "packages already installed: ${PACKAGES[*]}"
    return
  fi
  ((do_install)) || die "missing packages and --no-install given: ${missing[*]}"
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Recommends stay on: that is how the packages were measured on the dev
  # machine (dnsmasq-base, qemu firmware, ... come in that way).
  # 'apt-get update' only when needed: empty lists on a fresh image, or an
  # install that fails because the lists are stale.
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    log "apt lists are empty: apt-get update"
    apt-get update -qq
  fi
  if ! apt-get install -y -qq "${missing[@]}"; then
    log "install failed, refreshing apt lists and retrying"
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
  fi
}

# ----------------------------------------------------------------- helpers --
pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
pid_from() {
  if [[ -r "$1" ]]; then tr -cd '0-9' <"$1"; fi
}

libvirtd_pid() {
  local pid
  pid="$(pid_from "$LIBVIRTD_PIDFILE")"
  if pid_alive "$pid"; then echo "$pid"; return; fi
  # A libvirtd started with another pid file (or by hand) still owns the socket;
  # find it by exact process name so we never start a second one.
  pgrep -x libvirtd | head -n1 || true
}

wait_for_virsh() {
  local deadline=$((SECONDS + timeout_s)) err=""
  while ((SECONDS < deadline)); do
    if err="$(timeout 10 virsh -c "$URI" version 2>&1 >/dev/null)"; then
      return 0
    fi
    sleep 0.2
  done
  log "last virsh error: ${err}"
  [[ -f "$LIBVIRTD_LOG" ]] && { log "tail of ${LIBVIRTD_LOG}:"; tail -n 20 "$LIBVIRTD_LOG" >&2 || true; }
  die "libvirtd did not answer 'virsh -c ${URI} version' within ${timeout_s}s"
}

ensure_hook_dir() {
  # libvirtd decides at start-up (and on SIGHUP) whether the qemu hook is
  # present: /etc/libvirt/hooks/qemu or an *executable file* in qemu.d. The
  # directory alone is not enough, but it must exist for tests to drop hooks in.
  if [[ ! -d "$HOOK_DIR" ]]; then
    install -d -m 0755 "$HOOK_DIR"
    log "created ${HOOK_DIR}"
  fi
}

start_virtlogd() {
  if ((has_systemd)); then
    systemctl start virtlogd.socket virtlogd.service
    log "virtlogd started via systemctl"
    return
  fi
  if pid_alive "$(pid_from "$VIRTLOGD_PIDFILE")" || pgrep -x virtlogd >/dev/null; then
    log "virtlogd already running"
    return
  fi
  "${DAEMON_ENV[@]}" virtlogd -d </dev/null
  log "virtlogd started (virtlogd -d)"
}

start_libvirtd() {
  if ((has_systemd)); then
    systemctl start libvirtd.service
    log "libvirtd started via systemctl"
    return
  fi
  if [[ -n "$(libvirtd_pid)" ]]; then
    log "libvirtd already running (pid $(libvirtd_pid))"
    return
  fi
  install -d -m 0755 "$LOG_DIR"
  local t0=$SECONDS
  # -d daemonises (and closes stdio, so callers waiting on our stdout do not
  # hang); the log variables only add a warnings file.
  "${DAEMON_ENV[@]}" LIBVIRT_LOG_OUTPUTS="3:file:${LIBVIRTD_LOG}" libvirtd -d </dev/null
  wait_for_virsh
  log "libvirtd started (libvirtd -d) in ~$((SECONDS - t0))s"
}

stop_libvirtd() {
  local pid deadline
  pid="$(libvirtd_pid)"
  if [[ -z "$pid" ]]; then return; fi
  # SIGTERM is libvirtd's clean shutdown; QEMU processes are not its children
  # (they are daemonised) and keep running.
  kill -TERM "$pid"
  deadline=$((SECONDS + 30))
  while pid_alive "$pid"; do
    if ((SECONDS >= deadline)); then
      log "libvirtd pid ${pid} ignored SIGTERM for 30s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.05
  done
  log "libvirtd (pid ${pid}) stopped"
}

restart_libvirtd() {
  local t0
  t0=$(date +%s%N)
  if ((has_systemd)); then
    systemctl restart libvirtd.service
  else
    stop_libvirtd
    start_libvirtd
  fi
  wait_for_virsh
  log "libvirtd restarted in $((($(date +%s%N) - t0) / 1000000)) ms"
}

reload_libvirtd() {
  if ((has_systemd)); then
    systemctl reload libvirtd.service
  else
    local pid
    pid="$(libvirtd_pid)"
    [[ -n "$pid" ]] || die "libvirtd is not running, cannot reload"
    kill -HUP "$pid"
  fi
  # The reload runs in a libvirtd thread; re-scanning the hook directory is its
  # first step, so a short pause is enough before the next domain start.
  sleep 0.5
  wait_for_virsh
  log "libvirtd reloaded (SIGHUP): hook directories re-scanned"
}

start_ovs() {
  if timeout 5 ovs-vsctl --timeout=3 show >/dev/null 2>&1; then
    log "Open vSwitch already running"
    return
  fi
  if ((has_systemd)); then
    systemctl start openvswitch-switch.service
  else
    # ovs-ctl complains about ulimit and the missing kernel module here; both
    # are harmless with the userspace (netdev) datapath.
    "${DAEMON_ENV[@]}" /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random </dev/null
  fi
  local deadline=$((SECONDS + timeout_s))
  until timeout 5 ovs-vsctl --timeout=3 show >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "ovs-vsctl show did not answer within ${timeout_s}s (see /var/log/openvswitch/)"
    sleep 0.2
  done
  log "Open vSwitch started (use datapath_type=netdev bridges)"
}

# -------------------------------------------------------------------- main --
if ((has_systemd)); then log "init: systemd"; else log "init: no systemd (PID 1 is ${pid1})"; fi
install_packages
ensure_hook_dir
start_virtlogd
if ((want_restart)); then
  restart_libvirtd
else
  start_libvirtd
  if ((want_reload)); then reload_libvirtd; fi
fi
wait_for_virsh
log "libvirt ready: $(virsh -c "$URI" version 2>/dev/null | tr '\n' ' ' | sed 's/  */ /g')"
if ((want_ovs)); then
  start_ovs
fi
log "done"
