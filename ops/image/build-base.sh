#!/usr/bin/env bash
# A local stand-in for python:3.11-slim, for building ops/Dockerfile unchanged where base images
# cannot be pulled: Debian bookworm (minbase) with Debian's Python 3.11 and a virtual environment
# at /usr/local, so `python` and `pip` come first on PATH as in the official image (a venv's pip
# installs freely, where Debian's own refuses system installs, PEP 668). Tagged python:3.11-slim
# in the buildah store in use (CONTAINERS_STORAGE_CONF selects another store).
#
#   ops/image/build-base.sh            # needs root, buildah and debootstrap
#
# The Debian mirror is read from this host's apt sources at run time, never written down. The
# root filesystem is cached as a tar under $UKCANCEL_BASE_CACHE (default /var/tmp/ukcancel-base),
# keyed by this script's hash, so a machine debootstraps once per version of this script.
set -euo pipefail

SUITE=bookworm
TAG=python:3.11-slim
script_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
# A second tag records which version of this script made the base (a label or annotation would
# be inherited by every image built on it).
MARK=localhost/ukcancel-stand-in-base:$script_hash
cache_root=${UKCANCEL_BASE_CACHE:-/var/tmp/ukcancel-base}
rootfs_tar="$cache_root/$script_hash/rootfs.tar"

log() { echo "build-base: $*" >&2; }

# The first enabled `deb` source of $SUITE with component main, from the deb822 .sources files or
# the one-line .list format.
debian_mirror() {
  local file
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    awk -v suite="$SUITE" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && suites ~ ("(^| )" suite "( |$)") && comps ~ /(^| )main( |$)/ \
            && enabled !~ /^no$/ && uris != "") { split(uris, u, " "); print u[1]; found = 1; exit }
        types = uris = suites = comps = enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      { key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
        if (key == "types") types = $0; else if (key == "uris") uris = $0
        else if (key == "suites") suites = $0; else if (key == "components") comps = $0
        else if (key == "enabled") enabled = tolower($0) }
      END { if (!found) flush() }
    ' "$file"
  done
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    # deb [options] URI suite components...
    sed -E 's/\[[^]]*\]//' "$file" | awk -v suite="$SUITE" \
      '$1 == "deb" && $3 == suite { for (i = 4; i <= NF; i++) if ($i == "main") { print $2; exit } }'
  done
}

# IDs of the images tagged as stand-ins (of any version of this script).
stand_in_ids() {
  buildah images --noheading --no-trunc --format '{{.Name}} {{.ID}}' |
    awk -v name="${MARK%:*}" '$1 == name { sub(/^sha256:/, "", $2); print $2 }'
}

base_present() {
  local tagged marked
  tagged=$(buildah inspect --type image --format '{{.FromImageID}}' "$TAG" 2>/dev/null) || return 1
  marked=$(buildah inspect --type image --format '{{.FromImageID}}' "$MARK" 2>/dev/null) || return 1
  [ "$tagged" = "$marked" ]
}

make_rootfs() {
  local mirror work rootfs
  mirror=$(debian_mirror | head -n1)
  [ -n "$mirror" ] || { log "no '$SUITE' source with component main in /etc/apt/sources*"; exit 1; }
  mkdir -p "$cache_root"
  work=$(mktemp -d "$cache_root/build.XXXXXX")
  rootfs="$work/rootfs"
  # shellcheck disable=SC2064  # expand $work now: it is local
  trap "umount '$rootfs/proc' 2>/dev/null || true; rm -rf '$work'" EXIT
  log "debootstrap $SUITE (minbase) from the host's apt mirror"
  debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  mount -t proc proc "$rootfs/proc"
  chroot "$rootfs" /usr/bin/python3 -m venv /usr/local
  umount "$rootfs/proc"
  # Nothing of this host stays in the base: no mirror in apt's sources, no resolver or host name;
  # no package lists, downloaded packages, documentation or translations either (as in -slim).
  rm -f "$rootfs/etc/apt/sources.list" "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*/ \
    "$rootfs"/var/log/* "$rootfs"/tmp/*
  tar --numeric-owner -C "$rootfs" -cf "$work/rootfs.tar" .
  mkdir -p "$(dirname "$rootfs_tar")"
  mv "$work/rootfs.tar" "$rootfs_tar"
  rm -rf "$work"
  trap - EXIT
  # Root filesystems of older versions of this script are of no more use.
  find "$cache_root" -mindepth 1 -maxdepth 1 -type d ! -name "$script_hash" -exec rm -rf {} +
}

import_rootfs() {
  local container mountpoint
  container=$(buildah from scratch)
  mountpoint=$(buildah mount "$container")
  tar --numeric-owner -C "$mountpoint" -xpf "$rootfs_tar"
  buildah umount "$container" >/dev/null
  buildah config \
    --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd python3 \
    "$container"
  buildah commit --quiet --rm "$container" "$TAG" >/dev/null
  buildah tag "$TAG" "$MARK"
  # Stand-ins of older versions of this script: untagged (their layers stay while images use them).
  buildah images --noheading --format '{{.Name}}:{{.Tag}}' |
    awk -v name="${MARK%:*}" -v mark="$MARK" 'index($1, name ":") == 1 && $1 != mark' |
    xargs -r buildah rmi >/dev/null 2>&1 || true
}

if base_present; then
  log "$TAG (stand-in $script_hash) is already in the store"
  exit 0
fi
existing=$(buildah inspect --type image --format '{{.FromImageID}}' "$TAG" 2>/dev/null || true)
if [ -n "$existing" ] && ! stand_in_ids | grep -qx "$existing"; then
  log "the store has a $TAG that is not a stand-in; not replacing it (CONTAINERS_STORAGE_CONF selects another store)"
  exit 1
fi
# One builder at a time per cache: a second run waits, then finds the tar made.
mkdir -p "$cache_root"
exec 9>"$cache_root/lock"
flock 9
if [ ! -f "$rootfs_tar" ]; then
  make_rootfs
else
  log "reusing the cached root filesystem $rootfs_tar"
fi
import_rootfs
log "tagged $TAG (stand-in $script_hash)"
