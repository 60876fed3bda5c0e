"""The real promtool and amtool for the deploy tests; missing binaries skip on a laptop and fail in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI") == "true"
REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        if IN_CI:
            raise AssertionError(f"{name} not installed; .ci/run installs the Debian package {package}")
        pytest.skip(f"{name} not installed (Debian package {package})")
    return found


def run(argv: list[str | Path], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, check=False,
                          cwd=cwd)  # fmt: skip


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run([tool("promtool", "prometheus"), *args], cwd=cwd)


def amtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run([tool("amtool", "prometheus-alertmanager"), *args])
