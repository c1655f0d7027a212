#!/usr/bin/env bash
# Installs the Kafka clients tests/kafka.rs runs against mapq's Kafka listener, none of them
# written by this project:
#   - kcat and python3-confluent-kafka (both librdkafka), from Debian's packages, with
#     apt-get (root needed; `apt-get update` is run once if the package lists are missing);
#   - kafka-python and aiokafka, from PyPI, into DIR/kafka-python and DIR/aiokafka (run with
#     PYTHONPATH), with the pip of Debian's /usr/bin/python3 (the interpreter the tests run)
#     when it has one;
#   - kafkajs, from the npm registry, into DIR/kafkajs/node_modules.
# Versions are pinned. Nothing already there is installed again; no service is started.
# Registries are the machine's own configured ones (apt sources, pip and npm settings).
#
# Usage: tests/tools/install-kafka-clients.sh DIR
set -euo pipefail

KAFKA_PYTHON=3.0.12
AIOKAFKA=0.14.0
KAFKAJS=2.2.4

dir=${1:?usage: install-kafka-clients.sh DIR}
mkdir -p "$dir"
# Several test binaries may call this at once.
exec 9>"$dir/.install.lock"
flock 9

missing=()
command -v kcat >/dev/null || missing+=(kcat)
/usr/bin/python3 -c 'import confluent_kafka' 2>/dev/null || missing+=(python3-confluent-kafka)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  echo "installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
fi

pip=()
for py in /usr/bin/python3 python3; do
  if "$py" -m pip --version >/dev/null 2>&1; then
    pip=("$py" -m pip)
    break
  fi
done
# pip_into DIR SPEC...: installs SPEC (with its dependencies) into DIR, once.
pip_into() {
  local into=$1 stamp=$1/.installed
  shift
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$*" ] && return 0
  if [ ${#pip[@]} -eq 0 ]; then
    echo "no pip to install $* with (install python3-pip)" >&2
    exit 1
  fi
  rm -rf "$into"
  "${pip[@]}" install -q --disable-pip-version-check --root-user-action=ignore \
    --target "$into" "$@" >&2
  echo "$*" >"$stamp"
}
pip_into "$dir/kafka-python" --no-deps "kafka-python==$KAFKA_PYTHON"
pip_into "$dir/aiokafka" "aiokafka==$AIOKAFKA"

if [ ! -f "$dir/kafkajs/.v$KAFKAJS" ]; then
  command -v npm >/dev/null || {
    echo "no npm to install kafkajs with (install nodejs and npm)" >&2
    exit 1
  }
  rm -rf "$dir/kafkajs"
  mkdir -p "$dir/kafkajs"
  (cd "$dir/kafkajs" && npm install --silent --no-audit --no-fund --no-save "kafkajs@$KAFKAJS" >&2)
  touch "$dir/kafkajs/.v$KAFKAJS"
fi
