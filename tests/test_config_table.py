from __future__ import annotations

import pytest

from gateway.config import Settings
from gateway.config_table import README, settings_table, with_table


def test_the_readme_table_is_the_settings_table() -> None:
    readme = README.read_text(encoding="utf-8")

    assert settings_table() in readme
    assert with_table(readme) == readme, "run: python -m gateway.config_table --write"


def test_every_setting_has_a_row_with_a_description() -> None:
    table = settings_table()

    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} needs a description"
    assert len(table.splitlines()) == 2 + len(Settings.model_fields)
    assert "| `GATEWAY_SHUTDOWN_TIMEOUT` | `30` |" in table
    assert "| `OTEL_EXPORTER_OTLP_ENDPOINT` | unset |" in table


def test_markers_are_required() -> None:
    with pytest.raises(ValueError, match="markers"):
        with_table("# no table here\n")
