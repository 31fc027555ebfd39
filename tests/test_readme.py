"""The README stands alone: every repository path it names exists in the repository (or is a
git-ignored file that one of its commands makes), and every command in its `sh` blocks
exists: this repository's own scripts and commands answer `--help`, other tools are ones
the README says to install."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent

PATH = re.compile(r"^(?:\./)?[\w.-]+(?:/[\w.*{}-]*)+$")
NAMED_FILE = re.compile(r"^[\w.-]+\.(?:py|md|toml|yaml|yml|lock|mjs|json|lua|sh|graphql)$")
NOT_PATHS = ("application/", "text/", "multipart/")
# Files the README asks the reader to write in their own project, not ours.
THEIRS = {"router.yaml"}
# Programs from elsewhere that the README's commands use, each introduced where it is used.
TOOLS = {"curl", "docker", "kubectl", "export", "openssl", "printf", "wrk"}


def named_paths() -> list[str]:
    tokens = re.findall(r"`([^`\n]+)`", README)
    tokens += [w for block in re.findall(r"```sh\n(.*?)```", README, re.S) for w in block.split()]
    tokens += re.findall(r"\]\((?!https?:|#)([^)]+)\)", README)
    found = set()
    for token in tokens:
        for word in token.split():
            if PATH.match(word) and not word.startswith(NOT_PATHS):
                found.add(word.removeprefix("./"))
            elif NAMED_FILE.match(word) and word not in THEIRS:
                found.add(word)
    return sorted(found)


def tracked_files() -> list[str]:
    done = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def ignored(path: str) -> bool:
    done = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
    return done.returncode == 0


@pytest.mark.parametrize("path", named_paths())
def test_every_path_the_readme_names_is_in_the_repository(path: str) -> None:
    if "*" in path:
        assert list(ROOT.glob(path)), f"README names {path}, which matches nothing here"
    elif "/" in path:
        target = ROOT / path.rstrip("/")
        assert target.exists() or ignored(path), f"README names {path}, which is not here"
    else:
        # A bare file name: some file of the repository has that name.
        assert any(Path(f).name == path for f in tracked_files()), path


def test_the_readme_names_nothing_outside_the_repository() -> None:
    assert "shared/" not in README
    assert "bench-peers" not in README


# The workspace this repository was written in kept notes beside it (a `shared/` folder with
# its design, style and upstream notes) that a clone does not have: no file may send a
# reader there. `react-devtools-shared/` (in a vendored file's comment) is another name.
OUTSIDE = re.compile(r"(?<![\w./-])shared/|\b(?:NOTES|DESIGN|STYLE)\.md\b|bench-peers")
# This module names them to forbid them; vendored files are third-party bytes.
NOT_CHECKED = ("tests/test_readme.py", "gateway/static/vendor/")


def test_no_tracked_file_names_the_workspace_outside_the_repository() -> None:
    offenders = []
    for name in tracked_files():
        path = ROOT / name
        if name.startswith(NOT_CHECKED) or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")

    assert offenders == []


def commands() -> list[str]:
    found = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            # Shell variables set for the commands that follow.
            if not line or line.startswith("#") or re.match(r"^\w+=(\$?\(|')", line):
                continue
            found.append(line)
    return found


def program(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    while words and re.match(r"^\w+=", words[0]):
        words.pop(0)  # VAR=value before the command
    return words


@pytest.mark.parametrize("line", commands(), ids=lambda line: line[:60])
def test_every_command_in_the_readme_exists(line: str) -> None:
    words = program(line)
    assert words, line
    name, rest = words[0], words[1:]
    if name.startswith("./scripts/") or name == "bash":
        script = ROOT / (rest[0] if name == "bash" else name)
        assert script.is_file(), line
        assert name == "bash" or script.stat().st_mode & 0o111, f"{script} is not executable"
        return
    if name == ".venv/bin/python":
        target = ["-m", rest[1]] if rest[0] == "-m" else [str(ROOT / rest[0])]
        help_run = [sys.executable, *target, "--help"]
    elif name in {".venv/bin/catapult-gateway", "catapult-gateway"}:
        help_run = [str(BIN / "catapult-gateway"), rest[0], "--help"]
    elif name.startswith(".venv/bin/"):
        tool = BIN / name.removeprefix(".venv/bin/")
        assert tool.exists(), f"{line}: {tool.name} is not installed by the dev extras"
        help_run = [str(tool), "--help"]
    else:
        assert name in TOOLS, f"{line}: {name} is neither ours nor a tool the README introduces"
        return
    done = subprocess.run(help_run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{line}: {' '.join(help_run)} failed:\n{done.stderr}"


@pytest.mark.parametrize(
    "path",
    [
        "bench/peers/apollo-rest/node_modules/",
        "bench/peers/hive-gateway/node_modules/",
        "bench/peers/hive-gateway/supergraph.graphql",
        "tests/js/clients/node_modules/",
    ],
)
def test_what_commands_install_or_make_stays_out_of_git(path: str) -> None:
    assert ignored(path)


@pytest.mark.parametrize(
    "lock", [f for f in tracked_files() if Path(f).name == "package-lock.json"]
)
def test_lock_files_pin_by_integrity_and_name_no_download_address(lock: str) -> None:
    text = (ROOT / lock).read_text()

    assert '"resolved"' not in text
    assert '"integrity": "sha512-' in text
