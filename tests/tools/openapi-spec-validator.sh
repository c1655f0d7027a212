#!/usr/bin/env bash
# Runs openapi-spec-validator (from PyPI) on the files given, installing it first under the
# project's target/tools/ when it is missing there. Touches nothing outside target/.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
lib="${CARGO_TARGET_DIR:-$root/target}/tools/python"
python="$(command -v python3)"
if ! PYTHONPATH="$lib" "$python" -c 'import openapi_spec_validator' 2>/dev/null; then
  mkdir -p "$lib"
  "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$lib" 'openapi-spec-validator==0.7.2' >&2
fi
exec env PYTHONPATH="$lib" "$python" -m openapi_spec_validator "$@"
