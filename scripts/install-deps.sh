#!/bin/bash
# Installs everything the demo and the test suite need on a fresh Debian 12 machine.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(gcc g++ make golang binutils patch cmake autoconf automake file xz-utils cpio busybox-static qemu-system-x86
      bc bison flex libelf-dev libssl-dev dwarves kmod rsync chromium python3-venv libgflags-dev lintian systemd pipx
      dpkg-dev libjemalloc-dev strace)
# Source packages (`apt-get source redis`, the LTO test of a real project): bookworm's deb-src entries.
SRC_LIST=/etc/apt/sources.list.d/patch-build-deb-src.sources
new_sources=0
if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "install-deps: adding bookworm deb-src entries ($SRC_LIST)"
    cat > "$SRC_LIST" <<'SOURCES'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    new_sources=1
fi
missing=()
for p in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})) || ((new_sources)); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
fi
if ((${#missing[@]})); then
    echo "install-deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A virtual environment of the checkout's own: Debian's Python refuses `pip install` into the system.
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "install-deps: python3 -m venv $VENV"
    python3 -m venv "$VENV"
fi
PY=$VENV/bin/python
# Reinstall when the dependencies changed (pyproject.toml) or the console scripts run another checkout's code.
stamp="$VENV/.patch-build-installed"
want="$(pwd -P) $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$VENV/bin/patch-diff" ]; then
    $PY -m pip install -q -e '.[test]'
    echo "$want" > "$stamp"
fi
