"""The gateway's configuration: one frozen :class:`Settings`, validated when it is built.

Settings come from a TOML file (``--config``) and command-line flags, flags winning. Every
value is checked on construction so that a bad configuration stops the process at startup
with a message naming the offending key, instead of failing on the first request.

A configuration file looks like::

    [gateway]
    host = "127.0.0.1"
    port = 8080
    ae_title = "GATEWAY"

    [upstreams.main]            # the first upstream is the default one
    ae_title = "PACS"
    host = "10.0.0.5"
    port = 104
    profile = "auto"            # auto | orthanc | dcmqrscp | qrscp | legacy
    max_associations = 4
    store_concurrency = 1       # C-STOREs one STOW-RS request runs at once

    [upstreams.main.capabilities]
    relational = false          # overrides what the profile or probing says
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "PROFILES",
    "Capabilities",
    "ConfigError",
    "Settings",
    "UpstreamSettings",
    "load_settings",
    "parse_upstream_address",
]

RetrieveMethod = Literal["get", "move"]

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE: no backslash, no control chars
_SOP_CLASS = re.compile(r"^(?:[0-9.]{1,64}|[A-Za-z0-9]{1,80})$")
_UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_UPSTREAM_ADDRESS = re.compile(r"^(?:(?P<name>[A-Za-z0-9_-]+)=)?(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


@dataclass(frozen=True)
class Capabilities:
    """What an upstream's C-FIND SCP does correctly.

    Every flag that is ``False`` makes the gateway emulate the feature (PS3.4 C.3.4, C.4.1.2.1.4):
    the answer is the same, it only takes more C-FINDs. ``None`` means "not known yet": the
    gateway treats it as ``False`` and, with ``profile = "auto"``, probes the PACS to find out.
    """

    relational: bool | None = None
    """SERIES and IMAGE level queries without the parent UIDs (relational queries)."""
    modalities_in_study: bool | None = None
    """Matches on ModalitiesInStudy (list matching) and returns its true, current value."""
    list_matching: bool | None = None
    """Backslash-separated value lists on non-UID attributes (``Modality=SR\\KO``)."""
    case_insensitive_pn: bool | None = None
    """PN matching ignores case, as the gateway promises to its clients."""
    fuzzy_matching: bool | None = None
    """Fuzzy semantic matching of person names (negotiated with extended negotiation)."""

    def merged(self, overrides: Capabilities) -> Capabilities:
        """Return these capabilities with every non-``None`` value of `overrides` applied."""
        changes = {f.name: getattr(overrides, f.name) for f in fields(self) if getattr(overrides, f.name) is not None}
        return replace(self, **changes)

    @property
    def complete(self) -> bool:
        """True when every flag is known (nothing is left to probe)."""
        return all(getattr(self, f.name) is not None for f in fields(self) if f.name != "fuzzy_matching")


PROFILES: dict[str, Capabilities] = {
    # Measured: Orthanc 1.10 does list matching, relational queries, computed attributes and
    # case-insensitive person names; it has no fuzzy semantic matching over DIMSE.
    "orthanc": Capabilities(True, True, True, True, False),
    # Measured: dcmqrscp and pynetdicom's qrscp are hierarchical only, ignore
    # ModalitiesInStudy and return no counts; dcmqrscp matches names case-sensitively.
    "dcmqrscp": Capabilities(False, False, False, False, False),
    "qrscp": Capabilities(False, False, False, False, False),
    # Assume nothing: always correct, the most C-FINDs.
    "legacy": Capabilities(False, False, False, False, False),
    # Learn by probing the PACS; until a flag is known it is treated as unsupported.
    "auto": Capabilities(),
}


@dataclass(frozen=True)
class UpstreamSettings:
    """One upstream PACS and how the gateway talks to it."""

    name: str
    ae_title: str
    host: str
    port: int
    profile: str = "auto"
    capabilities: Capabilities = field(default_factory=Capabilities)
    retrieve: RetrieveMethod = "get"
    max_associations: int = 4
    connect_timeout: float = 5.0
    acse_timeout: float = 10.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    acquire_timeout: float = 10.0
    idle_timeout: float = 50.0
    """Seconds an idle pooled association is kept; many PACS drop idle associations after 60 s."""
    max_pdu: int = 65536
    storage_sop_classes: tuple[str, ...] = ()
    """Storage SOP classes (UIDs or keywords) offered in the SCP role for C-GET; empty: a default set
    of 120 (at most 127 fit beside the C-GET context in one association, PS3.8 §9.3.2.2)."""
    max_store_associations: int = 4
    """Storage associations (C-STORE, STOW-RS) kept to this PACS, a pool apart from the query pool."""
    store_concurrency: int = 1
    """C-STOREs one STOW-RS request runs at once, each on its own association.

    Raise it only for a PACS that takes parallel stores correctly (Orthanc does; dcmqrscp, whose
    forked processes share one index file, was measured losing index entries at 2)."""
    timezone: str = ""
    """IANA zone (``Europe/Berlin``) of the PACS's dates and times, for FHIR ``started`` when a study has no
    TimezoneOffsetFromUTC; empty: such a study's ``started`` is its date only."""
    fhir_max_instances: int = 10000
    """Most instances a FHIR ImagingStudy lists; a larger study leaves out its instance lists (and the
    top-level numberOfInstances with them, so that ist-4 holds)."""

    def __post_init__(self) -> None:
        prefix = f"upstreams.{self.name}"
        if not _UPSTREAM_NAME.match(self.name):
            raise ConfigError(f"{prefix}: an upstream name is letters, digits, '_' and '-' (it is part of URLs)")
        if not _AE_TITLE.match(self.ae_title) or not self.ae_title.strip():
            raise ConfigError(f"{prefix}.ae_title: {self.ae_title!r} is not a valid AE title (1-16 characters)")
        if not self.host:
            raise ConfigError(f"{prefix}.host must not be empty")
        if not 0 < self.port < 65536:
            raise ConfigError(f"{prefix}.port: {self.port} is not a TCP port")
        if self.profile not in PROFILES:
            raise ConfigError(f"{prefix}.profile: {self.profile!r} is not one of {', '.join(PROFILES)}")
        if self.retrieve not in ("get", "move"):
            raise ConfigError(f"{prefix}.retrieve: {self.retrieve!r} is not 'get' or 'move'")
        if not 1 <= self.max_associations <= 64:
            raise ConfigError(f"{prefix}.max_associations: {self.max_associations} is not between 1 and 64")
        if not 1 <= self.max_store_associations <= 64 or not 1 <= self.store_concurrency <= 16:
            raise ConfigError(f"{prefix}: 1 <= max_store_associations <= 64 and 1 <= store_concurrency <= 16")
        for name in ("connect_timeout", "acse_timeout", "dimse_timeout", "network_timeout", "acquire_timeout"):
            if not 0 < getattr(self, name) <= 3600:
                raise ConfigError(f"{prefix}.{name}: {getattr(self, name)} is not between 0 and 3600 seconds")
        if not 4096 <= self.max_pdu <= 4_194_304:
            raise ConfigError(f"{prefix}.max_pdu: {self.max_pdu} is not between 4096 and 4194304")
        if len(self.storage_sop_classes) > 127:
            raise ConfigError(f"{prefix}.storage_sop_classes: {len(self.storage_sop_classes)} is more than 127")
        for sop_class in self.storage_sop_classes:
            if not _SOP_CLASS.match(sop_class):
                raise ConfigError(f"{prefix}.storage_sop_classes: {sop_class!r} is not a UID or a SOP class keyword")
        if self.timezone:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ConfigError(f"{prefix}.timezone: {self.timezone!r} is not an IANA time zone") from exc
        if self.fhir_max_instances < 0:
            raise ConfigError(f"{prefix}.fhir_max_instances: {self.fhir_max_instances} must not be negative")

    @property
    def configured_capabilities(self) -> Capabilities:
        """The profile's capabilities with the explicitly configured flags applied."""
        return PROFILES[self.profile].merged(self.capabilities)

    @property
    def address(self) -> str:
        """``AET@HOST:PORT``, as on the command line."""
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """Everything the gateway process needs; built once at startup."""

    upstreams: tuple[UpstreamSettings, ...]
    host: str = "127.0.0.1"
    port: int = 8080
    ae_title: str = "GATEWAY"
    store_port: int = 11113
    base_path: str = "/dicom-web"
    public_url: str = ""
    """Scheme, host and port clients reach the gateway at (behind a reverse proxy); empty: the Host header."""
    cors_origins: tuple[str, ...] = ()
    max_results: int = 0
    """Most results one QIDO-RS answer carries; 0 means no limit (the answer is streamed)."""
    prefetch_results: int = 100
    """Results gathered before the HTTP status is committed, so early upstream failures are a 502."""
    fanout_concurrency: int = 4
    """C-FINDs one request runs at once when it emulates relational queries or computed attributes."""
    max_upload_bytes: int = 4 * 1024**3
    """Largest STOW-RS request body accepted (413 above it); uploads are spilled to temporary files."""
    log_level: str = "info"
    cache_dir: str = ""
    """Where retrieved instances are cached; empty: a temporary directory removed at shutdown."""
    cache_max_bytes: int = 2 * 1024**3
    """Size the instance cache is kept under (instances being streamed are never evicted)."""
    cache_ttl: float = 300.0
    """Seconds a cached series is served without asking the PACS again (metadata, frames, rendered)."""
    fhir_max_count: int = 100
    """Most ImagingStudy entries one FHIR search page carries (``_count`` above it is lowered to it)."""

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ConfigError("at least one upstream is required (--upstream AET@HOST:PORT or [upstreams.NAME])")
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ConfigError(f"upstream names must be unique, got {names}")
        if not _AE_TITLE.match(self.ae_title):
            raise ConfigError(f"gateway.ae_title: {self.ae_title!r} is not a valid AE title")
        if not 0 <= self.port < 65536 or not 0 <= self.store_port < 65536:
            raise ConfigError("gateway.port and gateway.store_port must be TCP ports")
        if not self.base_path.startswith("/") or self.base_path.endswith("/"):
            raise ConfigError(f"gateway.base_path: {self.base_path!r} must start with '/' and not end with one")
        if self.public_url and (not re.match(r"^https?://[^/]+$", self.public_url)):
            raise ConfigError(f"gateway.public_url: {self.public_url!r} is not scheme://host[:port] (no path)")
        if self.max_results < 0 or self.prefetch_results < 1 or not 1 <= self.fanout_concurrency <= 64:
            raise ConfigError("gateway.max_results >= 0, prefetch_results >= 1, 1 <= fanout_concurrency <= 64")
        if self.cache_max_bytes < 0 or not 0 <= self.cache_ttl <= 86400:
            raise ConfigError("gateway.cache_max_bytes >= 0 and 0 <= gateway.cache_ttl <= 86400 seconds")
        if self.max_upload_bytes < 1:
            raise ConfigError(f"gateway.max_upload_bytes: {self.max_upload_bytes} must be positive")
        if not 1 <= self.fhir_max_count <= 1000:
            raise ConfigError(f"gateway.fhir_max_count: {self.fhir_max_count} is not between 1 and 1000")
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise ConfigError(f"gateway.log_level: {self.log_level!r} is not a log level")

    @property
    def default_upstream(self) -> UpstreamSettings:
        """The upstream served at the DICOMweb root (the first one configured)."""
        return self.upstreams[0]


def parse_upstream_address(text: str, **options: Any) -> UpstreamSettings:
    """Parse ``[NAME=]AET@HOST:PORT`` into an :class:`UpstreamSettings`."""
    match = _UPSTREAM_ADDRESS.match(text)
    if match is None:
        raise ConfigError(f"--upstream {text!r}: expected [NAME=]AET@HOST:PORT")
    return UpstreamSettings(
        name=match["name"] or "default",
        ae_title=match["aet"],
        host=match["host"],
        port=int(match["port"]),
        **options,
    )


def _upstream_from_table(name: str, table: Mapping[str, Any]) -> UpstreamSettings:
    known = {f.name for f in fields(UpstreamSettings)} - {"name", "capabilities"}
    unknown = set(table) - known - {"capabilities"}
    if unknown:
        raise ConfigError(f"upstreams.{name}: unknown keys {sorted(unknown)}")
    capability_table = dict(table.get("capabilities", {}))
    capability_names = {f.name for f in fields(Capabilities)}
    unknown_capabilities = set(capability_table) - capability_names
    if unknown_capabilities:
        raise ConfigError(f"upstreams.{name}.capabilities: unknown keys {sorted(unknown_capabilities)}")
    if any(not isinstance(v, bool) for v in capability_table.values()):
        raise ConfigError(f"upstreams.{name}.capabilities: values must be true or false")
    values = {key: value for key, value in table.items() if key in known}
    if "storage_sop_classes" in values:
        values["storage_sop_classes"] = tuple(values["storage_sop_classes"])
    try:
        return UpstreamSettings(name=name, capabilities=Capabilities(**capability_table), **values)
    except TypeError as exc:
        raise ConfigError(f"upstreams.{name}: {exc}") from exc


def load_settings(config_path: Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from an optional TOML file and flag overrides.

    Parameters
    ----------
    config_path : pathlib.Path, optional
        A TOML file with a ``[gateway]`` table and one ``[upstreams.NAME]`` table per PACS.
    **overrides
        Values from the command line; ``None`` means "not given". ``upstream`` (a string
        ``[NAME=]AET@HOST:PORT``) replaces or adds the default upstream, and ``retrieve``
        applies to it.
    """
    gateway_table: dict[str, Any] = {}
    upstreams: list[UpstreamSettings] = []
    if config_path is not None:
        try:
            document = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc}") from exc
        unknown = set(document) - {"gateway", "upstreams"}
        if unknown:
            raise ConfigError(f"{config_path}: unknown tables {sorted(unknown)}")
        gateway_table = dict(document.get("gateway", {}))
        upstreams = [_upstream_from_table(name, table) for name, table in document.get("upstreams", {}).items()]

    upstream_flag = overrides.pop("upstream", None)
    retrieve_flag = overrides.pop("retrieve", None)
    if upstream_flag is not None:
        flagged = parse_upstream_address(upstream_flag)
        existing = next((u for u in upstreams if u.name == flagged.name), None)
        base = existing if existing is not None else flagged
        flagged = replace(base, ae_title=flagged.ae_title, host=flagged.host, port=flagged.port)
        upstreams = [flagged] + [u for u in upstreams if u.name != flagged.name]
    if retrieve_flag is not None and upstreams:
        upstreams[0] = replace(upstreams[0], retrieve=retrieve_flag)

    known = {f.name for f in fields(Settings)} - {"upstreams"}
    unknown = set(gateway_table) - known
    if unknown:
        raise ConfigError(f"gateway: unknown keys {sorted(unknown)}")
    values = {**gateway_table, **{k: v for k, v in overrides.items() if v is not None}}
    if "cors_origins" in values:
        values["cors_origins"] = tuple(values["cors_origins"])
    try:
        return Settings(upstreams=tuple(upstreams), **values)
    except TypeError as exc:
        raise ConfigError(f"gateway: {exc}") from exc
