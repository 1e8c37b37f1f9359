"""The AWS SDK for JavaScript v3, installed for the tests from tests/jssdk/package.json (pinned,
with its lock file) into .cache/jssdk at the repository's root (ignored by git).

.ci/run installs node, npm and the SDK before the tests, so in CI (``CI`` set) a missing node
is a failure, never a skip. Elsewhere the test installs the SDK itself when node and npm are
there (``npm ci``, once: the copied lock file says what is installed) and skips without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "jssdk"
ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 300


def install_dir() -> Path:
    return Path(os.environ.get("STREAMD_JSSDK_DIR", ROOT / ".cache" / "jssdk"))


def require_jssdk() -> Path:
    """The directory whose node_modules holds the pinned SDK (installed now if needed).
    Fails in CI and skips elsewhere when node or npm is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        message = "node and npm are needed for the JS SDK tests (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    target = install_dir()
    lock = (SOURCE / "package-lock.json").read_bytes()
    installed = target / "package-lock.json"
    sdk = target / "node_modules" / "@aws-sdk" / "client-kinesis"
    if sdk.is_dir() and installed.exists() and installed.read_bytes() == lock:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(SOURCE / name, target / name)
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        installed.unlink(missing_ok=True)
        pytest.fail(f"npm ci in {target} failed: {done.stderr[-2000:]}")
    return target
