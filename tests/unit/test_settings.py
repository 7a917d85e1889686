"""Settings: config file, flags, validation at startup."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, load_settings, parse_upstream_address


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
    assert legacy.configured_capabilities.modalities_in_study is False
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
