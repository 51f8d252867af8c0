"""Run one command from an image's file system as a container of ops/k8s would run it.

    unshare --mount --propagation private python run_as_pod.py SPEC.json

SPEC (JSON): image_root (the image's mounted file system), root (an empty directory), writable
(the container's emptyDir mount paths), uid, gid, workdir, env, command. The image's file system
is bound read-only (readOnlyRootFilesystem), each emptyDir is a fresh tmpfs, and the command runs
chrooted there as uid:gid with no supplementary groups, an empty capability bounding set
(capabilities: drop ALL) and no_new_privs (allowPrivilegeEscalation: false). The mounts live in
the private mount namespace `unshare` made, so they vanish with the command. Needs root.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
DEVICES = ("null", "zero", "full", "random", "urandom")


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _prctl(libc: ctypes.CDLL, option: int, argument: int) -> None:
    if libc.prctl(option, argument, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {argument})")


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["root"])
    _mount("--bind", spec["image_root"], str(root))
    _mount("-o", "remount,bind,ro", str(root))
    _mount("-t", "proc", "proc", str(root / "proc"))
    # A minimal /dev, as a container runtime gives: the usual devices and a tmpfs /dev/shm.
    _mount("-t", "tmpfs", "-o", "mode=755,size=1m", "tmpfs", str(root / "dev"))
    for name in DEVICES:
        (root / "dev" / name).touch()
        _mount("--bind", f"/dev/{name}", str(root / "dev" / name))
    (root / "dev" / "shm").mkdir()
    _mount("-t", "tmpfs", "-o", "mode=1777,size=64m", "tmpfs", str(root / "dev" / "shm"))
    for path in sorted(spec["writable"], key=lambda p: p.count("/")):
        target = root / path.lstrip("/")
        target.mkdir(exist_ok=True)  # only possible inside an emptyDir mounted before: the root is read-only
        _mount("-t", "tmpfs", "-o", "mode=1777,size=64m", "tmpfs", str(target))

    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    libc = ctypes.CDLL(None, use_errno=True)
    os.chroot(root)
    os.chdir(spec["workdir"])
    for capability in range(last_cap + 1):
        _prctl(libc, PR_CAPBSET_DROP, capability)
    os.setgroups([])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    os.execvpe(spec["command"][0], spec["command"], spec["env"])


if __name__ == "__main__":
    main(sys.argv[1])
