"""Secure by default: the [auth] table, the auth flags, and the start-up refusal to serve anyone anonymously."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.settings import ConfigError, load_settings

UPSTREAM = "PACS@127.0.0.1:11112"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_serves_anonymously(host: str) -> None:
    settings = load_settings(None, upstream=UPSTREAM, host=host)
    assert not settings.auth.enabled


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "gateway.example.org"])
def test_another_address_without_auth_stops_the_start(host: str) -> None:
    with pytest.raises(ConfigError, match="--allow-anonymous"):
        load_settings(None, upstream=UPSTREAM, host=host)


def test_anonymous_on_purpose_or_with_an_issuer() -> None:
    assert load_settings(None, upstream=UPSTREAM, host="0.0.0.0", allow_anonymous=True).auth.allow_anonymous
    settings = load_settings(
        None,
        upstream=UPSTREAM,
        host="0.0.0.0",
        auth_issuers=["https://login.example.org/realms/a", "https://login.example.org/realms/b"],
        auth_audience="https://pacs.example.org",
    )
    assert settings.auth.enabled and len(settings.auth.issuers) == 2


def test_the_auth_table(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[gateway]\nhost = '0.0.0.0'\n[upstreams.main]\nae_title='A'\nhost='h'\nport=104\n"
        "[auth]\nissuers = ['https://login.example.org']\naudience = 'gw'\nalgorithms = ['ES256']\n"
        "leeway = 10\npatient_claim = 'pid'\naudit_log = '/var/log/audit.jsonl'\n",
        encoding="utf-8",
    )
    auth = load_settings(config).auth
    assert (auth.algorithms, auth.leeway, auth.patient_claim, auth.audit_log) == (
        ("ES256",),
        10,
        "pid",
        "/var/log/audit.jsonl",
    )
    # A flag adds to nothing: it replaces the file's issuers.
    assert load_settings(config, auth_issuers=["https://other.example.org"]).auth.issuers == (
        "https://other.example.org",
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("issuers = ['https://login.example.org']", "audience is required"),
        ("issuers = ['http://login.example.org']\naudience='a'", "https://"),
        ("issuers = 'https://login.example.org'\naudience='a'", "list of strings"),
        ("issuers = ['https://x.org']\naudience='a'\nalgorithms = ['none']", "never 'none'"),
        ("issuers = ['https://x.org']\naudience='a'\nalgorithms = ['HS256']", "HMAC"),
        ("issuers = ['https://x.org']\naudience='a'\nleeway = 3600", "leeway"),
        ("introspection_url = 'https://x.org/introspect'", "introspection_client_id"),
        ("bogus = 1", "unknown keys"),
    ],
)
def test_bad_auth_tables(tmp_path: Path, table: str, message: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"[upstreams.main]\nae_title='A'\nhost='h'\nport=104\n[auth]\n{table}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def test_test_issuers_on_loopback_may_use_http() -> None:
    settings = load_settings(
        None, upstream=UPSTREAM, auth_issuers=["http://127.0.0.1:9000/realms/t"], auth_audience="a"
    )
    assert settings.auth.issuers == ("http://127.0.0.1:9000/realms/t",)


def test_cors_credentials_are_never_combined_with_any_origin(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[gateway]\ncors_origins = ['*']\ncors_allow_credentials = true\n"
        "[upstreams.main]\nae_title='A'\nhost='h'\nport=1\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="cors_allow_credentials"):
        load_settings(config)


def test_the_command_line_refuses_an_open_anonymous_start(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--upstream", UPSTREAM]) == 2
    assert "--allow-anonymous" in capsys.readouterr().err
