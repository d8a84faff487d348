"""Debian packages the tests run for real (redis-server, redis-cli, nginx), installed when missing.

A fresh machine or CI clone has only what the project's files install: nginx
and redis-server come from apt here, as root, the first time a test needs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

APT_SECONDS = 300  # an update plus one package, on a slow mirror


def _apt_get(*args: str) -> bool:
    done = subprocess.run(
        ["apt-get", "-q", "-y", *args],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        timeout=APT_SECONDS,
        check=False,
    )
    return done.returncode == 0


def require(binary: str, package: str) -> str:
    """The path of `binary`, installing Debian's `package` first if need be; else skip."""
    if Path(binary).exists():
        return binary
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{binary} is missing: apt-get install -y {package}")
    install = ("install", "--no-install-recommends", package)
    # The package lists may be missing or stale on a fresh machine: update once, retry.
    if not _apt_get(*install) and not (_apt_get("update") and _apt_get(*install)):
        pytest.fail(f"apt-get install {package} failed")
    return binary
