#!/usr/bin/env bash
# Installs etcd, which the cluster tests (tests/cluster.rs) and benchmark (benches/cluster.rs)
# start themselves: Debian's etcd-server package, with apt-get (root needed; `apt-get
# update` is run once if the package lists lack it). Nothing is installed when `etcd` is on
# the PATH already. No service is started: the package's own unit is not used (containers
# have no systemd; a running one is left as it is).
set -euo pipefail
command -v etcd >/dev/null && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "etcd is missing; install it (apt-get install etcd-server) or run as root" >&2
  exit 1
fi
# Several test binaries may call this at once.
exec 9>/tmp/mapq-install-etcd.lock
flock 9
command -v etcd >/dev/null && exit 0
echo "installing etcd-server with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps the package's scripts from starting a service.
policy=/usr/sbin/policy-rc.d
made_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  made_policy=1
fi
trap '[ -n "$made_policy" ] && rm -f "$policy"' EXIT
if ! apt-get install -y -qq --no-install-recommends etcd-server >&2; then
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends etcd-server >&2
fi
command -v etcd >/dev/null
