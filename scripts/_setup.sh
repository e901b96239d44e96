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

# A digest of everything that goes into the installed package: the packaging files, src/ and the
# plugin (file names and contents, bytecode left out).
source_digest() {
    find pyproject.toml setup.py LICENSE README.rst src twisted -type f \
        ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*.egg-info/*' ! -name dropin.cache \
        -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

# install_virtualenv EXTRAS [--if-changed]
#   Install this tree with EXTRAS into $VENV. With --if-changed (the demo) nothing is installed,
#   and the network is not used, when $VENV/txacme-source.stamp says this very tree was installed
#   there with those extras; without it (scripts/test) the tree is always installed, so a stamp can
#   never make a test run use an old copy.
install_virtualenv() {
    local extras="$1" mode="${2:-}"
    VENV="${TXACME_VENV:-.venv}"
    local stamp="$VENV/txacme-source.stamp" digest wanted
    digest="$(source_digest)"
    wanted="$digest $extras"
    if [ "$mode" = "--if-changed" ] && [ -x "$VENV/bin/python" ] && [ -f "$stamp" ]; then
        local stamped_digest stamped_extras extra current=1
        read -r stamped_digest stamped_extras <"$stamp"
        [ "$stamped_digest" = "$digest" ] || current=0
        for extra in ${extras//,/ }; do
            case ",$stamped_extras," in *",$extra,"*) ;; *) current=0 ;; esac
        done
        if [ "$current" = 1 ]; then
            _venv_on_path
            return 0
        fi
    fi
    local quiet="-q"
    if [ "$mode" = "--if-changed" ]; then
        quiet=""
        echo "installing txacme[$extras] and its dependencies into $VENV (only when the tree changed)"
    fi
    rm -f "$stamp"
    if [ ! -x "$VENV/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$VENV"
    fi
    _interruptible "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    # A real (non-editable) install, as users get from a wheel: it is what puts the le:/lets:/acme:
    # endpoint plugin into Twisted's plugin package, and the tests exercise that.
    # setuptools builds in ./build: a module moved or removed since the last install would otherwise
    # be installed again from there.
    rm -rf build
    _interruptible "$VENV/bin/python" -m pip install $quiet --progress-bar on ".[$extras]"
    _interruptible "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall .
    # Written after a successful install only, from the digest taken before it started: a tree
    # edited during the install does not match and is installed again next time.
    echo "$wanted" >"$stamp"
    _venv_on_path
}

# Run a command so that Ctrl-C or SIGTERM to this script reaches it as SIGINT (pip then removes its
# temporary files) and the script waits for it to end before exiting: bash defers its traps while a
# foreground command runs, and a killed script would leave the command running.
_interruptible() {
    local child rc=0
    "$@" &
    child=$!
    trap 'kill -INT "$child" 2>/dev/null; wait "$child"; exit 130' INT TERM
    wait "$child" || rc=$?
    trap - INT TERM
    return "$rc"
}

_venv_on_path() {
    case "$VENV" in
        /*) PATH="$VENV/bin:$PATH" ;;
        *) PATH="$PWD/$VENV/bin:$PATH" ;;
    esac
    export PATH
}
