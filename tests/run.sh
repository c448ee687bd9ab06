#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then runs it.
# Debian packages: brokers, a browser and its driver, an X server and a sound server.
# Python packages: the `test` extra, into the interpreter named by $PYTHON (default python3).
# Extra arguments go to pytest, e.g. ./tests/run.sh -k bus -x
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mosquitto mosquitto-clients chromium chromium-driver xvfb xauth x11-utils xdotool zbar-tools openssl
          pulseaudio pulseaudio-utils pipewire-bin pipewire-pulse wireplumber dbus-daemon playerctl systemd)
missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$package")
done
if ((${#missing[@]})); then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi

python=${PYTHON:-python3}
"$python" -m pip install -q --disable-pip-version-check -e '.[test]' </dev/null
exec "$python" -m pytest "$@"
