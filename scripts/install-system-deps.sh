#!/usr/bin/env bash
# Debian packages the test suite needs and pip cannot provide: a PostgreSQL 15 server for the
# production-profile tests, Chromium + chromedriver for the browser tests, git for DVC.
# Idempotent and fast when everything is present: apt is touched only for what is missing.
set -euo pipefail

PACKAGES=(postgresql-15 chromium chromium-driver git)

# `dpkg -s` exits 0 for a removed package whose config files remain, so read its Status field.
installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-system-deps: all present (${PACKAGES[*]})"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo -n)
else
  echo "install-system-deps: missing ${missing[*]}; run this script as root (no sudo found)" >&2
  exit 1
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# The postgresql package's maintainer scripts create and start a default cluster; the tests run
# their own throwaway cluster instead, so the default one is not needed (and is harmless).
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  "${missing[@]}"
echo "install-system-deps: done"
