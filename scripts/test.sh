#!/usr/bin/env bash
# Runs every kvkit check: formatting, clippy, and the whole test suite with all
# features, against real etcd and ZooKeeper servers that the tests start themselves.
#
# Installs what is missing (Debian packages) when it can. A missing server is a test
# failure here (KVKIT_REQUIRE_SERVERS=1), never a silent skip.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

# Debian packages the suite needs, by the command that proves each is there.
declare -A NEED=(
  [protoc]=protobuf-compiler            # etcd-client's build script
  [/usr/include/google/protobuf/descriptor.proto]=libprotobuf-dev  # well-known types etcd-client's protos import
  [etcd]=etcd-server                    # the etcd tests' servers
  [/usr/share/zookeeper/bin/zkServer.sh]=zookeeper  # the ZooKeeper tests' servers
  [java]=default-jre-headless           # ZooKeeper's JVM
)
missing=()
for probe in "${!NEED[@]}"; do
  if [[ "$probe" == /* ]]; then [[ -e "$probe" ]] || missing+=("${NEED[$probe]}")
  else command -v "$probe" >/dev/null 2>&1 || missing+=("${NEED[$probe]}"); fi
done
if ((${#missing[@]})); then
  log "installing missing packages: ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      log "not root and no sudo: cannot install ${missing[*]}; the server tests will fail"; fi
  fi
  if [[ $(id -u) -eq 0 || -n "$SUDO" ]]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

# The suite starts its own servers on free loopback ports; no system service is used.
export KVKIT_REQUIRE_SERVERS=1
export RUST_BACKTRACE=1

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (all features, all targets, -D warnings)"
cargo clippy --all-features --all-targets -- -D warnings

log "cargo test (all features)"
mkdir -p target
set +e
cargo test --all-features --no-fail-fast 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}
set -e
if grep -q "NOTICE: skipping" target/test-output.txt; then
  log "a server test was skipped: that is a failure under scripts/test.sh"
  exit 1
fi
exit "$status"
