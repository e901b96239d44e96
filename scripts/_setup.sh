# Shared by scripts/test and scripts/demo: install the Debian packages and the virtualenv they need.
# Source it from the repository root; it leaves $VENV set and its bin first on PATH.

install_debian_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

install_virtualenv() {
    VENV="${TXACME_VENV:-.venv}"
    if [ ! -x "$VENV/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    # A real (non-editable) install, as users get from a wheel: it is what puts the le:/lets:/acme:
    # endpoint plugin into Twisted's plugin package, and the tests exercise that.
    # setuptools builds in ./build: a module moved or removed since the last install would otherwise
    # be installed again from there.
    rm -rf build
    "$VENV/bin/python" -m pip install -q ".[$1]"
    "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall .
    PATH="$PWD/$VENV/bin:$PATH"
    export PATH
}
