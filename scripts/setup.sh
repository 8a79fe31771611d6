#!/usr/bin/env bash
# Set up everything virtqos, its lab, tests and benchmarks need on Debian 12 with Node 20, as root:
# Debian packages, npm packages (from package-lock.json), the bundled CLI and hook, a running libvirtd
# (+ Open vSwitch) for the end-to-end tests, and `virtqos` on PATH. Idempotent: safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*"; }
[[ $(id -u) -eq 0 ]] || { echo "setup: run as root (it installs packages and creates network namespaces)" >&2; exit 1; }
command -v node >/dev/null || { echo "setup: Node.js 20 is required (node not found)" >&2; exit 1; }
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
  { echo "setup: Node.js 20 is required, found $(node -v)" >&2; exit 1; }

# iproute2: tc/ip; iperf3 + iputils-ping: the lab and tests measure with them; bsdutils: logger(1) for syslog;
# python3, make, g++: better-sqlite3 (the agent's audit log) compiles its addon when no prebuilt one downloads;
# prometheus: its promtool checks /metrics in the tests; tmux: the tests drive `virtqos top` in it.
PACKAGES=(iproute2 iperf3 iputils-ping bsdutils python3 make g++ prometheus tmux)
missing=()
for p in "${PACKAGES[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then apt-get update -qq; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
  # Only promtool is wanted: a Prometheus server this script installed is not left running on the host.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [[ -d /run/systemd/system ]]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# libvirt + qemu (TCG) + Open vSwitch for the end-to-end tests; starts the daemons without systemd too.
bash scripts/setup-libvirt.sh --ovs

log "installing npm packages"
npm ci --no-audit --no-fund --loglevel=error
log "building dist/"
npm run --silent build
ln -sf "$(pwd)/bin/virtqos" /usr/local/bin/virtqos
log "done: $(node bin/virtqos --version 2>/dev/null || echo virtqos) ready; try \`virtqos doctor\`"
