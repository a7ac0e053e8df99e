#!/usr/bin/env bash
# Peak memory as layers grow: an app carrying 64 MiB, 256 MiB and 1 GiB of incompressible
# files, built cold into a layout, then pushed to a loopback docker-registry (the big layer
# is streamed from disk). Prints wall time and peak RSS per size; flat RSS is the target.
# Usage: bench/memory.sh [SIZES_MIB...]   (needs docker-registry, GNU time; builds release)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then SIZES=("$@"); else SIZES=(64 256 1024); fi
cargo build --release -q
KILN=$PWD/target/release/kiln
W=$(mktemp -d /tmp/kiln-memory.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
cat >"$W/registry.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $W/registry}}
http: {addr: $REG}
EOF
docker-registry serve "$W/registry.yml" >/dev/null 2>&1 &
RPID=$!
trap 'kill $RPID 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 100); do curl -sf "http://$REG/v2/" >/dev/null && break; sleep 0.1; done
"$KILN" base from-host --layout "$W/base-out" --cache-dir "$W/base-cache" >/dev/null 2>&1

timed() { # command...: prints "wall_s rss_mib"
  /usr/bin/time -f '%e %M' -o "$W/t" "$@" >/dev/null 2>"$W/err" || { cat "$W/err"; exit 1; }
  read -r secs kb <"$W/t"
  echo "$secs $((kb / 1024))"
}

printf '| %-10s | %-16s | %-14s | %-16s | %-14s |\n' "app files" "cold build wall" "cold build RSS" "push wall" "push RSS"
printf '|%s|%s|%s|%s|%s|\n' "------------" "------------------" "----------------" "------------------" "----------------"
for mib in "${SIZES[@]}"; do
  APP=$W/app-$mib
  cp -r bench/fixtures/small-app "$APP"
  mkdir -p "$APP/assets"
  for i in $(seq 0 $((mib / 16 - 1))); do head -c $((16 << 20)) /dev/urandom >"$APP/assets/blob-$i.bin"; done
  rm -rf "$W/cache"; cp -a "$W/base-cache" "$W/cache"
  read -r bw brss < <(timed "$KILN" build "$APP" --layout "$W/out-$mib" --cache-dir "$W/cache")
  read -r pw prss < <(timed "$KILN" build "$APP" --image "$REG/mem/app-$mib:v1" \
    --insecure-registry "$REG" --cache-dir "$W/cache")
  printf '| %-10s | %-16s | %-14s | %-16s | %-14s |\n' "$mib MiB" "$bw s" "$brss MiB" "$pw s" "$prss MiB"
  rm -rf "$APP" "$W/out-$mib"
done
