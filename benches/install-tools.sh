#!/usr/bin/env bash
# Installs, from Debian's packages, what `cargo bench --bench produce` runs beside mapq when it
# is missing: wrk (a C HTTP load generator, so that the client's own cost does not hide the
# server's) and redis-tools (redis-benchmark, and the Redis server binary, which the benchmark
# runs by its own pid from a private directory; the redis-server package, which would set up a
# service, is not needed). perf (linux-perf), for the profiles the README reports, is
# installed when asked: `benches/install-tools.sh --perf`.
# Needs root for apt-get; prints what is missing and fails otherwise. Installs nothing that is
# already there; these packages start no service.
set -euo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
{ command -v redis-benchmark >/dev/null && command -v redis-check-rdb >/dev/null; } ||
  missing+=(redis-tools)
if [ "${1:-}" = "--perf" ]; then
  command -v perf >/dev/null || missing+=(linux-perf)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing: ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
  exit 1
fi
echo "installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
