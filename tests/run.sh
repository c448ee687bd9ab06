#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then runs it.
# Debian packages: brokers (Mosquitto, and NATS for a cluster), a browser and its driver, an X server and a sound server.
# Python packages: the `test` extra, into the interpreter named by $PYTHON (default python3), or,
# when that interpreter refuses pip (PEP 668's externally managed Python of Debian and Ubuntu, or
# no pip at all), into a virtual environment of its own in .venv/.
# Tests run two at a time (pytest-xdist; every test starts its own brokers, ports and namespaces);
# extra arguments go to pytest, e.g. ./tests/run.sh -k bus -x, or -n 0 to run one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mosquitto mosquitto-clients nats-server chromium chromium-driver xvfb xauth x11-utils xdotool zbar-tools openssl
          pulseaudio pulseaudio-utils pipewire-bin pipewire-pulse wireplumber dbus-daemon playerctl systemd
          python3-venv)
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
refuses_pip() {
    "$1" - <<'EOF'
import importlib.util, os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
in_venv = sys.prefix != sys.base_prefix
sys.exit(0 if (managed and not in_venv) or importlib.util.find_spec("pip") is None else 1)
EOF
}
if refuses_pip "$python"; then
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    echo "tests/run.sh: $python refuses pip; using the virtual environment .venv/" >&2
    python=.venv/bin/python
fi
"$python" -m pip install -q --disable-pip-version-check -e '.[test]' </dev/null
exec "$python" -m pytest -n 2 "$@"
