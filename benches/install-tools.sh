#!/usr/bin/env bash
# Installs, from Debian's packages, the load generators and peers that `cargo bench --bench
# produce` runs beside mapq when they are missing: wrk (a C HTTP load generator, so that the
# client's own cost does not hide the server's), redis-server and redis-benchmark (the peer
# measured in the same run), and perf (linux-perf, for the profiles the README reports).
# Needs root for apt-get; prints what is missing and fails otherwise. Installs nothing that is
# already there, and starts no service.
set -euo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v perf >/dev/null || missing+=(linux-perf)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing: ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
  exit 1
fi
echo "installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d answering 101 keeps the packages' scripts from starting a service (redis-server).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  own_policy=1
fi
trap '[ "$own_policy" -eq 1 ] && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
