#!/usr/bin/env bash
# Cold build of an app with real dependencies vs `tar | gzip -6` and `tar | pigz -6` of the
# same folder, and a code-only rebuild; wall time (best of N) and peak RSS. Prints a table.
# With hyperfine on PATH it also times both code-only rebuilds finely (30 runs each).
# Usage: bench/run.sh [RUNS]   (needs: cargo build --release, pigz, GNU time; hyperfine)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
W=$(mktemp -d /tmp/kiln-bench.XXXXXX); trap 'rm -rf "$W"' EXIT
KILN=$PWD/target/release/kiln
APP=$W/express-app
cp -r bench/fixtures/express-app "$APP"; cp -a bench/npm-cache "$W/npm-cache"
(cd "$APP" && npm ci --omit=dev --ignore-scripts --offline --no-audit --no-fund --cache "$W/npm-cache" --loglevel=error >/dev/null)
SIZE=$(du -sb "$APP" | cut -f1); FILES=$(find "$APP" | wc -l)
"$KILN" base from-host --layout "$W/warm" --cache-dir "$W/base-cache" >/dev/null 2>&1  # host base built once, outside the timings

measure() { # name, command...: best wall ms and max RSS KiB over RUNS
  local name=$1; shift; local best=999999 rss=0
  for _ in $(seq "$RUNS"); do
    [ -n "${PREP:-}" ] && eval "$PREP"
    /usr/bin/time -f '%e %M' -o "$W/t" bash -c "$*" >/dev/null 2>&1
    read -r secs kb <"$W/t"; ms=$(python3 -c "print(int(float('$secs')*1000))")
    [ "$ms" -lt "$best" ] && best=$ms; [ "$kb" -gt "$rss" ] && rss=$kb
  done
  printf '| %-34s | %8s | %8s |\n' "$name" "$best" "$((rss/1024))"
}

echo "fixture: express-app with node_modules ($((SIZE/1024/1024)) MiB, $FILES files), best of $RUNS"
echo
printf '| %-34s | %8s | %8s |\n' "step" "wall ms" "RSS MiB"
printf '|%s|%s|%s|\n' "------------------------------------" "----------" "----------"
measure "tar, gzip -6" "tar -C $APP -cf - . | gzip -6 > $W/out.tgz"
measure "tar, pigz -6" "tar -C $APP -cf - . | pigz -6 > $W/out.tgz"
PREP="rm -rf $W/cold-cache $W/cold-out; cp -a $W/base-cache $W/cold-cache" \
  measure "kiln cold build (deps + app layers)" "$KILN build $APP --layout $W/cold-out --cache-dir $W/cold-cache"
"$KILN" build "$APP" --layout "$W/warm" --cache-dir "$W/base-cache" >/dev/null 2>&1
PREP="sed -i \"s/const VERSION = '[^']*'/const VERSION = 'v\$RANDOM'/\" $APP/server.js" \
  measure "kiln code-only rebuild, express-app" "$KILN build $APP --layout $W/warm --cache-dir $W/base-cache"
SMALL=$W/small-app; cp -r bench/fixtures/small-app "$SMALL"
"$KILN" build "$SMALL" --layout "$W/warm" --cache-dir "$W/base-cache" >/dev/null 2>&1
PREP="sed -i \"s/const VERSION = '[^']*'/const VERSION = 'v\$RANDOM'/\" $SMALL/server.js" \
  measure "kiln code-only rebuild, small-app" "$KILN build $SMALL --layout $W/warm --cache-dir $W/base-cache"

# Finer timings of the code-only rebuilds: hyperfine, a new VERSION before each run, so the
# app layer is rebuilt every time (express-app also walks its node_modules for the stat key).
if command -v hyperfine >/dev/null; then
  echo
  printf '| %-34s | %-26s |\n' "code-only rebuild (hyperfine, 30)" "mean ± sd (min-max) ms"
  printf '|%s|%s|\n' "------------------------------------" "----------------------------"
  for app in "$SMALL" "$APP"; do
    printf '#!/bin/sh\nsed -i "s/const VERSION = .*/const VERSION = '"'"'v$(date +%%N)'"'"';/" %s\n' "$app/server.js" >"$W/edit.sh"
    chmod +x "$W/edit.sh"
    hyperfine -N -w 3 -r 30 --export-json "$W/h.json" --prepare "$W/edit.sh" \
      "$KILN build $app --layout $W/warm --cache-dir $W/base-cache" >/dev/null 2>&1
    python3 - "$W/h.json" "$(basename "$app")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
ms = lambda s: s * 1000
print(f"| {sys.argv[2]:<34} | {ms(r['mean']):.1f} ± {ms(r['stddev']):.1f} ({ms(r['min']):.1f}-{ms(r['max']):.1f}) |")
PY
  done
fi
