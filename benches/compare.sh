#!/usr/bin/env bash
# mapq side by side with Redis Streams and NATS JetStream, on this machine, in one run.
#
#   benches/compare.sh            # about 3 minutes; needs root for apt-get on first run
#   ONLY=queue benches/compare.sh # only the work-queue rows
#
# Nothing on the host is started, stopped or reconfigured. Redis (redis-server and
# redis-benchmark, with the libraries the host lacks) is used from the host when installed,
# else downloaded from Debian's packages with apt-get and unpacked (not installed, so no
# service starts) under target/peers/; likewise nats-server 2.10 from Debian 13 when the
# installed one is older (2.9 has no per-message sync setting). golang-go and the Go NATS
# client, which run no service, are installed with apt-get when missing, to build
# benches/nats_bench offline. Then it builds mapq in
# release mode, starts private instances of every server on loopback ports with their data
# in a temporary directory, runs the same workload against each, prints one table with
# mapq's ratios, and stops every process it started (by PID, never by name), also on
# failure or Ctrl-C. A Redis or NATS service already running on the host is left alone.
#
# Workload, for 1 KiB and 100 B records (RECORDS_1K / RECORDS_100 of them):
#   produce  Redis: XADD with redis-benchmark, 50 connections, pipeline 16 (800 in flight)
#            NATS:  JetStream async publish with acks, 1 connection, 800 in flight
#            mapq:  HTTP produce of binary frames, batches of 100, 4 connections to 4
#                   partitions (400 in flight); fsync class: 8 connections to 1 partition
#                   (800 in flight, as Redis), so that group commit can share each msync
#   consume  Redis: XRANGE COUNT 100 with redis-benchmark, 10 connections
#            NATS:  pull consumer, fetch batches of 1000
#            mapq:  HTTP binary consume, 5000 records per request, 4 connections
#            mapq local tail: `mapq tail --format raw` reading the segment files, one
#                   process per partition at once
#   queue    Redis: XREADGROUP COUNT 100 + XACK, 8 connections (benches/nats_bench/queue.go)
#            NATS:  work-queue stream, one durable pull consumer shared by 8 workers, fetch
#                   100, explicit Ack of each message
#            mapq:  a queue group, 8 workers leasing 100 (binary answers) and acking them
#                   in one request (`mapq bench --queue-workers 8`)
# Durability classes:
#   memory   Redis appendonly yes + appendfsync everysec; NATS JetStream file storage with
#            its default sync; mapq durability=memory (flush every second)
#   fsync    Redis appendfsync always; NATS JetStream sync_interval: always; mapq
#            durability=fsync
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RECORDS_1K=${RECORDS_1K:-200000}
RECORDS_100=${RECORDS_100:-500000}
# A million: at 200,000 mapq's queue phase lasted under 0.7 s, most of it warming up.
RECORDS_QUEUE=${RECORDS_QUEUE:-1000000}

PIDS=()
WORK=$(mktemp -d /tmp/mapq-compare-XXXXXX)
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PEERS=$ROOT/target/peers
# apt-get with a private source list ($2), package lists and cache (target/peers/apt-$1):
# it downloads, and installs nothing.
private_apt() {
  APT_DIR=$PEERS/apt-$1
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  echo "$2" >"$APT_DIR/sources.list"
  APT_OPTS=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache")
  apt-get "${APT_OPTS[@]}" update -qq
}
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
# The Debian mirror this machine's apt already uses for its own release (from its sources,
# deb822 or one-line; an enabled `deb` entry for suite $codename, so that a third-party
# repository is never taken), for the suites fetched below.
debian_mirror() {
  if [ "$(. /etc/os-release && echo "${ID:-}")" != debian ]; then
    echo "benches/compare.sh fetches Debian's packages: this machine is not Debian" >&2
    return 1
  fi
  local uri
  uri=$({ cat /etc/apt/sources.list.d/*.sources 2>/dev/null
          echo  # (a last stanza without a blank line after it)
        } | awk -v suite="$codename" 'BEGIN { on = 1 }
          /^[[:space:]]*$/ { if (deb && on && has && uri != "") { print uri; exit } deb = 0; on = 1; has = 0; uri = ""; next }
          tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
          tolower($1) == "enabled:" { on = (tolower($2) != "no") }
          tolower($1) == "uris:" { uri = $2 }
          tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) has = 1 }')
  if [ -z "$uri" ]; then
    uri=$(grep -hsE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
      awk -v suite="$codename" '{ sub(/\[[^]]*\]/, ""); if ($3 == suite) { print $2; exit } }')
  fi
  if [ -z "$uri" ]; then
    echo "no enabled Debian source for $codename in /etc/apt's sources" >&2
    return 1
  fi
  echo "${uri%/}"
}

REDIS_SERVER=$(command -v redis-server || true)
REDIS_BENCHMARK=$(command -v redis-benchmark || true)
if [ -z "$REDIS_SERVER" ] || [ -z "$REDIS_BENCHMARK" ]; then
  REDIS_SERVER=$PEERS/redis/usr/bin/redis-server
  REDIS_BENCHMARK=$PEERS/redis/usr/bin/redis-benchmark
  if [ ! -x "$REDIS_BENCHMARK" ]; then
    echo "fetching redis from Debian ($codename), unpacked under target/peers/" >&2
    mirror=$(debian_mirror)
    private_apt redis "deb $mirror $codename main"
    # With the libraries the host lacks (the host's own packages are not downloaded). No
    # maintainer script runs, so no service is set up or started.
    apt-get "${APT_OPTS[@]}" install -y -qq --download-only --no-install-recommends \
      redis-server redis-tools >/dev/null
    for deb in "$APT_DIR"/cache/archives/*.deb; do
      dpkg-deb -x "$deb" "$PEERS/redis"
    done
  fi
  # (Debian's redis-server is a link to redis-check-rdb, which picks its role by name.)
  export LD_LIBRARY_PATH=$PEERS/redis/usr/lib/$(uname -m)-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
need=()
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/nats-io/nats.go ] || need+=(golang-github-nats-io-go-nats-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (no services)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# nats-server 2.10 or later (sync_interval: always): the installed one if it is recent
# enough, else Debian 13's package, unpacked (not installed) under target/peers/.
NATS=$(command -v nats-server || true)
if ! { [ -n "$NATS" ] && "$NATS" --version | grep -Eq 'v2\.(1[0-9]|[2-9][0-9])\.'; }; then
  NATS=$PEERS/usr/sbin/nats-server
  if [ ! -x "$NATS" ]; then
    echo "fetching nats-server 2.10 from Debian 13 (trixie)" >&2
    mirror=$(debian_mirror)
    private_apt trixie "deb $mirror trixie main"
    # The package alone: the binary is static, and trixie's libraries must not come along.
    (cd "$APT_DIR" && apt-get "${APT_OPTS[@]}" download nats-server 2>/dev/null)
    dpkg-deb -x "$APT_DIR"/nats-server_*.deb "$PEERS"
  fi
fi
echo "peers: $("$REDIS_SERVER" --version | cut -d' ' -f3), nats-server $("$NATS" --version | cut -d' ' -f2)" >&2

echo "building mapq (release) and the NATS client" >&2
cargo build --release --quiet --bin mapq
MAPQ=$ROOT/target/release/mapq
(cd benches/nats_bench && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$WORK/gocache \
   go build -o "$WORK/nats_bench" .)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; return 1
}

RESULTS=$WORK/results
: >"$RESULTS"
result() { echo "$1 $2 $3 $4 $5" >>"$RESULTS"; }   # system scenario records_per_s mb_per_s p50/p99

redis_run() {   # $1 class, $2 appendfsync, $3 size, $4 records
  local port dir value
  port=$(free_port); dir=$WORK/redis-$1-$3; mkdir -p "$dir"
  "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' \
    --appendonly yes --appendfsync "$2" --daemonize no --logfile "$dir/log" &
  PIDS+=($!); local pid=$!
  wait_port "$port"
  value=$(head -c "$3" /dev/zero | tr '\0' 'x')
  local csv
  csv=$("$REDIS_BENCHMARK" -p "$port" -n "$4" -c 50 -P 16 --csv XADD s '*' v "$value" | tail -1)
  # "test","rps","avg","min","p50","p95","p99","max"
  local rps p50 p99
  rps=$(echo "$csv" | cut -d, -f2 | tr -d '"'); p50=$(echo "$csv" | cut -d, -f5 | tr -d '"'); p99=$(echo "$csv" | cut -d, -f7 | tr -d '"')
  result redis "produce_$1_$3B" "$rps" "$(python3 -c "print(round($rps*$3/1e6,1))")" "${p50}ms/${p99}ms"
  if [ "$1" = memory ]; then
    csv=$("$REDIS_BENCHMARK" -p "$port" -n $(( $4 / 100 )) -c 10 -P 1 --csv XRANGE s - + COUNT 100 | tail -1)
    rps=$(echo "$csv" | cut -d, -f2 | tr -d '"'); p50=$(echo "$csv" | cut -d, -f5 | tr -d '"'); p99=$(echo "$csv" | cut -d, -f7 | tr -d '"')
    local recs; recs=$(python3 -c "print(round($rps*100))")
    result redis "consume_$3B" "$recs" "$(python3 -c "print(round($recs*$3/1e6,1))")" "${p50}ms/${p99}ms"
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

nats_run() {   # $1 class (memory|fsync), $2 size, $3 records
  local port dir sync=""
  port=$(free_port); dir=$WORK/nats-$1-$2; mkdir -p "$dir"
  [ "$1" = fsync ] && sync="sync_interval: always"
  printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s"\n %s }\n' "$port" "$dir" "$sync" >"$dir/nats.conf"
  "$NATS" -c "$dir/nats.conf" >"$dir/log" 2>&1 &
  PIDS+=($!); local pid=$!
  wait_port "$port"
  "$WORK/nats_bench" -url "nats://127.0.0.1:$port" -n "$3" -size "$2" -inflight 800 -fetch 1000 -label nats \
    | while read -r _ scenario rps mbs p50 p99; do
        lat="$(( ${p50#*=} ))us/$(( ${p99#*=} ))us"
        case $scenario in
          nats_produce) result nats "produce_$1_$2B" "${rps#*=}" "${mbs#*=}" "$lat" ;;
          nats_consume) if [ "$1" = memory ]; then result nats "consume_$2B" "${rps#*=}" "${mbs#*=}" "$lat"; fi ;;
        esac
      done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

mapq_run() {   # $1 class (memory|fsync), $2 size, $3 records, $4 connections, $5 partitions
  local port dir
  port=$(free_port); dir=$WORK/mapq-$1-$2
  "$MAPQ" serve --listen "127.0.0.1:$port" --data-dir "$dir" >"$WORK/mapq-$1-$2.out" 2>"$WORK/mapq-$1-$2.log" &
  PIDS+=($!); local pid=$!
  wait_port "$port"
  "$MAPQ" bench --server "http://127.0.0.1:$port" --topic bench --records "$3" --record-bytes "$2" \
    --batch 100 --connections "$4" --partitions "$5" --durability "$1" >"$WORK/bench-$1-$2.txt" 2>/dev/null
  while read -r _ scenario rps mbs p50 p99 _; do
    case $scenario in
      produce_*) result mapq "produce_$1_$2B" "${rps#*=}" "${mbs#*=}" "${p50#*=}us/${p99#*=}us" ;;
      consume_binary_*) if [ "$1" = memory ]; then result mapq "consume_$2B" "${rps#*=}" "${mbs#*=}" "${p50#*=}us/${p99#*=}us"; fi ;;
    esac
  done < <(grep '^RESULT' "$WORK/bench-$1-$2.txt")
  if [ "$1" = memory ]; then
    # The same consume done by local tailers, straight from the files: one process per
    # partition at once, as the HTTP consume uses one connection per partition (frames
    # written to /dev/null: the pipe to a counter would measure the pipe).
    local start end tails=()
    start=$(date +%s%N)
    for p in $(seq 0 $(( $5 - 1 ))); do
      "$MAPQ" tail --data-dir "$dir" bench --partition "$p" --format raw >/dev/null &
      tails+=($!)
    done
    for t in "${tails[@]}"; do wait "$t"; done
    end=$(date +%s%N)
    local secs frame; secs=$(python3 -c "print(($end-$start)/1e9)")
    frame=$(( ($2 + 40 + 7) / 8 * 8 ))
    result mapq_tail "consume_$2B" "$(python3 -c "print(round($3/$secs))")" "$(python3 -c "print(round($3*$frame/$secs/1e6,1))")" "-"
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# Work queues: RECORDS_QUEUE records of 1 KiB produced first, then worked off by 8
# workers taking batches of 100 and acking each record (memory class): Redis XREADGROUP +
# XACK, NATS JetStream work-queue stream with a shared pull consumer and explicit acks,
# mapq queue group leases (binary answers) and acks.
queue_runs() {
  local port dir pid n=$RECORDS_QUEUE
  echo "== work queue: $n records of 1 KiB, 8 workers, batches of 100" >&2
  port=$(free_port); dir=$WORK/redis-queue; mkdir -p "$dir"
  "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' \
    --appendonly yes --appendfsync everysec --daemonize no --logfile "$dir/log" &
  PIDS+=($!); pid=$!
  wait_port "$port"
  "$WORK/nats_bench" -queue-workers 8 -redis "127.0.0.1:$port" -n "$n" -size 1024 -fetch 100 -label redis \
    | while read -r _ _ rps mbs _; do result redis queue_1024B "${rps#*=}" "${mbs#*=}" "-"; done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  port=$(free_port); dir=$WORK/nats-queue; mkdir -p "$dir"
  printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s" }\n' "$port" "$dir" >"$dir/nats.conf"
  "$NATS" -c "$dir/nats.conf" >"$dir/log" 2>&1 &
  PIDS+=($!); pid=$!
  wait_port "$port"
  "$WORK/nats_bench" -url "nats://127.0.0.1:$port" -queue-workers 8 -n "$n" -size 1024 -fetch 100 -inflight 800 -label nats \
    | while read -r _ _ rps mbs _; do result nats queue_1024B "${rps#*=}" "${mbs#*=}" "-"; done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  port=$(free_port); dir=$WORK/mapq-queue
  "$MAPQ" serve --listen "127.0.0.1:$port" --data-dir "$dir" >"$dir.out" 2>"$dir.log" &
  PIDS+=($!); pid=$!
  wait_port "$port"
  "$MAPQ" bench --server "http://127.0.0.1:$port" --topic jobs --records "$n" --record-bytes 1024 \
    --batch 100 --connections 8 --partitions 4 --queue-workers 8 2>/dev/null \
    | grep '^RESULT queue' | while read -r _ _ rps mbs p50 p99 _; do
        result mapq queue_1024B "${rps#*=}" "${mbs#*=}" "${p50#*=}us/${p99#*=}us"
      done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

if [ "${ONLY:-}" != queue ]; then
  for size in 1024 100; do
    records=$RECORDS_1K; [ "$size" = 100 ] && records=$RECORDS_100
    echo "== $size B records: $records" >&2
    redis_run memory everysec "$size" "$records"
    redis_run fsync always "$size" "$records"
    nats_run memory "$size" "$records"
    nats_run fsync "$size" "$records"
    mapq_run memory "$size" "$records" 4 4
    mapq_run fsync "$size" "$records" 8 1
  done
fi
queue_runs

python3 - "$RESULTS" <<'EOF'
import sys, collections
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(dict)
for system, scenario, rps, mbs, lat in rows:
    by[scenario][system] = (float(rps), float(mbs), lat)
print("| scenario | system | records/s | MB/s | latency p50/p99 | mapq ratio |")
print("|---|---|---|---|---|---|")
for scenario in sorted(by):
    systems = by[scenario]
    mine = systems.get("mapq")
    for system in ["mapq", "mapq_tail", "redis", "nats"]:
        if system not in systems:
            continue
        rps, mbs, lat = systems[system]
        ratio = "" if (mine is None or system.startswith("mapq") or rps == 0) else f"{mine[0] / rps:.2f}x"
        print(f"| {scenario} | {system} | {rps:,.0f} | {mbs:,.1f} | {lat} | {ratio} |")
EOF
