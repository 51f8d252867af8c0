#!/usr/bin/env bash
# Build ops/Dockerfile, unchanged, with buildah and no container engine: the stand-in base from
# build-base.sh, chroot isolation, the host's network.
#
#   ops/image/build-image.sh [TAG]     # default ukssdc-cancel:local; needs root
#
# pip inside the build reaches the package index this host's pip is configured for: the network
# settings of `$PYTHON -m pip config list` (PIP_* variables included; local paths and file: URLs
# left out) and, when pip is given a CA bundle, that bundle, go into a directory mounted read-only
# at /etc/xdg/pip for the RUN steps only. Nothing of it is in the image.
set -euo pipefail
cd "$(dirname "$0")/../.."

TAG=${1:-ukssdc-cancel:local}
PYTHON=${PYTHON:-python3}

"$(dirname "$0")/build-base.sh"

build_config=$(mktemp -d)
trap 'rm -rf "$build_config"' EXIT

# The network settings of this host's pip, as a pip.conf for the build, and its CA bundle if it
# names one. `pip config list` prints section.key='value'; a PIP_* variable (section :env:)
# overrides the files' [global] value.
{ "$PYTHON" -m pip config list 2>/dev/null || true; } | "$PYTHON" -c '
import re, shutil, sys
from pathlib import Path

out = Path(sys.argv[1])
found = {}
for line in sys.stdin:
    match = re.fullmatch(r"(:env:|global)\.([a-z-]+)=(.*)", line.strip())
    if match:
        section, key, value = match.groups()
        if section == ":env:" or key not in found:
            found[key] = value.strip("\x27\"")
lines = ["[global]"]
for key in ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "default-timeout", "retries"):
    kept = [item for item in found.get(key, "").split() if not item.startswith("file:")]
    if kept:
        lines.append(f"{key} = {chr(32).join(kept)}")
cert = found.get("cert")
if cert and Path(cert).is_file():
    shutil.copy(cert, out / "ca-certificates.crt")
    lines.append("cert = /etc/xdg/pip/ca-certificates.crt")
(out / "pip.conf").write_text("\n".join(lines) + "\n")
' "$build_config"

# The image's version label: the package version, pyproject.toml's (its one source).
version=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')

buildah bud \
  --isolation chroot \
  --build-arg "UKCANCEL_VERSION=$version" \
  --network host \
  --pull=never \
  --volume "$build_config:/etc/xdg/pip:ro" \
  --file ops/Dockerfile \
  --tag "$TAG" \
  .
