#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then runs it.
# Debian packages: brokers, a browser and its driver, an X server and a sound server.
# Extra arguments go to pytest, e.g. ./tests/run.sh -k bus -x
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mosquitto mosquitto-clients chromium chromium-driver xvfb xauth x11-utils xdotool zbar-tools openssl
          pulseaudio pulseaudio-utils pipewire-bin pipewire-pulse wireplumber dbus-daemon playerctl systemd)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
exec python3 -m pytest "$@"
