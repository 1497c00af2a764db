from __future__ import annotations

import pytest

from core.settings import DEV_SECRET_KEY, Settings, SettingsError


def test_defaults_are_local() -> None:
    settings = Settings.from_env({})
    assert settings.amqp_url.startswith("amqp://")
    assert "127.0.0.1" in settings.database_url


def test_environment_overrides_and_converts() -> None:
    settings = Settings.from_env(
        {
            "INTAKE_AMQP_URL": "amqp://x/",
            "INTAKE_EDGE_PORT": "9000",
            "INTAKE_EDGE_PUBLISH_TIMEOUT_S": "0.5",
        }
    )
    assert (settings.amqp_url, settings.edge_port, settings.edge_publish_timeout_s) == (
        "amqp://x/",
        9000,
        0.5,
    )


def test_bad_number_is_a_clear_error() -> None:
    with pytest.raises(SettingsError, match="INTAKE_EDGE_PORT: not a valid int"):
        Settings.from_env({"INTAKE_EDGE_PORT": "eighty"})


def test_production_refuses_the_development_key() -> None:
    with pytest.raises(SettingsError, match="INTAKE_SECRET_KEY"):
        Settings.from_env({"INTAKE_ENV": "production", "INTAKE_SECRET_KEY": DEV_SECRET_KEY})


def test_round_trip_through_the_environment() -> None:
    settings = Settings(edge_port=9123, edge_access_log=False, edge_publish_timeout_s=0.25)
    assert Settings.from_env(settings.to_env()) == settings
