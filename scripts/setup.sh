#!/usr/bin/env bash
# Installs what building and testing NeuraBalancer needs on a Debian/Ubuntu machine that
# already has cargo and python3. Idempotent: installs only what is missing. With --peers it
# also installs nginx and HAProxy, the lab's peer proxies (the benchmark scripts ask for them).
set -euo pipefail

missing=()
if [ "${1:-}" = --peers ]; then
  command -v nginx >/dev/null 2>&1 || missing+=(nginx)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
fi
command -v cmake >/dev/null 2>&1 || missing+=(cmake)   # pingora-core builds zlib-ng with it
command -v curl >/dev/null 2>&1 || missing+=(curl)     # the demo polls the admin API
# The tests start throwaway PostgreSQL clusters with the server binaries (initdb, pg_ctl).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "setup: installing $*" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  # The package may create and start a "main" cluster on port 5432; the tests do not use it.
  if [[ " $* " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters --no-header 2>/dev/null | awk '$4 == "online" { print $1, $2 }' |
      while read -r version cluster; do $sudo pg_ctlcluster "$version" "$cluster" stop || true; done || true
  fi
}

if ((${#missing[@]})); then apt_install "${missing[@]}"; fi

# The training pipeline's virtualenv: its tests and scripts/train_model.sh run in it, and the
# model server loads libonnxruntime.so from its onnxruntime wheel. (Re)installed when it is
# missing or broken or requirements.txt changed: the file's hash is stamped inside the venv.
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/model-server/training/.venv"
req="$root/model-server/training/requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if ! "$venv/bin/python" -c '' 2>/dev/null || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the training virtualenv in $venv" >&2
  if ! "$venv/bin/python" -c '' 2>/dev/null; then
    rm -rf "$venv"
    # Debian's python3 makes virtualenvs only with python3-venv (ensurepip) installed.
    if ! python3 -m venv "$venv" 2>/dev/null; then
      rm -rf "$venv"
      apt_install python3-venv
      python3 -m venv "$venv"
    fi
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
fi
