#!/usr/bin/env bash
# The build step's overhead: the NestJS app of fixtures/real-apps built cold (empty kiln cache,
# npm's cache warm, so no network is timed) and after a code-only change, against the time
# of its build script alone (`nest build` on an installed copy, no sandbox). Target: a
# code-only rebuild costs the script's own time plus under 100 ms.
#
# Side by side, the same app built by buildah (`buildah build --layers`) from the Containerfile
# a user would write: COPY package*.json, RUN npm ci, COPY the rest, RUN npm run build && npm
# prune --omit=dev (npm with kiln's flags: --ignore-scripts --no-audit --no-fund). Its base is
# made here from the host's node, npm and /bin/sh (no registry is reachable); RUN steps get the
# same npm cache bind-mounted, offline, with no network. Cold: buildah's storage holds the base
# only (its layer cache empty, npm's warm), as kiln cold starts from a cache holding its base
# only. Code-only: primed once, then src/app.service.ts edited before each run, so the npm ci
# layer is reused and build + prune run again. Neither side pushes: kiln writes an OCI layout,
# buildah commits to its local storage (not compressed).
#
# Usage: [SKIP_KILN=1] bench/build-step.sh [RUNS] [REAL_APPS_DIR]
#   RUNS: timed runs per row (default 5). REAL_APPS_DIR: default target/real-apps, made by
#   fixtures/real-apps/make.sh (its nest/ and npm-cache/ are used).
#   SKIP_KILN=1: no `cargo build` and no kiln rows (the script alone and buildah only).
# Needs hyperfine, python3, bubblewrap (kiln rows; builds release); for the buildah rows root,
# buildah and runc (`apt-get install -y buildah runc`). buildah's RUN steps use OCI isolation
# with runc (crun cannot run containers on hybrid-cgroup hosts), else chroot isolation; the rows
# say which. When buildah cannot run, its rows say why instead of a time.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
APPS=$(cd "${2:-target/real-apps}" && pwd)
SKIP_KILN=${SKIP_KILN:-}
[ -n "$SKIP_KILN" ] || cargo build --release -q
KILN=$PWD/target/release/kiln
source bench/lib.sh
export npm_config_cache=$W/npm-cache npm_config_offline=true
cp -a "$APPS/npm-cache" "$W/npm-cache"
APP=$W/nest; cp -a "$APPS/nest" "$APP"

# Edits the app's message; for kiln's copy, buildah's copy ($W/nest-buildah) and the reference.
edit() { printf '#!/bin/sh\nsed -i "s/Hello [^!]*!/Hello $(date +%%N)!/" %s\n' "$1/src/app.service.ts"; }

# The script alone: a full install once, then `nest build` timed.
REF=$W/nest-ref; cp -a "$APPS/nest" "$REF"
(cd "$REF" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
edit "$APP" >"$W/edit.sh"
# Like kiln's fresh copy of the app: no dist/ and no tsc incremental state from the last run.
{ edit "$REF"; printf 'rm -rf %s/dist %s/*.tsbuildinfo\n' "$REF" "$REF"; } >"$W/edit-ref.sh"
chmod +x "$W/edit.sh" "$W/edit-ref.sh"
hyperfine -N -w 1 -r "$RUNS" --export-json "$W/script.json" --prepare "$W/edit-ref.sh" \
  "bash -c 'cd $REF && exec node_modules/.bin/nest build'" >/dev/null 2>&1

if [ -z "$SKIP_KILN" ]; then
  "$KILN" base from-host --layout "$W/base" --cache-dir "$W/base-cache" >/dev/null 2>&1

  # kiln cold: an empty cache but the base (dev install, build, prod install, layers).
  printf '#!/bin/sh\nrm -rf %s %s\ncp -a %s %s\n' "$W/cold" "$W/cold-out" "$W/base-cache" "$W/cold" >"$W/cold.sh"
  chmod +x "$W/cold.sh"
  hyperfine -N -w 0 -r "$RUNS" --export-json "$W/cold.json" --prepare "$W/cold.sh" \
    "$KILN build $APP --layout $W/cold-out --cache-dir $W/cold" >/dev/null 2>&1

  # kiln code-only rebuild: deps and dev install cached, the script runs again.
  "$KILN" build "$APP" --layout "$W/warm-out" --cache-dir "$W/base-cache" >/dev/null 2>&1
  hyperfine -N -w 1 -r "$RUNS" --export-json "$W/warm.json" --prepare "$W/edit.sh" \
    "$KILN build $APP --layout $W/warm-out --cache-dir $W/base-cache" >/dev/null 2>&1
fi

# ---- buildah ---------------------------------------------------------------------------------
# All its state under $W/buildah: root = the storage runs use, base-root = a copy holding the
# base image only (what a cold run starts from), runroot = transient state.
BR=$W/buildah
B=(buildah --root "$BR/root" --runroot "$BR/runroot" --storage-driver overlay)
BASE_IMG=localhost/kiln-bench-base:node
BAPP=$W/nest-buildah; cp -a "$APPS/nest" "$BAPP"
edit "$BAPP" >"$W/edit-buildah.sh"
chmod +x "$W/edit-buildah.sh"

# The base: host node + npm + /bin/sh + env (npm's and the .bin scripts' `#!/usr/bin/env node`)
# with their ldd closure, one layer, committed to $BR/root. A script of its own, so that set -e
# holds in it while its failure is caught here.
cat >"$W/buildah-base.sh" <<'EOF'
set -euo pipefail
img=$1 r=$2; shift 2; B=("$@")
mkdir -p "$r"/usr/{bin,lib/node_modules} "$r"/{etc,tmp,root}
ln -s usr/bin "$r/bin"; ln -s usr/lib "$r/lib"; ln -s usr/lib64 "$r/lib64"
chmod 1777 "$r/tmp"; chmod 700 "$r/root"
node=$(command -v node); sh=$(readlink -f /bin/sh); env=$(command -v env)
install -m 0755 "$(readlink -f "$node")" "$r/usr/bin/node"
install -m 0755 "$sh" "$r/usr/bin/${sh##*/}"
[ -e "$r/usr/bin/sh" ] || ln -s "${sh##*/}" "$r/usr/bin/sh"
install -m 0755 "$(readlink -f "$env")" "$r/usr/bin/env"
cp -a "$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")" "$r/usr/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$r/usr/bin/npm"
for b in "$node" "$sh" "$env"; do ldd "$b"; done |
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u |
  while read -r lib; do mkdir -p "$(dirname "$r/usr${lib#/usr}")"; cp -L "$lib" "$r/usr${lib#/usr}"; done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$r/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
env -i PATH=/usr/bin:/bin "$(command -v chroot)" "$r" npm --version
ctr=$("${B[@]}" from --quiet scratch)
"${B[@]}" copy --quiet "$ctr" "$r/" / >/dev/null
"${B[@]}" config --env PATH=/usr/local/bin:/usr/bin:/bin --env HOME=/root "$ctr"
"${B[@]}" commit --quiet --rm "$ctr" "$img"
EOF

cat >"$W/Containerfile" <<EOF
FROM $BASE_IMG
WORKDIR /app
# npm's cache is bind-mounted at /npm-cache for RUN steps (buildah build -v), used offline.
ARG npm_config_cache=/npm-cache
ARG npm_config_offline=true
ARG npm_config_update_notifier=false
COPY package*.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
COPY . .
RUN npm run build && npm prune --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error
CMD ["node", "dist/main"]
EOF

# Why buildah could not be measured: the first error line of LOG (or its last line).
why() { { grep -m1 -i 'error' "$1" || tail -n1 "$1"; } | cut -c1-300; }

# Sets ISO (the isolation flags that work) and writes $W/buildah-{cold,warm}.json, or writes
# the reason it could not to $W/buildah-fail.txt.
bench_buildah() {
  command -v buildah >/dev/null || { echo "buildah not installed (apt-get install -y buildah runc)"; return; }
  bash "$W/buildah-base.sh" "$BASE_IMG" "$W/buildah-rootfs" "${B[@]}" >"$W/buildah-base.log" 2>&1 ||
    { echo "making the base image failed: $(why "$W/buildah-base.log")"; return; }
  cp -a "$BR/root" "$BR/base-root"

  # RUN isolation: OCI with runc and no network, else chroot (which needs --network host).
  mkdir -p "$W/empty"
  printf 'FROM %s\nRUN npm --version\n' "$BASE_IMG" >"$W/probe.Containerfile"
  ISO=
  local iso tried=
  for iso in "--isolation oci --runtime runc --network none" "--isolation chroot --network host"; do
    # shellcheck disable=SC2086  # $iso: several flags
    if "${B[@]}" build --quiet --pull=never $iso -f "$W/probe.Containerfile" "$W/empty" \
      >"$W/buildah-probe.log" 2>&1; then ISO=$iso; break; fi
    tried+="${iso%% --network*}: $(why "$W/buildah-probe.log"); "
  done
  [ -n "$ISO" ] || { echo "no RUN isolation works: $tried"; return; }
  echo "$ISO" >"$W/buildah-iso.txt"

  local build="${B[*]} build --quiet --layers --pull=never $ISO -v $W/npm-cache:/npm-cache"
  build+=" -f $W/Containerfile -t localhost/nest-bench $BAPP"

  # Cold: storage back to the base alone before each run.
  printf '#!/bin/sh\nrm -rf %s %s\ncp -a %s %s\n' "$BR/root" "$BR/runroot" "$BR/base-root" "$BR/root" \
    >"$W/buildah-cold.sh"
  chmod +x "$W/buildah-cold.sh"
  if ! hyperfine -N -w 0 -r "$RUNS" --export-json "$W/buildah-cold.json" --prepare "$W/buildah-cold.sh" \
    "$build" >/dev/null 2>&1; then
    rm -f "$W/buildah-cold.json"; "$W/buildah-cold.sh"
    $build >"$W/buildah-build.log" 2>&1 || true
    echo "cold build failed: $(why "$W/buildah-build.log")"; return
  fi

  # Code-only: primed once (the last cold run's storage, built again to be sure), then timed
  # with the app edited before each run.
  $build >"$W/buildah-build.log" 2>&1 || { echo "priming failed: $(why "$W/buildah-build.log")"; return; }
  if ! hyperfine -N -w 1 -r "$RUNS" --export-json "$W/buildah-warm.json" --prepare "$W/edit-buildah.sh" \
    "$build" >/dev/null 2>&1; then
    rm -f "$W/buildah-warm.json"; "$W/edit-buildah.sh"
    $build >"$W/buildah-build.log" 2>&1 || true
    echo "code-only rebuild failed: $(why "$W/buildah-build.log")"
  fi
}
bench_buildah >"$W/buildah-fail.txt"

python3 - "$W" "$SKIP_KILN" <<'PY'
import json, os, sys
w, skip_kiln = sys.argv[1], sys.argv[2]
def load(k):
    p = f"{w}/{k}.json"
    return json.load(open(p))["results"][0] if os.path.exists(p) else None
r = {k: load(k) for k in ("script", "cold", "warm", "buildah-cold", "buildah-warm")}
fail = open(f"{w}/buildah-fail.txt").read().strip().replace("|", "/").replace("\n", " ")
iso = open(f"{w}/buildah-iso.txt").read().split()[1] if os.path.exists(f"{w}/buildah-iso.txt") else "?"
iso = "runc" if iso == "oci" else iso
ms = lambda s: s * 1000
print("| measure | median | min-max |\n| --- | --- | --- |")
rows = [("script", "`nest build` alone (installed copy, no sandbox)")]
if not skip_kiln:
    rows += [("cold", "kiln cold build (dev install, sandboxed build, prod install, layers; OCI layout)"),
             ("warm", "kiln code-only rebuild (sandboxed build, layers; OCI layout)")]
rows += [("buildah-cold", f"buildah cold build (`npm ci`, `npm run build && npm prune --omit=dev`, "
                          f"every step committed; local storage, {iso} isolation)"),
         ("buildah-warm", f"buildah code-only rebuild (`npm ci` layer reused; build + prune, "
                          f"commit; local storage, {iso} isolation)")]
for k, name in rows:
    t = r[k]
    if t:
        print(f"| {name} | {ms(t['median']):.0f} ms | {ms(t['min']):.0f}-{ms(t['max']):.0f} ms |")
    else:
        print(f"| {name} | not measured: {fail or 'unknown'} | |")
if r["warm"]:
    print(f"| kiln overhead on a code-only rebuild (medians) | {ms(r['warm']['median'] - r['script']['median']):.0f} ms | target < 100 ms |")
if r["buildah-warm"]:
    print(f"| buildah overhead on a code-only rebuild (medians) | {ms(r['buildah-warm']['median'] - r['script']['median']):.0f} ms | |")
for k, name in (("cold", "cold"), ("warm", "code-only")):
    if r[k] and r[f"buildah-{k}"]:
        print(f"| kiln / buildah, {name} (medians) | {r[k]['median'] / r[f'buildah-{k}']['median']:.2f}x | |")
PY
