"""Every setting is documented in the README, and settings are read only from what is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings, documented

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    table = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [s.env for s in documented() if f"| `{s.env}` |" not in table]
    assert missing == []


def test_settings_parse_types_from_the_environment() -> None:
    settings = Settings.from_env(
        {"CMG_PORT": "9001", "CMG_RETRY_BASE_DELAY": "0.5", "CMG_DATA_DIR": "/x"}
    )
    assert settings.port == 9001 and settings.retry_base_delay == 0.5
    assert settings.data_dir == Path("/x")
    assert Settings.from_env({}).port == 8080


def test_an_unreadable_setting_stops_startup_with_its_name() -> None:
    with pytest.raises(SystemExit, match="CMG_PORT"):
        Settings.from_env({"CMG_PORT": "eighty"})
