#!/usr/bin/env bash
# Where a warm push's time goes: a code-only rebuild of bench/fixtures/small-app pushed to a
# loopback docker-registry (its base pushed there first), timed by hyperfine with the CPU kiln
# itself spends (user + system) and the registry requests one push makes, by method.
# Usage: bench/warm-push.sh [RUNS]   (needs docker-registry, hyperfine; builds release)
#        KILN=/path/to/kiln bench/warm-push.sh [RUNS]   (that binary instead, nothing built:
#        run it with an older build, then this one, to compare before and after)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-30}
if [ -z "${KILN:-}" ]; then
  cargo build --release -q
  KILN=$PWD/target/release/kiln
fi
source bench/lib.sh
start_registry log
export KILN_CACHE_DIR=$W/cache KILN_INSECURE_REGISTRIES=$REG
"$KILN" base from-host --to "$REG/base/node:v1" >/dev/null 2>&1
APP=$W/small-app; cp -r bench/fixtures/small-app "$APP"
push() { "$KILN" build "$APP" --base "$REG/base/node:v1" --image "$REG/bench/small:warm" "$@"; }
push >/dev/null 2>&1
printf '#!/bin/sh\nsed -i "s/const VERSION = .*/const VERSION = '"'"'v$(date +%%N)'"'"';/" %s\n' "$APP/server.js" >"$W/edit.sh"
chmod +x "$W/edit.sh"

# Requests of one warm push, counted from the access log.
"$W/edit.sh"; before=$(wc -l <"$W/registry.log")
push >/dev/null 2>&1
REQS=$(tail -n +"$((before + 1))" "$W/registry.log" | grep -oE '"(GET|HEAD|POST|PUT|PATCH|DELETE) ' | tr -d '" ' | sort | uniq -c | awk '{printf "%s%s %s", sep, $2, $1; sep=", "}')
TOTAL=$(tail -n +"$((before + 1))" "$W/registry.log" | grep -cE '"(GET|HEAD|POST|PUT|PATCH|DELETE) ')

hyperfine -N -w 3 -r "$RUNS" --export-json "$W/h.json" --prepare "$W/edit.sh" \
  "$KILN build $APP --base $REG/base/node:v1 --image $REG/bench/small:warm" >/dev/null 2>&1
python3 - "$W/h.json" "$TOTAL" "$REQS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
ms = lambda s: s * 1000
print("| measure | result |\n| --- | --- |")
print(f"| warm push wall, {len(r['times'])} runs | {ms(r['mean']):.1f} ms ± {ms(r['stddev']):.1f} (median {ms(r['median']):.1f}) |")
print(f"| kiln CPU per push (user + system) | {ms(r['user'] + r['system']):.1f} ms ({ms(r['user']):.1f} + {ms(r['system']):.1f}) |")
print(f"| registry requests per push | {sys.argv[2]} ({sys.argv[3]}) |")
PY
