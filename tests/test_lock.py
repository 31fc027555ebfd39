"""requirements.lock (the Docker image's and CI's pinned, hashed dependencies) must cover
pyproject.toml's: every runtime and `otel` requirement, with its extras' requirements, is
pinned to a version its specifier allows, and every pin carries hashes. Regenerate with the
command in the lock's header when this fails."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$")


def pins(text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from a `--generate-hashes` requirements file."""
    found: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in text.splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            found[current] = (match.group(2), [])
        elif line.strip().startswith("--hash=sha256:") and current:
            found[current][1].append(line.strip().removeprefix("--hash=sha256:").rstrip(" \\"))
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["otel"]
    ]


LOCK = pins((ROOT / "requirements.lock").read_text())


@pytest.mark.parametrize("requirement", declared(), ids=str)
def test_each_declared_dependency_is_pinned_within_its_range(requirement: Requirement) -> None:
    name = canonicalize_name(requirement.name)

    assert name in LOCK, f"{requirement} is not in requirements.lock"
    version, _ = LOCK[name]
    assert requirement.specifier.contains(version, prereleases=True), (
        f"requirements.lock pins {name}=={version}, outside {requirement.specifier}"
    )


@pytest.mark.parametrize("requirement", [r for r in declared() if r.extras], ids=str)
def test_the_extras_of_a_declared_dependency_are_pinned_too(requirement: Requirement) -> None:
    try:
        metadata = requires(requirement.name) or []
    except PackageNotFoundError:
        pytest.skip(f"{requirement.name} is not installed here")
    for extra in requirement.extras:
        for raw in metadata:
            wanted = Requirement(raw)
            # What the extra adds on this platform (the lock is universal: it has the rest).
            if wanted.marker is not None and wanted.marker.evaluate({"extra": extra}):
                assert canonicalize_name(wanted.name) in LOCK, f"{requirement}: {wanted}"


def test_every_pin_has_hashes() -> None:
    assert LOCK
    for name, (_, hashes) in LOCK.items():
        assert hashes, f"{name} has no --hash in requirements.lock"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
