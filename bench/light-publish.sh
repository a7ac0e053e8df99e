#!/usr/bin/env bash
# sma-light publish-to-live-everywhere on loopback, in one run beside the image route for the
# same change. A nats-server and INSTANCES sma-light instances of fixtures/light-pages (the
# runtime's own server.js under node, each with its own bundle cache), then PUBLISHES
# sequential `kiln publish --wait --json`, each with a changed api/version.js:
#   - live:  from the pointer's change to the last instance's report that it serves the new
#            version (what `--wait` prints), p50 / p99 / max;
#   - wall:  the whole `kiln publish` command (pack, check on node, connect, upload, wait);
#   - image: the same code-only change as an image instead (`kiln build --runtime sma-light
#            --image`, warm, to a local docker-registry), before any rollout starts.
# Prints a markdown table.
#
# Usage: bench/light-publish.sh [PUBLISHES] [INSTANCES]   (default 50 and 3; needs
#        nats-server 2.10+ and docker-registry; builds target/release/kiln)
set -euo pipefail
cd "$(dirname "$0")/.."
PUBLISHES=${1:-50}
INSTANCES=${2:-3}
cargo build --release -q
KILN=$PWD/target/release/kiln
ROOT=$PWD
source bench/lib.sh
start_nats
start_registry
# Any kiln command makes the buckets the instances use.
for _ in $(seq 100); do "$KILN" light instances bench --nats "$NATS" >/dev/null 2>&1 && break; sleep 0.1; done

cp -r fixtures/light-pages "$W/app"
for i in $(seq "$INSTANCES"); do
  (cd "$W/app" && exec env KILN_NATS="$NATS" KILN_APP=bench KILN_INSTANCE="b$i" \
    KILN_LIGHT_CACHE="$W/cache$i" PORT="$(free_port)" node "$ROOT/runtimes/sma-light/server.js" \
    >"$W/i$i.log" 2>&1) & pids+=($!)
done
for _ in $(seq 200); do
  n=$("$KILN" light instances bench --json --nats "$NATS" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
  [ "$n" = "$INSTANCES" ] && break
  sleep 0.1
done
[ "$n" = "$INSTANCES" ] || { echo "only $n of $INSTANCES instances came up" >&2; exit 1; }

set_version() { echo "module.exports = async () => ({ version: '$1' });" >"$W/app/api/version.js"; }
now_ms() { date +%s%3N; }

: >"$W/live.txt"; : >"$W/wall.txt"
for i in $(seq "$PUBLISHES"); do
  set_version "p$i"
  t0=$(now_ms)
  "$KILN" publish "$W/app" --app bench --wait --json --nats "$NATS" 2>>"$W/publish.log" \
    | python3 -c "import json,sys; d=json.load(sys.stdin); assert len(d['live']['instances'])==$INSTANCES, d; print(d['live']['millis'])" >>"$W/live.txt"
  echo $(($(now_ms) - t0)) >>"$W/wall.txt"
done

# The image route for the same change: prime once, then code-only rebuilds and pushes.
image() {
  "$KILN" build "$W/app" --runtime sma-light --image "$REG/bench:$1" --insecure-registry "$REG" \
    --cache-dir "$W/kiln-cache" >/dev/null 2>>"$W/build.log"
}
set_version prime; image prime
: >"$W/image.txt"
for i in $(seq 10); do
  set_version "img$i"
  t0=$(now_ms); image "img$i"; echo $(($(now_ms) - t0)) >>"$W/image.txt"
done

python3 - "$W" "$PUBLISHES" "$INSTANCES" <<'EOF'
import sys
w, publishes, instances = sys.argv[1], sys.argv[2], sys.argv[3]
def load(name): return sorted(int(x) for x in open(f"{w}/{name}.txt").read().split())
def pct(xs, p): return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
rows = [
    (f"publish: live on all {instances} instances ({publishes} publishes)", load("live")),
    ("publish: whole `kiln publish --wait` command", load("wall")),
    ("image route: code-only `kiln build --image` (10 runs, before any rollout)", load("image")),
]
print("| measure | p50 ms | p99 ms | max ms |")
print("| --- | ---: | ---: | ---: |")
for name, xs in rows:
    print(f"| {name} | {pct(xs, 50)} | {pct(xs, 99)} | {xs[-1]} |")
EOF
