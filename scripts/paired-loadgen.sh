#!/usr/bin/env bash
# Paired throughput comparison of two kvkit builds: runs `loadgen` from a BASE and a
# HEAD build against the same servers, alternating which goes first each round, and
# prints the median ops/s of each and, per backend, operation and concurrency, the
# median and range of the per-round ratios HEAD/BASE (median below 0.97 is flagged).
# Needs python3.
#
#   scripts/paired-loadgen.sh BASE_LOADGEN HEAD_LOADGEN [ROUNDS] > report.txt
#
# BACKENDS="etcd zookeeper" limits the backends; RAW=FILE keeps every run's JSON line.
#
# Build each loadgen with
#   cargo build --release --all-features --example loadgen
# in a checkout of each commit. The servers come from this checkout's `test_servers`
# example (etcd and ZooKeeper from the system packages, the Consul emulator).
set -euo pipefail
base=$1
head=$2
rounds=${3:-3}
backends=${BACKENDS:-memory redb etcd zookeeper consul}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'exec 3>&- 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --all-features --example test_servers --manifest-path "$here/Cargo.toml" >&2
mkfifo "$work/stdin"
"$here/target/release/examples/test_servers" <"$work/stdin" >"$work/servers" &
exec 3>"$work/stdin"
for _ in $(seq 600); do grep -q '^ready' "$work/servers" && break; sleep 0.1; done
grep -q '^ready' "$work/servers" || { echo "servers did not start" >&2; exit 1; }
endpoint() { awk -v b="$1" '$1 == b { print $2 }' "$work/servers"; }

run() { # run VERSION BINARY BACKEND
  local args=(--backend "$3" --ops put,get,cas,list --concurrency 1,16)
  case $3 in
    memory) args+=(--n 200000) ;;
    redb) args+=(--n 2000 --endpoints "$work/$1-data.redb") ;;
    *) args+=(--n 4000 --endpoints "$(endpoint "$3")") ;;
  esac
  "$2" "${args[@]}" | sed "s/^{/{\"version\":\"$1\",/" >>"$work/results"
}

for round in $(seq "$rounds"); do
  for backend in $backends; do
    if (( round % 2 )); then order="base head"; else order="head base"; fi
    for version in $order; do
      if [[ $version == base ]]; then run base "$base" "$backend"; else run head "$head" "$backend"; fi
    done
    echo "round $round: $backend done" >&2
  done
done

if [[ -n ${RAW:-} ]]; then cp "$work/results" "$RAW"; fi
python3 - "$work/results" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs.setdefault((r["backend"], r["op"], r["concurrency"]), {}).setdefault(r["version"], []).append(r["ops_per_s"])
# Round i of BASE pairs with round i of HEAD: the median of those ratios, and their range.
print(f"{'backend':<10} {'op':<5} {'c':>3} {'base ops/s':>12} {'head ops/s':>12} {'paired head/base':>17} {'range':>11}")
for (backend, op, c), v in runs.items():
    base, head = v.get("base", []), v.get("head", [])
    ratios = [h / b for h, b in zip(head, base) if b]
    if not ratios:
        continue
    med = statistics.median(ratios)
    flag = "  < 0.97" if med < 0.97 else ""
    print(f"{backend:<10} {op:<5} {c:>3} {statistics.median(base):>12.0f} {statistics.median(head):>12.0f}"
          f" {med:>17.3f} {min(ratios):>5.2f}-{max(ratios):<5.2f}{flag}")
PY
