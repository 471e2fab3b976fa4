# Sourced: podman set up for this machine (no Docker engine, no registry): runc, cgroupfs,
# overlay storage in a per-user cache directory (LCS_PODMAN_DIR), so the base image and the
# torch layer survive from one clone of the project to the next (a fresh machine builds them:
# a few minutes more). Installs podman if it is missing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PODMAN_DIR="${LCS_PODMAN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lcs-serve/podman}"
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq podman buildah runc debootstrap
fi
mkdir -p "$PODMAN_DIR" "$ROOT/build"
cat > "$PODMAN_DIR/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
cat > "$PODMAN_DIR/storage.conf" <<CONF
[storage]
driver = "overlay"
runroot = "$PODMAN_DIR/run"
graphroot = "$PODMAN_DIR/storage"
CONF
export CONTAINERS_CONF="$PODMAN_DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf"
BASE_IMAGE=localhost/debian:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# A base image built from Debian packages: no registry is reachable to pull one.
ensure_base_image() {
  if podman image exists "$BASE_IMAGE"; then return; fi
  local rootfs="$ROOT/build/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >/dev/null
  tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
}
