#!/usr/bin/env bash
# Installs promtool (Debian package `prometheus`) when it is missing, for the deploy checks
# in tests/deploy.rs. Needs root and access to the Debian mirrors.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a Prometheus server; the checks only need promtool.
(systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || pkill -x prometheus) >/dev/null 2>&1 || true
command -v promtool
