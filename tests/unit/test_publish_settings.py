"""The [fhir] publishing settings: config file, --fhir-publish-url, and a bad value named at startup."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, default_publish_queue_dir, load_settings

UPSTREAM = "PACS@127.0.0.1:104"


def write(tmp_path: Path, fhir: str, gateway: str = 'public_url = "https://gw.example.org"') -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(f"[gateway]\n{gateway}\n\n[fhir]\n{fhir}\n", encoding="utf-8")
    return config


def test_not_configured_by_default() -> None:
    assert load_settings(None, upstream=UPSTREAM).fhir_publish is None


def test_config_file(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
publish_url = "https://fhir.example.org/fhir"
publish_version = "R5"
token_url = "https://auth.example.org/token"
client_id = "gateway"
client_secret = "secret"
queue_dir = "/var/lib/gw/queue"
queue_max = 500
publish_backoff_max = 120
""",
    )
    publish = load_settings(config, upstream=UPSTREAM).fhir_publish
    assert publish is not None
    assert (publish.publish_url, publish.publish_version, publish.client_id) == (
        "https://fhir.example.org/fhir",
        "R5",
        "gateway",
    )
    assert (publish.queue_max, publish.publish_backoff_max) == (500, 120)
    assert publish.resolved_queue_dir == Path("/var/lib/gw/queue")


def test_flag_alone_and_flag_over_file(tmp_path: Path) -> None:
    settings = load_settings(
        None, upstream=UPSTREAM, public_url="https://gw.test", fhir_publish_url="http://fhir.test:8080/fhir"
    )
    assert settings.fhir_publish is not None and settings.fhir_publish.publish_version == "R4"
    config = write(tmp_path, 'publish_url = "https://a.test/fhir"\nbearer_token = "t"')
    flagged = load_settings(config, upstream=UPSTREAM, fhir_publish_url="https://b.test/fhir").fhir_publish
    assert flagged is not None and (flagged.publish_url, flagged.bearer_token) == ("https://b.test/fhir", "t")


def test_default_queue_dir_is_state_that_survives_restarts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_publish_queue_dir() == tmp_path / "dicomweb-gateway" / "fhir-publish"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_publish_queue_dir() == tmp_path / "home" / ".local" / "state" / "dicomweb-gateway" / "fhir-publish"


@pytest.mark.parametrize(
    ("fhir", "named"),
    [
        ('publish_url = "fhir.example.org"', "fhir.publish_url"),
        ('publish_url = "https://fhir.example.org/fhir/"', "fhir.publish_url"),
        ('publish_url = "https://f.test"\npublish_version = "STU3"', "fhir.publish_version"),
        ('publish_url = "https://f.test"\nbearer_token = "t"\ntoken_url = "https://a.test/t"', "fhir.bearer_token"),
        ('publish_url = "https://f.test"\ntoken_url = "https://a.test/t"\nclient_id = "c"', "fhir.client_secret"),
        ('publish_url = "https://f.test"\nclient_secret = "s"', "fhir.token_url"),
        ('publish_url = "https://f.test"\nqueue_max = 0', "fhir.queue_max"),
        ('publish_url = "https://f.test"\nqueue_max = "10"', "fhir.queue_max"),
        ('publish_url = "https://f.test"\npublish_timeout = 0', "fhir.publish_timeout"),
        ('publish_url = "https://f.test"\npublish_timeout = true', "fhir.publish_timeout"),
        ('publish_url = "https://f.test"\npublish_attempts = 0', "fhir.publish_attempts"),
        ('publish_url = "https://f.test"\npublish_backoff = 10\npublish_backoff_max = 5', "fhir.publish_backoff"),
        ('publish_url = "https://f.test"\npublish_concurrency = 100', "fhir.publish_concurrency"),
        ('publish_url = "https://f.test"\npublish_delay = -1', "fhir.publish_delay"),
        ('publish_url = "https://f.test"\ntoken_auth_method = "jwt"', "fhir.token_auth_method"),
        ('publish_url = "https://f.test"\npublish_urls = "x"', "fhir: unknown keys ['publish_urls']"),
        ('publish_version = "R4"', "fhir: publish_version is set but publish_url is not"),
    ],
)
def test_a_bad_value_stops_startup_naming_the_key(tmp_path: Path, fhir: str, named: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, fhir), upstream=UPSTREAM)
    assert named in str(error.value)


def test_publishing_needs_the_public_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"fhir.publish_url needs gateway.public_url"):
        load_settings(write(tmp_path, 'publish_url = "https://f.test"', gateway=""), upstream=UPSTREAM)
