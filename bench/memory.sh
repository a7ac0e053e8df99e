#!/usr/bin/env bash
# Peak memory as layers grow: an app carrying 64 MiB, 256 MiB and 1 GiB of incompressible
# files, built cold into a layout, then pushed to a loopback docker-registry (the big layer
# is streamed from disk). Prints wall time and peak RSS per size; flat RSS is the target.
# For scale, `tar | pigz -6` and `tar | gzip -6` of the same app folder are timed too.
# Usage: bench/memory.sh [SIZES_MIB...]   (needs docker-registry, GNU time; builds release)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then SIZES=("$@"); else SIZES=(64 256 1024); fi
cargo build --release -q
KILN=$PWD/target/release/kiln
source bench/lib.sh
start_registry
"$KILN" base from-host --layout "$W/base-out" --cache-dir "$W/base-cache" >/dev/null 2>&1

timed() { # command...: prints "wall_s rss_mib"
  /usr/bin/time -f '%e %M' -o "$W/t" "$@" >/dev/null 2>"$W/err" || { cat "$W/err"; exit 1; }
  read -r secs kb <"$W/t"
  echo "$secs $((kb / 1024))"
}

printf '| %-10s | %-16s | %-14s | %-16s | %-14s | %-12s | %-12s |\n' "app files" "cold build wall" "cold build RSS" "push wall" "push RSS" "tar pigz -6" "tar gzip -6"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' "------------" "------------------" "----------------" "------------------" "----------------" "--------------" "--------------"
for mib in "${SIZES[@]}"; do
  APP=$W/app-$mib
  cp -r bench/fixtures/small-app "$APP"
  mkdir -p "$APP/assets"
  for i in $(seq 0 $((mib / 16 - 1))); do head -c $((16 << 20)) /dev/urandom >"$APP/assets/blob-$i.bin"; done
  rm -rf "$W/cache"; cp -a "$W/base-cache" "$W/cache"
  read -r bw brss < <(timed "$KILN" build "$APP" --layout "$W/out-$mib" --cache-dir "$W/cache")
  read -r pw prss < <(timed "$KILN" build "$APP" --image "$REG/mem/app-$mib:v1" \
    --insecure-registry "$REG" --cache-dir "$W/cache")
  read -r zw _ < <(timed bash -c "tar -C '$APP' -cf - . | pigz -6 >'$W/app.tgz'")
  read -r gw _ < <(timed bash -c "tar -C '$APP' -cf - . | gzip -6 >'$W/app.tgz'")
  rm -f "$W/app.tgz"
  printf '| %-10s | %-16s | %-14s | %-16s | %-14s | %-12s | %-12s |\n' "$mib MiB" "$bw s" "$brss MiB" "$pw s" "$prss MiB" "$zw s" "$gw s"
  rm -rf "$APP" "$W/out-$mib"
done
