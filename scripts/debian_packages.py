"""apt-get install for the test environments (scripts/*_testenv.py): as root, non-interactive,
with a policy-rc.d so that no package starts a service system-wide. Stdlib only."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable


def apt_install(packages: list[str], error: type[Exception], log: Callable[[str], None], hint: str = "") -> None:
    """Install ``packages`` (apt-get update once if the first try fails); ``error`` with one line otherwise."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise error(f"cannot install {' '.join(packages)} (needs root and apt-get){hint}")
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    try:
        log("installing " + " ".join(packages))
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            proc = subprocess.run(cmd, env=env, capture_output=True)
            if proc.returncode != 0:
                raise error("apt-get install failed: " + proc.stderr.decode(errors="replace").strip()[-800:])
    finally:
        if created:
            policy.unlink()
