#!/usr/bin/env bash
# Set up everything pht-airflow needs on this machine, idempotently.
#
# Each step checks first and is skipped when already satisfied; each failure is one line that
# says what to do. Steps:
#   1. system packages (Debian, as root): docker.io, docker-registry, age, busybox-static,
#      debootstrap, curl, openssl, postgresql (its server binaries; no service is started),
#      skopeo (the air-gapped bundle tests read exported OCI archives with it), chromium (the
#      browser tests drive Debian's chromium with Playwright; no browser is downloaded)
#   2. a running Docker engine (dockerd --bridge=none --iptables=false, log under .pht/)
#   3. the venv at .venv with the package in editable mode and all extras, from constraints.txt
#   4. local base images for trains: pht-local/busybox and pht-local/python:3.11 (never pulled)
#
# Usage: scripts/bootstrap.sh [--no-images] [--no-venv]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
state="$here/.pht"
mkdir -p "$state"

want_images=1
want_venv=1
for arg in "$@"; do
  case "$arg" in
    --no-images) want_images=0 ;;
    --no-venv) want_venv=0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "bootstrap: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[bootstrap] error:\033[0m %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }
is_debian() { [ -r /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; }

# ---- 1. system packages ------------------------------------------------------------------
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || need_pkgs+=(docker-registry)
command -v age >/dev/null 2>&1 || need_pkgs+=(age)
dpkg -s busybox-static >/dev/null 2>&1 || need_pkgs+=(busybox-static)
[ -x /usr/bin/time ] || need_pkgs+=(time)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v skopeo >/dev/null 2>&1 || need_pkgs+=(skopeo)
# The real-browser tests (tests/test_browser_*.py) use Playwright with this executable.
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
# PostgreSQL: the central service's production database; the router tests run on it too.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_pkgs+=(postgresql)
# stress-ng loads the machine while the suite runs (issue 14: the suite must not flake).
command -v stress-ng >/dev/null 2>&1 || need_pkgs+=(stress-ng)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if is_root && is_debian; then
    say "installing ${need_pkgs[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$state/apt.log" 2>&1 || die "apt-get update failed; see $state/apt.log"
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >>"$state/apt.log" 2>&1 \
      || die "apt-get install ${need_pkgs[*]} failed; see $state/apt.log"
  else
    die "missing ${need_pkgs[*]}: install them (Debian: sudo apt-get install ${need_pkgs[*]}) and rerun"
  fi
else
  say "system packages present"
fi

# Debian's docker-registry and postgresql packages ship services (the registry on :5000 on every
# interface). We never use them (tests start their own on 127.0.0.1); make sure they are not
# running where systemd exists.
if command -v systemctl >/dev/null 2>&1; then
  for svc in docker-registry postgresql; do
    if systemctl is-active --quiet "$svc" 2>/dev/null; then
      say "stopping the system $svc service (tests start their own on 127.0.0.1)"
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
fi

# ---- 2. Docker engine --------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
  say "Docker engine running"
else
  if is_root && command -v dockerd >/dev/null 2>&1; then
    say "starting dockerd --bridge=none --iptables=false (log: .pht/dockerd.log)"
    # Trains run with no network at all, so the engine needs no bridge and no iptables rules.
    nohup dockerd --bridge=none --iptables=false >"$state/dockerd.log" 2>&1 &
    echo $! >"$state/dockerd.pid"
    for _ in $(seq 1 60); do
      docker info >/dev/null 2>&1 && break
      sleep 0.5
    done
    docker info >/dev/null 2>&1 || die "dockerd did not come up in 30 s; see $state/dockerd.log"
  else
    die "no Docker engine reachable: start one (e.g. 'sudo systemctl start docker') or run this as root"
  fi
fi

# ---- 3. venv -----------------------------------------------------------------------------
if [ "$want_venv" -eq 1 ]; then
  py=${PYTHON:-python3}
  "$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
    || die "$py is not Python 3.11 (constraints.txt is resolved for 3.11); set PYTHON=python3.11"
  stamp="$state/venv.stamp"
  sig=$(cat constraints.txt setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sig" ]; then
    say "venv .venv up to date"
  else
    say "installing the package with all extras into .venv (constraints.txt; takes about a minute)"
    [ -x .venv/bin/python ] || "$py" -m venv .venv || die "could not create .venv (Debian: apt-get install python3-venv)"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >"$state/pip.log" 2>&1 \
      || die "pip self-upgrade failed; see $state/pip.log"
    .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
      -e ".[station,central,dev,test]" >>"$state/pip.log" 2>&1 \
      || die "pip install failed; see $state/pip.log"
    echo "$sig" >"$stamp"
  fi
fi

# ---- 4. base images for trains -----------------------------------------------------------
if [ "$want_images" -eq 1 ]; then
  # pht-local/busybox: the static busybox binary on an empty root, with the applet links.
  if docker image inspect pht-local/busybox:latest >/dev/null 2>&1; then
    say "image pht-local/busybox present"
  else
    say "building pht-local/busybox from busybox-static"
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' EXIT
    mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/tmp" "$ctx/rootfs/etc"
    cp /bin/busybox "$ctx/rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
      [ "$applet" = busybox ] || ln -sf busybox "$ctx/rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$ctx/rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$ctx/rootfs/etc/group"
    tar -C "$ctx/rootfs" -c . | docker import \
      -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - pht-local/busybox:latest >/dev/null \
      || die "docker import of pht-local/busybox failed"
    rm -rf "$ctx"
    trap - EXIT
  fi

  # pht-local/python:3.11: Debian bookworm minbase with python3 (3.11), docs and caches trimmed.
  if docker image inspect pht-local/python:3.11 >/dev/null 2>&1; then
    say "image pht-local/python:3.11 present"
  else
    is_root || die "building pht-local/python:3.11 needs root (debootstrap); rerun as root"
    say "building pht-local/python:3.11 with debootstrap (takes about a minute; log: .pht/debootstrap.log)"
    mirror=${PHT_DEBIAN_MIRROR:-$(awk '/^deb / && $3 ~ /bookworm$/ {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)}
    if [ -z "$mirror" ] && [ -r /etc/apt/sources.list.d/debian.sources ]; then
      mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    mirror=${mirror:-http://deb.debian.org/debian}
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3 bookworm "$root" "$mirror" >"$state/debootstrap.log" 2>&1 \
      || die "debootstrap failed (mirror $mirror); see $state/debootstrap.log"
    rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
      "$root"/usr/share/locale/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
      "$root"/var/cache/debconf/*-old "$root"/var/log/*.log
    tar -C "$root" -c . | docker import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'ENV PYTHONDONTWRITEBYTECODE=1' -c 'CMD ["python3"]' - pht-local/python:3.11 >/dev/null \
      || die "docker import of pht-local/python:3.11 failed"
    rm -rf "$root"
    trap - EXIT
  fi
fi

say "ready"
