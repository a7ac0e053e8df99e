#!/usr/bin/env bash
# The build step's overhead: the NestJS app of fixtures/real-apps built cold (empty kiln cache,
# npm's cache warm, so no network is timed) and after a code-only change, against the time
# of its build script alone (`nest build` on an installed copy, no sandbox). Target: a
# code-only rebuild costs the script's own time plus under 100 ms.
# Usage: bench/build-step.sh [RUNS] [REAL_APPS_DIR]   (needs target/real-apps or the dir given,
#        made by fixtures/real-apps/make.sh; hyperfine, bubblewrap; builds release)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
APPS=$(cd "${2:-target/real-apps}" && pwd)
cargo build --release -q
KILN=$PWD/target/release/kiln
source bench/lib.sh
export npm_config_cache=$W/npm-cache npm_config_offline=true
cp -a "$APPS/npm-cache" "$W/npm-cache"
APP=$W/nest; cp -a "$APPS/nest" "$APP"
"$KILN" base from-host --layout "$W/base" --cache-dir "$W/base-cache" >/dev/null 2>&1

# The script alone: a full install once, then `nest build` timed.
REF=$W/nest-ref; cp -a "$APPS/nest" "$REF"
(cd "$REF" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
printf '#!/bin/sh\nsed -i "s/Hello [^!]*!/Hello $(date +%%N)!/" %s\n' "$APP/src/app.service.ts" >"$W/edit.sh"
# Like kiln's fresh copy of the app: no dist/ and no tsc incremental state from the last run.
printf '#!/bin/sh\nsed -i "s/Hello [^!]*!/Hello $(date +%%N)!/" %s\nrm -rf %s/dist %s/*.tsbuildinfo\n' "$REF/src/app.service.ts" "$REF" "$REF" >"$W/edit-ref.sh"
chmod +x "$W/edit.sh" "$W/edit-ref.sh"
hyperfine -N -w 1 -r "$RUNS" --export-json "$W/script.json" --prepare "$W/edit-ref.sh" \
  "bash -c 'cd $REF && exec node_modules/.bin/nest build'" >/dev/null 2>&1

# kiln cold: an empty cache but the base (dev install, build, prod install, layers).
printf '#!/bin/sh\nrm -rf %s %s\ncp -a %s %s\n' "$W/cold" "$W/cold-out" "$W/base-cache" "$W/cold" >"$W/cold.sh"
chmod +x "$W/cold.sh"
hyperfine -N -w 0 -r "$RUNS" --export-json "$W/cold.json" --prepare "$W/cold.sh" \
  "$KILN build $APP --layout $W/cold-out --cache-dir $W/cold" >/dev/null 2>&1

# kiln code-only rebuild: deps and dev install cached, the script runs again.
"$KILN" build "$APP" --layout "$W/warm-out" --cache-dir "$W/base-cache" >/dev/null 2>&1
hyperfine -N -w 1 -r "$RUNS" --export-json "$W/warm.json" --prepare "$W/edit.sh" \
  "$KILN build $APP --layout $W/warm-out --cache-dir $W/base-cache" >/dev/null 2>&1

python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
r = {k: json.load(open(f"{w}/{k}.json"))["results"][0] for k in ("script", "cold", "warm")}
ms = lambda s: s * 1000
print("| measure | median | min-max |\n| --- | --- | --- |")
for k, name in (("script", "`nest build` alone (installed copy, no sandbox)"),
                ("cold", "kiln cold build (dev install, sandboxed build, prod install, layers)"),
                ("warm", "kiln code-only rebuild (sandboxed build, layers)")):
    t = r[k]
    print(f"| {name} | {ms(t['median']):.0f} ms | {ms(t['min']):.0f}-{ms(t['max']):.0f} ms |")
print(f"| kiln overhead on a code-only rebuild (medians) | {ms(r['warm']['median'] - r['script']['median']):.0f} ms | target < 100 ms |")
PY
