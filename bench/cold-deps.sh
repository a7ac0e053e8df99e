#!/usr/bin/env bash
# Cold build of bench/fixtures/big-deps from its package-lock.json alone, side by side in one
# run with the package managers that would lay out the same tree, each followed by
# `tar | pigz -6` (what an image needs), and the floor: `tar | pigz -6` of the installed tree.
# Every package cache is warm (filled once from the npm registry before the timings), so no
# network is timed. Wall time best of N and peak RSS of the whole pipeline. Prints a table.
# Usage: bench/cold-deps.sh [RUNS]   (needs: npm registry once, pigz, GNU time; builds release)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
cargo build --release -q
KILN=$PWD/target/release/kiln
source bench/lib.sh
APP=$W/big-deps; cp -r bench/fixtures/big-deps "$APP"
# Each peer in its own copy: pnpm and bun add their own lockfiles.
for peer in npm pnpm bun; do cp -r bench/fixtures/big-deps "$W/$peer"; done
export npm_config_cache=$W/npm-cache npm_config_audit=false npm_config_fund=false \
  npm_config_update_notifier=false
# Warm caches: npm's; pnpm's store and bun's cache, each from its own first install.
(cd "$W/npm" && npm ci --ignore-scripts --loglevel=error >/dev/null)
npm install --prefix "$W/tools" --no-save --loglevel=error pnpm@9.15.9 bun@1.4.5 >/dev/null
PNPM="node $W/tools/node_modules/pnpm/bin/pnpm.cjs"
BUN=$W/tools/node_modules/.bin/bun
export BUN_INSTALL_CACHE_DIR=$W/bun-cache
(cd "$W/pnpm" && $PNPM import >/dev/null 2>&1 && rm package-lock.json \
  && $PNPM install --frozen-lockfile --prod --ignore-scripts --store-dir "$W/pnpm-store" >/dev/null 2>&1)
(cd "$W/bun" && $BUN install --production --ignore-scripts >/dev/null 2>&1)
(cd "$W/npm" && rm -rf node_modules && npm ci --omit=dev --ignore-scripts --loglevel=error >/dev/null)
SIZE=$(du -sb "$W/npm/node_modules" | cut -f1); FILES=$(find "$W/npm/node_modules" | wc -l)
mv "$W/npm/node_modules" "$W/tree"
"$KILN" base from-host --layout "$W/base" --cache-dir "$W/base-cache" >/dev/null 2>&1

measure() { # name, command...: best wall ms and max RSS KiB over RUNS
  local name=$1; shift; local best=999999 rss=0
  for _ in $(seq "$RUNS"); do
    [ -n "${PREP:-}" ] && eval "$PREP"
    /usr/bin/time -f '%e %M' -o "$W/t" bash -c "$*" >"$W/log" 2>&1 || { echo "failed: $name" >&2; tail -5 "$W/log" >&2; exit 1; }
    read -r secs kb <"$W/t"; ms=$(python3 -c "print(int(float('$secs')*1000))")
    [ "$ms" -lt "$best" ] && best=$ms; [ "$kb" -gt "$rss" ] && rss=$kb
  done
  printf '| %-44s | %8s | %8s |\n' "$name" "$best" "$((rss/1024))"
}

echo "fixture: big-deps from package-lock.json, $(($(grep -c '"node_modules/' "$APP/package-lock.json"))) lockfile entries;" \
  "tree $((SIZE/1024/1024)) MiB, $FILES files; warm caches; best of $RUNS"
echo
printf '| %-44s | %8s | %8s |\n' "step" "wall ms" "RSS MiB"
printf '|%s|%s|%s|\n' "----------------------------------------------" "----------" "----------"
PREP="rm -rf $W/kc $W/ko; cp -a $W/base-cache $W/kc" \
  measure "kiln cold build (deps + app layers)" "$KILN build $APP --no-build --layout $W/ko --cache-dir $W/kc"
PREP="rm -rf $W/kc $W/ko; cp -a $W/base-cache $W/kc" \
  measure "kiln cold build, KILN_NPM_CI=1 (npm ci)" "KILN_NPM_CI=1 $KILN build $APP --no-build --layout $W/ko --cache-dir $W/kc"
PREP="rm -rf $W/npm/node_modules" \
  measure "npm ci --omit=dev, then tar | pigz -6" "cd $W/npm && npm ci --omit=dev --ignore-scripts --prefer-offline --loglevel=error && tar -cf - node_modules | pigz -6 > $W/o.tgz"
PREP="rm -rf $W/pnpm/node_modules" \
  measure "pnpm install --offline, then tar | pigz -6" "cd $W/pnpm && $PNPM install --offline --frozen-lockfile --prod --ignore-scripts --store-dir $W/pnpm-store && tar -chf - node_modules | pigz -6 > $W/o.tgz"
PREP="rm -rf $W/bun/node_modules" \
  measure "bun install, then tar | pigz -6" "cd $W/bun && $BUN install --production --ignore-scripts && tar -cf - node_modules | pigz -6 > $W/o.tgz"
PREP="" measure "tar | pigz -6 of the installed tree (floor)" "tar -C $W -cf - tree | pigz -6 > $W/o.tgz"
