#!/usr/bin/env bash
# Worker benchmarks on loopback, real servers: submit-to-revision latency of a code-only
# change (hyperfine), throughput of 50 jobs over 10 apps with two workers, and a runtime-wide
# rebase of N apps (default 100) through the queue. Prints a table.
#
# Usage: bench/worker.sh [APPS_TO_REBASE]   (needs nats-server 2.10+, docker-registry, umoci,
#        skopeo, hyperfine; builds target/release/kiln)
set -euo pipefail
cd "$(dirname "$0")/.."
REBASE_APPS=${1:-100}
cargo build --release -q
KILN=$PWD/target/release/kiln
source bench/lib.sh
start_nats
start_registry
export KILN_CACHE_DIR=$W/cli-cache KILN_INSECURE_REGISTRIES=$REG KILN_NATS=$NATS

# Runtime bases v1 (host node) and v2 (the same plus one stack layer, made with umoci).
$KILN base from-host --to "$REG/base/node:v1" >/dev/null 2>&1
skopeo copy -q --src-tls-verify=false "docker://$REG/base/node:v1" "oci:$W/v2:base"
umoci unpack --image "$W/v2:base" "$W/v2-bundle" >/dev/null
echo v2 >"$W/v2-bundle/rootfs/etc/kiln-stack"
umoci repack --image "$W/v2:base" "$W/v2-bundle" >/dev/null
skopeo copy -q --dest-tls-verify=false "oci:$W/v2:base" "docker://$REG/base/node:v2"
$KILN runtime publish faas --base "$REG/base/node:v1" --to "$REG/kiln/runtime-faas:v1" >/dev/null 2>&1
$KILN runtime publish faas --base "$REG/base/node:v2" --to "$REG/kiln/runtime-faas:v2" >/dev/null 2>&1

for w in 1 2; do
  KILN_CACHE_DIR=$W/worker$w $KILN worker --registry "$REG" --base "$REG/kiln/runtime-faas:v1" \
    --jobs 8 --name "bench-$w" >"$W/worker$w.log" 2>&1 & pids+=($!)
done

# 1. Submit-to-revision latency of a code-only change, small faas app.
APP=$W/app; cp -r fixtures/faas-hello "$APP"
echo "module.exports = async () => ({ v: 'x' }); // BENCH-EDIT" >"$APP/functions/edit.js"
$KILN submit "$APP" --app latency --wait >/dev/null 2>&1
printf '#!/bin/sh\nsed -i "s/v: .*}/v: %s }/" %s\n' "'\$(date +%s%N)'" "$APP/functions/edit.js" >"$W/edit.sh"
chmod +x "$W/edit.sh"
hyperfine -N -w 3 -r 30 --export-json "$W/latency.json" --prepare "$W/edit.sh" \
  "$KILN submit $APP --app latency --wait" >"$W/latency.txt" 2>&1 || { cat "$W/latency.txt"; exit 1; }
LAT=$(python3 -c "import json;r=json.load(open('$W/latency.json'))['results'][0];print(f\"{r['mean']*1000:.1f} ms ± {r['stddev']*1000:.1f} (median {r['median']*1000:.1f}, min {r['min']*1000:.1f})\")")

# 2. Throughput: 50 jobs, 10 apps, distinct sources.
for i in $(seq 0 49); do
  d=$W/src$i; cp -r fixtures/faas-hello "$d"
  echo "module.exports = async () => ({ job: $i });" >"$d/functions/job.js"
done
start=$(date +%s.%N)
subs=()
for i in $(seq 0 49); do $KILN submit "$W/src$i" --app "tp$((i % 10))" >/dev/null 2>&1 & subs+=($!); done
wait "${subs[@]}"
wait_for() { # app count
  until [ "$($KILN revisions "$1" --json 2>/dev/null | python3 -c 'import json,sys;print(len(json.load(sys.stdin)["revisions"]))' 2>/dev/null || echo 0)" -ge "$2" ]; do sleep 0.05; done
}
for a in $(seq 0 9); do wait_for "tp$a" 5; done
end=$(date +%s.%N)
TP=$(python3 -c "d=$end-$start; print(f'{50/d:.1f} jobs/s (50 jobs in {d:.2f} s)')")

# 3. Rebase every faas app: first build REBASE_APPS apps on runtime-faas:v1.
subs=()
for i in $(seq 1 "$REBASE_APPS"); do
  d=$W/r$i; cp -r fixtures/faas-hello "$d"
  echo "module.exports = async () => ({ app: $i });" >"$d/functions/app.js"
  $KILN submit "$d" --app "rb$i" >/dev/null 2>&1 & subs+=($!)
  if [ $((i % 20)) = 0 ]; then wait "${subs[@]}"; subs=(); fi
done
[ ${#subs[@]} = 0 ] || wait "${subs[@]}"
for i in $(seq 1 "$REBASE_APPS"); do wait_for "rb$i" 1; done
start=$(date +%s.%N)
$KILN rebase --runtime faas --to "$REG/kiln/runtime-faas:v2" --json 2>"$W/rebase.txt" >"$W/rebased.json"
end=$(date +%s.%N)
PER=$(python3 -c "
import json, statistics as s
r = json.load(open('$W/rebased.json'))
t = [x['timings_ms'] for x in r]
print('per job in the worker: median %d ms (pull+rewrite %d ms, push %d ms)' % (s.median(x['total'] for x in t), s.median(x['build'] for x in t), s.median(x['push'] for x in t)))")
[ -n "${KEEP:-}" ] && cp "$W/rebase.txt" "$W/rebased.json" /tmp/ 
APPS_ON=$(grep -o 'rebased [0-9]* of [0-9]* apps' "$W/rebase.txt")
RB=$(python3 -c "d=$end-$start; print(f'{d:.2f} s')")

printf '\n| measure | result |\n| --- | --- |\n'
printf '| submit-to-revision, code-only change, small faas app, 2 workers | %s |\n' "$LAT"
printf '| throughput, 50 jobs over 10 apps, 2 workers x 8 jobs | %s |\n' "$TP"
printf '| rebase --runtime faas onto a new runtime base (%s) | %s; %s |\n' "$APPS_ON" "$RB" "$PER"
