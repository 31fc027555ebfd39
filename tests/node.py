"""Running the JavaScript checks in tests/js/: real Apollo and urql code, driven from pytest.

Each folder under tests/js/ has its own package.json and committed package-lock.json;
`npm ci` installs exactly the locked versions when node_modules is missing or was
installed from another version of the lock file (a machine kept between checkouts). Without node
and npm the tests are skipped, unless GATEWAY_TEST_REQUIRE_NODE is set (CI sets it).
Test processes running side by side (pytest-xdist) take turns at a folder's install: two
`npm ci` into one node_modules would delete each other's files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

JS = Path(__file__).parent / "js"
REQUIRE = "GATEWAY_TEST_REQUIRE_NODE"


def node_project(name: str) -> Path:
    """The folder tests/js/<name>, with its locked dependencies installed."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get(REQUIRE):
            pytest.fail(f"node and npm are required ({REQUIRE} is set) but missing")
        pytest.skip(f"node and npm are not installed (set {REQUIRE} to make this a failure)")
    return install_locked(JS / name)


def install_locked(folder: Path) -> Path:
    """`npm ci` in `folder` unless its node_modules was installed from this very lock file.

    Also what `bench/live.py` installs its clients with (tests/js/live).
    """
    lock = hashlib.sha256((folder / "package-lock.json").read_bytes()).hexdigest()
    stamp = folder / "node_modules" / ".installed-from-lock"
    # Beside node_modules, not in it: `npm ci` deletes node_modules first.
    with (folder / ".npm-ci.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
        if not stamp.is_file() or stamp.read_text() != lock:
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=folder,
                check=True,
                capture_output=True,
                timeout=600,
            )
            stamp.write_text(lock)
    return folder


def run_node(folder: Path, script: str, env: dict[str, str], timeout: float = 120) -> Any:
    """Run `node script` in `folder`; its last stdout line is JSON, returned decoded."""
    done = subprocess.run(
        ["node", script],
        cwd=folder,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = done.stdout.strip().splitlines()
    report = f"node {script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, report
    assert lines, report
    return json.loads(lines[-1])
