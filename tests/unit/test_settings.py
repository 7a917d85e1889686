"""Settings: config file, flags, validation at startup."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import PROFILES, ConfigError, load_settings, parse_upstream_address


def test_flags_alone() -> None:
    settings = load_settings(None, upstream="PACS@10.0.0.5:104", retrieve="move", port=9000, ae_title="GW")
    upstream = settings.default_upstream
    assert (upstream.ae_title, upstream.host, upstream.port, upstream.retrieve) == ("PACS", "10.0.0.5", 104, "move")
    assert (settings.port, settings.ae_title) == (9000, "GW")


def test_config_file_with_several_upstreams_and_flag_override(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        """
[gateway]
port = 8081
max_results = 500

[upstreams.main]
ae_title = "MAIN"
host = "127.0.0.1"
port = 4242
profile = "orthanc"
max_associations = 8

[upstreams.main.capabilities]
trusted_aggregates = false

[upstreams.legacy]
ae_title = "OLD"
host = "127.0.0.1"
port = 11112
profile = "dcmqrscp"
dimse_timeout = 5

[upstreams.legacy.capabilities]
relational = true
"""
    )
    settings = load_settings(config, port=9090)
    assert settings.port == 9090 and settings.max_results == 500
    assert [u.name for u in settings.upstreams] == ["main", "legacy"]
    legacy = settings.upstreams[1]
    assert legacy.configured_capabilities.relational is True
    assert legacy.configured_capabilities.trusted_aggregates is False
    # Orthanc's profile trusts the PACS's ModalitiesInStudy and counts; the configuration can say no.
    assert PROFILES["orthanc"].trusted_aggregates is True
    assert settings.upstreams[0].configured_capabilities.trusted_aggregates is False
    assert settings.upstreams[0].configured_capabilities.relational is True
    assert settings.upstreams[0].max_associations == 8

    overridden = load_settings(config, upstream="legacy=NEW@127.0.0.1:2000")
    assert overridden.default_upstream.name == "legacy" and overridden.default_upstream.ae_title == "NEW"
    assert overridden.default_upstream.dimse_timeout == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[gateway]\nport = 'x'\n[upstreams.a]\nae_title='A'\nhost='h'\nport=1", "port"),
        ("[upstreams.a]\nae_title='A'\nhost='h'\nport=1\nbogus=1", "unknown keys"),
        ("[upstreams.a]\nae_title='A'\nhost='h'\nport=70000", "not a TCP port"),
        ("[upstreams.a]\nae_title='WAY_TOO_LONG_AE_TITLE'\nhost='h'\nport=1", "AE title"),
        ("[upstreams.a]\nae_title='A'\nhost='h'\nport=1\nprofile='magic'", "profile"),
        ("[upstreams.a]\nae_title='A'\nhost='h'\nport=1\ndimse_timeout=0", "dimse_timeout"),
        (
            "[upstreams.a]\nae_title='A'\nhost='h'\nport=1\n[upstreams.a.capabilities]\nrelational='yes'",
            "true or false",
        ),
        ("[gateway]\nhttp_header_timeout=0\n[upstreams.a]\nae_title='A'\nhost='h'\nport=1", "http_header_timeout"),
        ("[gateway]\nhttp_body_timeout=-1\n[upstreams.a]\nae_title='A'\nhost='h'\nport=1", "http_body_timeout"),
        ("[gateway]\nhttp_max_header_bytes=100\n[upstreams.a]\nae_title='A'\nhost='h'\nport=1", "http_max_header"),
        ("[gateway]\nhttp_body_min_rate=-5\n[upstreams.a]\nae_title='A'\nhost='h'\nport=1", "http_body_min_rate"),
        ("[gateway]\nmax_rendered_size=0\n[upstreams.a]\nae_title='A'\nhost='h'\nport=1", "max_rendered_size"),
        ("[gateway]\nport=1", "at least one upstream"),
        ("not toml [", "cannot read"),
    ],
)
def test_invalid_configuration_fails_fast(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def test_upstream_address_syntax() -> None:
    assert parse_upstream_address("main=PACS@host:104").name == "main"
    with pytest.raises(ConfigError, match="AET@HOST:PORT"):
        parse_upstream_address("PACS@host")


def test_environment_alone_describes_a_gateway() -> None:
    environ = {
        "GATEWAY_UPSTREAM": "PACS@10.0.0.5:104",
        "GATEWAY_HOST": "0.0.0.0",
        "GATEWAY_PORT": "9000",
        "GATEWAY_AE_TITLE": "1234",  # a string key keeps what looks like a number
        "GATEWAY_CACHE_TTL": "12.5",
        "GATEWAY_METRICS": "false",
        "GATEWAY_CORS_ORIGINS": "https://a.example, https://b.example",
        "GATEWAY_UPSTREAMS__DEFAULT__PROFILE": "orthanc",
        "GATEWAY_UPSTREAMS__DEFAULT__STORAGE_SOP_CLASSES": '["CTImageStorage", "1.2.840.10008.5.1.4.1.1.4"]',
        "GATEWAY_UPSTREAMS__DEFAULT__CAPABILITIES__RELATIONAL": "no",
        "gateway_upstreams__archive__ae_title": "ARCHIVE",  # names are case-insensitive
        "GATEWAY_UPSTREAMS__ARCHIVE__HOST": "archive.example",
        "GATEWAY_UPSTREAMS__ARCHIVE__PORT": "11112",
        "GATEWAY_LOG_FORMAT": "",  # empty: unset
        "GATEWAY_AUTH__ALLOW_ANONYMOUS": "true",  # 0.0.0.0 without a token issuer: anonymous on purpose
        "PATH": "/usr/bin",
    }
    settings = load_settings(None, environ=environ)
    assert (settings.host, settings.port, settings.ae_title, settings.cache_ttl) == ("0.0.0.0", 9000, "1234", 12.5)
    assert settings.metrics is False and settings.log_format == "text"
    assert settings.auth.allow_anonymous is True and not settings.auth.enabled
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    default, archive = settings.upstreams
    assert (default.name, default.address, default.profile) == ("default", "PACS@10.0.0.5:104", "orthanc")
    assert default.storage_sop_classes == ("CTImageStorage", "1.2.840.10008.5.1.4.1.1.4")
    assert default.configured_capabilities.relational is False
    assert default.configured_capabilities.trusted_aggregates is True
    assert (archive.name, archive.address) == ("archive", "ARCHIVE@archive.example:11112")


def test_precedence_flags_over_environment_over_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[gateway]\nport = 8081\nstore_port = 4000\nmax_results = 7\n"
        "[upstreams.main]\nae_title = 'MAIN'\nhost = 'h'\nport = 4242\ndimse_timeout = 5\n"
    )
    environ = {
        "GATEWAY_PORT": "8082",
        "GATEWAY_STORE_PORT": "4001",
        "GATEWAY_UPSTREAMS__MAIN__DIMSE_TIMEOUT": "6",
        "GATEWAY_UPSTREAM": "main=ENV@h:1",
    }
    settings = load_settings(config, environ=environ, port=8083, upstream=None)
    assert (settings.port, settings.store_port, settings.max_results) == (8083, 4001, 7)
    assert settings.default_upstream.address == "ENV@h:1" and settings.default_upstream.dimse_timeout == 6
    flagged = load_settings(config, environ=environ, upstream="other=FLAG@h:2")
    assert [u.name for u in flagged.upstreams] == ["other", "main"]
    assert flagged.upstreams[1].address == "MAIN@h:4242"  # GATEWAY_UPSTREAM lost to the flag
    assert load_settings(config).port == 8081


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"GATEWAY_PORT": "tcp://10.0.0.1:8080"}, "GATEWAY_PORT='tcp://10.0.0.1:8080': expected a whole number"),
        ({"GATEWAY_METRICS": "maybe"}, "GATEWAY_METRICS"),
        ({"GATEWAY_BOGUS": "1"}, r"gateway: unknown keys \['bogus'\]"),
        ({"GATEWAY_NOSUCH__KEY": "1"}, r"environment: unknown tables \['nosuch'\]"),
        ({"GATEWAY_UPSTREAMS__X__PORT": "1"}, "upstreams.x"),
        ({"GATEWAY_UPSTREAMS____PORT": "1"}, "empty name"),
        ({"GATEWAY_UPSTREAM": "nonsense"}, "AET@HOST:PORT"),
    ],
)
def test_invalid_environment_fails_fast(environ: dict[str, str], message: str) -> None:
    environ = {"GATEWAY_UPSTREAM": "PACS@h:1"} | environ
    with pytest.raises(ConfigError, match=message):
        load_settings(None, environ=environ)
