# Shared by the bench scripts: a scratch directory, servers on free loopback ports, cleanup.
# Source it after `cd` to the project root; sets W (scratch dir) and stops what it started.

W=$(mktemp -d /tmp/kiln-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts docker-registry on a free port with storage under $W; sets REG=127.0.0.1:PORT.
# With `start_registry log`, its access log (one line per request) goes to $W/registry.log.
start_registry() {
  REG=127.0.0.1:$(free_port)
  local quiet=true; [ "${1:-}" = log ] && quiet=false
  cat >"$W/registry.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: $quiet}}
storage: {filesystem: {rootdirectory: $W/registry}}
http: {addr: $REG}
EOF
  docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do curl -sf "http://$REG/v2/" >/dev/null && break; sleep 0.1; done
}

# Starts nats-server with JetStream on a free port with its store under $W; sets NATS.
start_nats() {
  local port; port=$(free_port)
  NATS=nats://127.0.0.1:$port
  nats-server -js -a 127.0.0.1 -p "$port" -sd "$W/nats" >/dev/null 2>&1 & pids+=($!)
}
