#!/usr/bin/env bash
# Installs the edge-agent daemon on a gateway (Raspberry Pi OS, JetPack, any Debian with
# systemd): a system user, a venv with the `edge` extra, the config, the unit, and starts it.
# Safe to run again: it upgrades the package, keeps an existing config (unless --force) and
# restarts the service. Run `systemd/install.sh --help` for the steps and options.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly UNIT=edge-agent.service
readonly SERVICE_USER=edge-agent
readonly PREFIX=/opt/edge-agent
# The unit's ExecStart= names this interpreter; keep the two in step.
readonly VENV="$PREFIX/venv"
readonly CONF_DIR=/etc/edge-agent
readonly CONF="$CONF_DIR/agent.toml"
# The gateway's own Ed25519 key: signs the model deltas it sends (fleet learning).
readonly DEVICE_KEY="$CONF_DIR/device.key"
readonly MIN_PYTHON="3.11"
# Serial drivers whose device groups the unit's DeviceAllow= names; loading them at boot puts
# ttyUSB/ttyACM into /proc/devices before the service starts, even with no adapter plugged in.
readonly SERIAL_MODULES=(usbserial cdc_acm)
# Files up to this many lines are shown in full when written (the unit and README are not).
readonly SHOW_LINES=12

usage() {
    cat <<EOF
Usage: $(basename "$0") [--config FILE] [--source PATH] [options]

Installs and starts the edge-agent service. Run as root on the gateway.

Steps:
  1. system user '$SERVICE_USER' (no login shell, home /var/lib/edge-agent, group dialout),
     from /etc/sysusers.d/edge-agent.conf with systemd-sysusers
  2. /etc/modules-load.d/edge-agent.conf: load ${SERIAL_MODULES[*]} at boot
  3. venv $VENV with: pip install --upgrade "SOURCE[edge]" (no numba, no LLVM), then the
     pipeline's kernels compiled ahead of time for this CPU: numba is installed into a
     throw-away directory, builds the module into the venv and is deleted (needs gcc, g++
     and python3-dev now: numba.pycc checks for a C++ compiler too; nothing at run time).
     --kernels FILE installs a prebuilt one instead.
  4. $CONF from --config (mode 0640, root:$SERVICE_USER);
     an existing one is kept unless --force; validated first when the agent has 'validate';
     $DEVICE_KEY (0640 root:$SERVICE_USER) and device.pub: this gateway's
     delta-signing key, created once and never replaced (register device.pub with the fleet)
  5. /etc/systemd/system/$UNIT, systemctl daemon-reload, enable, (re)start

Options:
  --config FILE   agent config to install as $CONF
                  (needed unless one is there already)
  --source PATH   the project directory or a built wheel to install
                  (default: the repository holding this script: $(dirname "$SCRIPT_DIR"))
  --python PY     Python >= $MIN_PYTHON used to create the venv (default: python3)
  --kernels FILE  a kernel module built by scripts/build-kernels on a machine of the same
                  architecture and Python, from the same sources (no compiler needed here)
  --force         replace an existing agent.toml that differs from --config
  --no-start      install and enable, but do not (re)start the service
  --root DIR      install into DIR instead of / (staging or tests): no daemon-reload,
                  no start, no modprobe; the venv works only at that path
  --dry-run       print what would be done and change nothing
  -h, --help      show this help

pip honours PIP_INDEX_URL, PIP_FIND_LINKS and PIP_NO_INDEX for offline or mirrored installs.
EOF
}

die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

step() { printf '==> %s\n' "$*"; }

# Print a command, then run it unless this is a dry run.
run() {
    printf '  +'
    printf ' %q' "$@"
    printf '\n'
    if [[ $DRY_RUN -eq 0 ]]; then
        "$@"
    fi
}

# write_file MODE DEST: write stdin to DEST (atomically, mode set before it appears).
write_file() {
    local mode=$1 dest=$2 content
    content="$(cat)"
    if [[ -f "$dest" ]] && [[ "$(cat "$dest")" == "$content" ]]; then
        printf '  = %s unchanged\n' "$dest"
        run chmod "$mode" "$dest"
        return
    fi
    local lines
    lines="$(printf '%s\n' "$content" | wc -l)"
    if [[ $lines -le $SHOW_LINES ]]; then
        printf '  > %s (mode %s):\n' "$dest" "$mode"
        printf '%s\n' "$content" | sed 's/^/      /'
    else
        printf '  > %s (mode %s, %d lines)\n' "$dest" "$mode" "$lines"
    fi
    if [[ $DRY_RUN -eq 0 ]]; then
        local tmp
        tmp="$(mktemp "$dest.XXXXXX")"
        printf '%s\n' "$content" >"$tmp"
        chmod "$mode" "$tmp"
        mv -f "$tmp" "$dest"
    fi
}

CONFIG_SRC=""
SOURCE="$(dirname "$SCRIPT_DIR")"
PYTHON=python3
KERNELS=""
FORCE=0
START=1
ROOT=""
DRY_RUN=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --config) CONFIG_SRC="${2:?--config needs a file}"; shift 2 ;;
        --config=*) CONFIG_SRC="${1#*=}"; shift ;;
        --source) SOURCE="${2:?--source needs a path}"; shift 2 ;;
        --source=*) SOURCE="${1#*=}"; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --python=*) PYTHON="${1#*=}"; shift ;;
        --kernels) KERNELS="${2:?--kernels needs a file}"; shift 2 ;;
        --kernels=*) KERNELS="${1#*=}"; shift ;;
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --root=*) ROOT="${1#*=}"; shift ;;
        --force) FORCE=1; shift ;;
        --no-start) START=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# ---- checks: everything that can fail for a reason the operator can fix, before any change
if [[ -n "$ROOT" ]]; then
    [[ -d "$ROOT" ]] || die "--root $ROOT is not a directory"
    ROOT="$(cd "$ROOT" && pwd)"
    START=0
fi
[[ $DRY_RUN -eq 1 || $EUID -eq 0 ]] || die "run as root (sudo $0 ...)"
command -v systemd-sysusers >/dev/null || die "systemd-sysusers not found: this needs systemd"
command -v systemctl >/dev/null || die "systemctl not found: this needs systemd"
for f in "$SCRIPT_DIR/$UNIT" "$SCRIPT_DIR/edge-agent.sysusers.conf"; do
    [[ -f "$f" ]] || die "$f is missing; run the script from its systemd/ directory"
done

if [[ -d "$SOURCE" ]]; then
    SOURCE="$(cd "$SOURCE" && pwd)"
    [[ -f "$SOURCE/pyproject.toml" ]] || die "--source $SOURCE has no pyproject.toml"
elif [[ -f "$SOURCE" && "$SOURCE" == *.whl ]]; then
    SOURCE="$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")"
else
    die "--source $SOURCE is neither a project directory nor a .whl file"
fi

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; give --python"
"$PYTHON" -c "import sys; sys.exit(sys.version_info < (${MIN_PYTHON/./, }))" \
    || die "$PYTHON is older than $MIN_PYTHON; give --python (e.g. python3.11)"
"$PYTHON" -c "import ensurepip, venv" 2>/dev/null \
    || die "$PYTHON cannot create venvs: apt-get install python3-venv"

if [[ -n "$KERNELS" ]]; then
    [[ -f "$KERNELS" ]] || die "--kernels $KERNELS does not exist"
    KERNELS="$(cd "$(dirname "$KERNELS")" && pwd)/$(basename "$KERNELS")"
fi

readonly R="$ROOT"
if [[ -n "$CONFIG_SRC" ]]; then
    [[ -f "$CONFIG_SRC" ]] || die "--config $CONFIG_SRC does not exist"
    if [[ -f "$R$CONF" ]] && ! cmp -s "$CONFIG_SRC" "$R$CONF" && [[ $FORCE -eq 0 ]]; then
        die "$R$CONF exists and differs from $CONFIG_SRC; keep it (omit --config) or use --force"
    fi
elif [[ ! -f "$R$CONF" && $START -eq 1 ]]; then
    die "no config: give --config FILE (or --no-start to install without one)"
fi

# ---- 1. user
step "system user $SERVICE_USER"
run install -d -m 0755 "$R/etc/sysusers.d"
write_file 0644 "$R/etc/sysusers.d/edge-agent.conf" <"$SCRIPT_DIR/edge-agent.sysusers.conf"
# A bare name is looked up in the sysusers.d directories (under --root when given).
run systemd-sysusers ${R:+"--root=$R"} edge-agent.conf

# ---- 2. serial drivers at boot
step "serial drivers loaded at boot"
modules=()
for m in "${SERIAL_MODULES[@]}"; do
    # Only modules this kernel has (built-in counts): a missing one would fail the boot unit.
    if [[ -n "$R" ]] || ! command -v modprobe >/dev/null || modprobe -n -q "$m" 2>/dev/null; then
        modules+=("$m")
    fi
done
if [[ ${#modules[@]} -gt 0 ]]; then
    run install -d -m 0755 "$R/etc/modules-load.d"
    printf '# Serial drivers for edge-agent (the unit allows their device groups).\n%s\n' \
        "$(printf '%s\n' "${modules[@]}")" | write_file 0644 "$R/etc/modules-load.d/edge-agent.conf"
    if [[ -z "$R" ]] && command -v modprobe >/dev/null; then
        run modprobe -a -q "${modules[@]}" || printf '  (modprobe failed; they load at boot)\n'
    fi
fi

# ---- 3. venv
step "venv $R$VENV"
run install -d -m 0755 "$R$PREFIX"
if [[ -x "$R$VENV/bin/python" ]] && "$R$VENV/bin/python" -c "" 2>/dev/null; then
    printf '  = venv exists\n'
else
    # --clear: a venv whose base Python went away (distribution upgrade) is rebuilt.
    run "$PYTHON" -m venv --clear "$R$VENV"
fi
run "$R$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade "${SOURCE}[edge]"
# The kernels, compiled ahead of time (edge_agent.kernels.install): kept when they match the
# installed sources, else built here, or copied from --kernels. The agent then starts without
# compiling anything and without numba.
if [[ -n "$KERNELS" ]]; then
    run "$R$VENV/bin/python" -m edge_agent.kernels.install --module "$KERNELS" \
        || die "the kernel module $KERNELS cannot be used here (see above)"
else
    run "$R$VENV/bin/python" -m edge_agent.kernels.install --build \
        || die "could not build the kernels (see above; the build needs gcc, g++ and python3-dev: apt-get install gcc g++ python3-dev); or give --kernels FILE"
fi
if [[ -f "$SCRIPT_DIR/README.md" ]]; then
    write_file 0644 "$R$PREFIX/README.md" <"$SCRIPT_DIR/README.md"
fi

# ---- 4. config
step "config $R$CONF"
run install -d -m 0755 "$R$CONF_DIR"
VALIDATE="${CONFIG_SRC:-$R$CONF}"
if [[ ! -f "$VALIDATE" ]]; then
    printf '  ! no config yet: write %s, then: systemctl start %s\n' "$CONF" "$UNIT"
elif [[ $DRY_RUN -eq 1 && ! -x "$R$VENV/bin/python" ]]; then
    printf '  (would validate %s with the new venv)\n' "$VALIDATE"
elif [[ "$("$R$VENV/bin/python" -m edge_agent --help 2>/dev/null || true)" == *validate* ]]; then
    # Older agents have no 'validate'; their config is checked when the service starts.
    run "$R$VENV/bin/python" -m edge_agent validate --config "$VALIDATE" \
        || die "$VALIDATE is not valid (see above); nothing was started"
fi
if [[ -n "$R" ]]; then
    # Under --root the group exists only in DIR's /etc/group, so go by its number.
    gid="$(awk -F: -v g="$SERVICE_USER" '$1 == g { print $3 }' "$R/etc/group" 2>/dev/null || true)"
    group="${gid:-$SERVICE_USER}"
    owner=0
else
    group="$SERVICE_USER"
    owner=root
fi
if [[ -n "$CONFIG_SRC" ]] && ! cmp -s "$CONFIG_SRC" "$R$CONF" 2>/dev/null; then
    # Mode and owner are set on the temporary file, so the secret never sits world-readable.
    run install -m 0640 -o "$owner" -g "$group" "$CONFIG_SRC" "$R$CONF.new"
    run mv -f "$R$CONF.new" "$R$CONF"
elif [[ -f "$R$CONF" ]]; then
    printf '  = %s kept\n' "$R$CONF"
    run chown "$owner:$group" "$R$CONF"
    run chmod 0640 "$R$CONF"
fi

if [[ -f "$R$DEVICE_KEY" ]]; then
    printf '  = %s kept\n' "$R$DEVICE_KEY"
    run chown "$owner:$group" "$R$DEVICE_KEY"
    run chmod 0640 "$R$DEVICE_KEY"
else
    # Created 0640 with the group set before the secret is written (never readable by others).
    run "$R$VENV/bin/python" -m edge_agent.learn.device_key --out "$R$CONF_DIR" --group "$group" \
        || die "could not create the device key $R$DEVICE_KEY (see above)"
fi

# ---- 5. unit
step "unit $UNIT"
run install -d -m 0755 "$R/etc/systemd/system"
write_file 0644 "$R/etc/systemd/system/$UNIT" <"$SCRIPT_DIR/$UNIT"
if [[ -n "$R" ]]; then
    run systemctl "--root=$R" enable "$UNIT"
else
    run systemctl daemon-reload
    run systemctl enable "$UNIT"
fi
if [[ $START -eq 1 ]]; then
    # restart, not start: a re-run must pick up the new package. Type=notify makes this wait
    # until the agent is ready (or TimeoutStartSec= runs out).
    if ! run systemctl restart "$UNIT"; then
        systemctl --no-pager status "$UNIT" || true
        die "$UNIT did not start; see: journalctl -u edge-agent -n 100"
    fi
elif [[ -z "$R" ]]; then
    printf '  (not started; a running agent keeps its old code until: systemctl restart %s)\n' \
        "$UNIT"
fi

cat <<EOF

Done$([[ $DRY_RUN -eq 1 ]] && printf ' (dry run: nothing was changed)').
  watch the log:     journalctl -u edge-agent -f
  state:             systemctl status edge-agent
  recent events:     sudo -u $SERVICE_USER $VENV/bin/python -m edge_agent events --config $CONF
  after editing $CONF:  systemctl reload edge-agent   (SIGHUP; an invalid file is rejected)
  fleet learning:    register ${DEVICE_KEY%.key}.pub with the fleet as <machine_id>.pub
EOF
