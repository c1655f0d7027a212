#!/usr/bin/env bash
# Prints the path of a promtool for the deploy checks in tests/deploy.rs, on stdout (the last
# line; everything else goes to stderr).
#
# A promtool on PATH is used as it is. Otherwise the Debian package `prometheus` is fetched
# as a file (`apt-get download`, from the machine's configured apt sources) and unpacked with
# `dpkg-deb -x` under DIR (default: target/tools/ of this repository, or of
# $CARGO_TARGET_DIR), and the promtool inside it is used. Nothing is installed on the system,
# no service is started, stopped or killed, and no root is needed unless the package lists
# are missing: only then, and only if the download failed, `apt-get update` is run once.
#
# Usage: deploy/install-promtool.sh [DIR]
set -euo pipefail

if found=$(command -v promtool); then
  echo "$found"
  exit 0
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
tools=${1:-${CARGO_TARGET_DIR:-$repo/target}/tools}
unpacked=$tools/prometheus
promtool=$unpacked/usr/bin/promtool

usable() { [ -x "$promtool" ] && "$promtool" --version >/dev/null 2>&1; }

if usable; then
  echo "$promtool"
  exit 0
fi

mkdir -p "$tools"
# Another checkout sharing the target directory may be fetching at the same moment.
exec 9>"$tools/.prometheus.lock"
flock 9

if ! usable; then
  for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || {
      echo "promtool is not on PATH and $tool (needed to fetch it) is missing:" \
        "install promtool (Prometheus' command-line tool) and run the tests again" >&2
      exit 1
    }
  done
  work=$(mktemp -d "$tools/prometheus.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # apt-get download writes into the current directory, readable by apt's own user.
  chmod 0755 "$work"
  download() { (cd "$work" && apt-get download -q prometheus) >&2; }
  if ! download; then
    echo "apt-get download failed; updating the package lists once and retrying" >&2
    apt-get update -q >&2
    download
  fi
  debs=("$work"/prometheus_*.deb)
  [ -f "${debs[0]}" ] || {
    echo "apt-get download left no prometheus_*.deb in $work" >&2
    exit 1
  }
  dpkg-deb -x "${debs[0]}" "$work/root"
  [ -x "$work/root/usr/bin/promtool" ] || {
    echo "${debs[0]} holds no usr/bin/promtool" >&2
    exit 1
  }
  rm -rf "$unpacked"
  mv "$work/root" "$unpacked"
  usable || {
    echo "$promtool does not run" >&2
    exit 1
  }
fi
echo "$promtool"
