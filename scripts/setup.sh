#!/usr/bin/env bash
# Installs what building and testing NeuraBalancer needs on a Debian/Ubuntu machine that
# already has cargo and python3. Idempotent: installs only what is missing.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)   # pingora-core builds zlib-ng with it
command -v curl >/dev/null 2>&1 || missing+=(curl)     # the demo polls the admin API

if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
