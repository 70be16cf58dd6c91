#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (real sockets on
# 127.0.0.1), and the training pipeline's Python tests. Tests run on the release profile:
# the same build the demo uses, and the proxy is measured as it ships.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --release
# The training pipeline (model-server/training), in the virtual environment setup.sh made.
model-server/training/.venv/bin/python -m pytest -q model-server/training/tests
