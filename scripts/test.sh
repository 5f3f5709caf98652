#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian/Ubuntu machine with a Rust
# toolchain: installs redis-server where missing (the tests start their own
# instances on free ports and never touch 6379), lints the protos, checks
# formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi

if ! command -v redis-server >/dev/null; then
  echo "==> installing redis-server"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
echo "==> $(redis-server --version)"

if command -v npx >/dev/null; then
  echo "==> buf lint (proto style)"
  (cd proto && npx --yes @bufbuild/buf lint)
else
  echo "==> npx not found: install Node.js to lint the protos with buf" >&2
fi

echo "==> Helm chart: rendered with Helm's engine, validated against the Kubernetes schemas"
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
venv=.venv
requirements=(tests/chart/requirements.txt tests/browser/requirements.txt)
if [ ! -f "$venv/.installed" ] || ! cat "${requirements[@]}" | cmp -s - "$venv/.installed"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  for file in "${requirements[@]}"; do
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$file"
  done
  cat "${requirements[@]}" > "$venv/.installed"
fi
"$venv/bin/python" -m pytest -q tests/chart

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
# With the test kit, so the benchmark (which needs it) is linted too.
cargo clippy --locked --all-targets --features testkit -- -D warnings

echo "==> cargo test"
cargo test --locked

# The waiting page in headless Chromium, against the debug binaries. The bff
# example runs its own unit tests under `cargo test`, which then builds it only
# as a test harness, so the runnable example is built here.
cargo build --locked --bins --examples
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "==> installing chromium and chromium-driver"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "==> browser tests ($(chromium --version))"
"$venv/bin/python" -m pytest -q tests/browser
