"""The README's configuration table, rendered from `Settings` so that it cannot drift.

    python -m gateway.config_table            print the table
    python -m gateway.config_table --write    rewrite it in README.md, between the markers

A test fails when the README's table differs from what this renders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic.fields import FieldInfo

from gateway.config import Settings, env_name

START = "<!-- settings:start -->"
END = "<!-- settings:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def _range(field: FieldInfo) -> str:
    """The bounds a numeric setting is checked against, as `0 to 3,600` or `> 0, ≤ 3,600`."""
    bounds = {
        key: getattr(rule, key)
        for rule in field.metadata
        for key in ("ge", "gt", "le", "lt")
        if getattr(rule, key, None) is not None
    }
    if not bounds:
        return ""
    high = f"≤ {_number(bounds['le'])}" if "le" in bounds else f"< {_number(bounds['lt'])}"
    if "ge" in bounds:
        return f"{_number(bounds['ge'])} to {high.removeprefix('≤ ')}"
    if "gt" in bounds:
        return f"> {_number(bounds['gt'])}, {high}"
    return high


def settings_table() -> str:
    """A Markdown table: each setting's variable, default, range and description."""
    rows = ["| Variable | Default | Range | Description |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{env_name(name)}` | {_default(field)} | {_range(field)} | {description} |")
    return "\n".join(rows) + "\n"


def with_table(readme: str) -> str:
    """`readme` with the text between the markers replaced by the current table."""
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"README.md needs the markers {START} and {END}")
    return f"{head}{START}\n{settings_table()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.config_table")
    parser.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    args = parser.parse_args(argv)
    if not args.write:
        sys.stdout.write(settings_table())
        return 0
    README.write_text(with_table(README.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
