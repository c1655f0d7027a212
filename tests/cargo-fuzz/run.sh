#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo fuzz (libFuzzer), each target for a bounded time.
#   tests/cargo-fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60, all three)
# Installs cargo-fuzz from crates.io when missing. Uses the nightly toolchain when rustup has
# one (with AddressSanitizer); otherwise the stable one, with RUSTC_BOOTSTRAP=1 to allow the
# flags libFuzzer needs, and no sanitizer. The corpus grows in target/fuzz/corpus/<target>
# (seeded from seeds/<target>); a failing input is left in target/fuzz/artifacts/<target>:
# copy it into regressions/<target>/ (tests/fuzz.rs replays them all) and fix the bug.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(frame_decoding segment_recovery request_bodies)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  FUZZ=(cargo +nightly fuzz)
  SANITIZER=address
else
  export RUSTC_BOOTSTRAP=1
  FUZZ=(cargo fuzz)
  SANITIZER=none
fi
export CARGO_TARGET_DIR=$ROOT/target/fuzz
for target in "${TARGETS[@]}"; do
  corpus=$ROOT/target/fuzz/corpus/$target
  artifacts=$ROOT/target/fuzz/artifacts/$target
  mkdir -p "$corpus" "$artifacts"
  cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  echo "== $target: $SECONDS_PER_TARGET s (sanitizer: $SANITIZER)" >&2
  "${FUZZ[@]}" run --fuzz-dir . --sanitizer "$SANITIZER" --release "$target" "$corpus" -- \
    -max_total_time="$SECONDS_PER_TARGET" -artifact_prefix="$artifacts/" -print_final_stats=1 \
    -max_len=65536 -timeout=10 -rss_limit_mb=4096
done
