#!/usr/bin/env bash
# A monorepo service's image against the whole monorepo: for the npm and pnpm workspaces
# fixtures (fixtures/lockfiles), kiln builds packages/api and packages/web on their own, and
# the table compares each service's deps layer (its production closure only) with the whole
# monorepo's production node_modules (what `npm ci --omit=dev` / `pnpm install --prod` lay
# out at the root), unpacked and gzipped.
# Usage: bench/workspace-size.sh [LOCKFILES_DIR]   (default target/lockfiles, made by
#        fixtures/lockfiles/make.sh; builds release; offline on the fixtures' caches)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(cd "${1:-target/lockfiles}" && pwd)
cargo build --release -q
KILN=$PWD/target/release/kiln
source bench/lib.sh
for d in npm-cache pnpm-store npm-workspaces pnpm-workspaces; do cp -a "$SRC/$d" "$W/$d"; done
export npm_config_cache=$W/npm-cache npm_config_offline=true npm_config_store_dir=$W/pnpm-store

# The whole monorepo's production node_modules: bytes unpacked and gzipped (-6).
whole() { # DIR -> "unpacked gzipped"
  local dir=$1 files
  files=$(cd "$dir" && find . -path '*/node_modules/*' \( -type f -o -type l \) | LC_ALL=C sort)
  printf '%s %s\n' "$(cd "$dir" && du -sbc $(find . -maxdepth 3 -name node_modules -prune) | tail -1 | cut -f1)" \
    "$(cd "$dir" && tar -cf - --no-recursion $files 2>/dev/null | gzip -6 | wc -c)"
}

echo "| monorepo | image | deps layer (gzipped) | deps unpacked | whole monorepo node_modules unpacked | gzipped | service / whole (gzipped) |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for repo in npm-workspaces pnpm-workspaces; do
  for svc in api web; do
    out=$("$KILN" build "$W/$repo/packages/$svc" --layout "$W/out-$repo-$svc" --tag x --json \
      --cache-dir "$W/cache" 2>/dev/null | tail -1)
    deps=$(python3 -c 'import json,sys; b=json.loads(sys.argv[1])["built"]; print(next(l["descriptor"]["size"] for l in b["layers"] if l["kind"]=="deps"))' "$out")
    unpacked=$(mkdir -p "$W/u-$repo-$svc" && umoci unpack --rootless --image "$W/out-$repo-$svc:x" "$W/u-$repo-$svc/b" >/dev/null 2>&1 &&
      du -sbc $(find "$W/u-$repo-$svc/b/rootfs/app" -maxdepth 3 -name node_modules -prune) | tail -1 | cut -f1)
    rows+=("$repo $svc $deps $unpacked")
  done
  # The whole monorepo, installed for production at its root.
  cp -a "$W/$repo" "$W/whole-$repo"
  if [ "$repo" = npm-workspaces ]; then
    (cd "$W/whole-$repo" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
  else
    PNPM=$(ls "$W"/cache/tools/pnpm@*/package/bin/pnpm.cjs | head -1)
    (cd "$W/whole-$repo" && node "$PNPM" install --frozen-lockfile --prod --ignore-scripts --offline >/dev/null)
  fi
  read -r w_unpacked w_gz < <(whole "$W/whole-$repo")
  for row in "${rows[@]}"; do
    read -r r s deps unpacked <<<"$row"
    [ "$r" = "$repo" ] || continue
    python3 -c 'import sys; r,s,d,u,wu,wg=sys.argv[1:]; d,u,wu,wg=map(int,(d,u,wu,wg)); print(f"| {r} | {s} | {d/1e6:.2f} MB | {u/1e6:.2f} MB | {wu/1e6:.2f} MB | {wg/1e6:.2f} MB | {d/wg:.2f} |")' \
      "$r" "$s" "$deps" "$unpacked" "$w_unpacked" "$w_gz"
  done
done
