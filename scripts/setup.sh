#!/usr/bin/env bash
# Installs what building and testing NeuraBalancer needs on a Debian/Ubuntu machine that
# already has cargo and python3. Idempotent: installs only what is missing.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)   # pingora-core builds zlib-ng with it
command -v curl >/dev/null 2>&1 || missing+=(curl)     # the demo polls the admin API
# The tests start throwaway PostgreSQL clusters with the server binaries (initdb, pg_ctl).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)

if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The package may create and start a "main" cluster on port 5432; the tests do not use it.
  if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters --no-header 2>/dev/null | awk '$4 == "online" { print $1, $2 }' |
      while read -r version cluster; do $sudo pg_ctlcluster "$version" "$cluster" stop || true; done || true
  fi
fi
