from __future__ import annotations

from pathlib import Path

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


def test_a_setting_can_come_from_a_file_as_an_orchestrator_mounts_a_secret(
    tmp_path: Path,
) -> None:
    key = tmp_path / "INTAKE_SECRET_KEY"
    key.write_text("k" * 40 + "\n")  # as `kubectl create secret --from-file` may leave it
    url = tmp_path / "INTAKE_AMQP_URL"
    url.write_text("amqp://intake:pass@rabbitmq:5672/intake")
    settings = Settings.from_env(
        {"INTAKE_SECRET_KEY_FILE": str(key), "INTAKE_AMQP_URL_FILE": str(url)}
    )
    assert settings.secret_key == "k" * 40
    assert settings.amqp_url == "amqp://intake:pass@rabbitmq:5672/intake"
    with pytest.raises(SettingsError, match="INTAKE_SECRET_KEY and INTAKE_SECRET_KEY_FILE"):
        Settings.from_env({"INTAKE_SECRET_KEY_FILE": str(key), "INTAKE_SECRET_KEY": "x" * 40})
    missing = tmp_path / "absent"
    with pytest.raises(SettingsError, match="INTAKE_SECRET_KEY_FILE: cannot read") as raised:
        Settings.from_env({"INTAKE_SECRET_KEY_FILE": str(missing)})
    assert "k" * 40 not in str(raised.value)


def test_later_master_secrets_are_listed_by_version() -> None:
    one, two, three = "1" * 40, "2" * 40, "3" * 40
    settings = Settings.from_env(
        {"INTAKE_SECRET_KEY": one, "INTAKE_SECRET_KEYS": f"2:{two}, 3:{three}"}
    )
    assert settings.master_secrets() == {1: one, 2: two, 3: three}
    assert settings.secret_key_current == 0  # the newest
    held = Settings.from_env({"INTAKE_SECRET_KEYS": f"2:{two}", "INTAKE_SECRET_KEY_CURRENT": "1"})
    assert held.secret_key_current == 1
    assert two not in repr(settings)  # never printed


@pytest.mark.parametrize(
    ("keys", "current", "message"),
    [
        ("1:" + "x" * 40, "0", "VERSION:SECRET, 2..255"),
        ("256:" + "x" * 40, "0", "VERSION:SECRET, 2..255"),
        ("two:" + "x" * 40, "0", "VERSION:SECRET, 2..255"),
        ("2:short", "0", "32\\+ characters"),
        (f"2:{'x' * 40},2:{'y' * 40}", "0", "version 2 is listed twice"),
        ("2:" + "x" * 40, "3", "INTAKE_SECRET_KEY_CURRENT"),
    ],
)
def test_malformed_key_lists_are_refused_without_echoing_a_secret(
    keys: str, current: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as raised:
        Settings.from_env({"INTAKE_SECRET_KEYS": keys, "INTAKE_SECRET_KEY_CURRENT": current})
    assert "x" * 40 not in str(raised.value)
    assert "short" not in str(raised.value)
