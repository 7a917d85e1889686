"""The gateway's configuration: one frozen :class:`Settings`, validated when it is built.

Settings come from a TOML file (``--config``), ``GATEWAY_*`` environment variables
(:mod:`gateway.environment`) and command-line flags: flags win over the environment, which wins
over the file. Every value is checked on construction so that a bad configuration stops the
process at startup with a message naming the offending key, instead of failing on the first
request.

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
    trusted_aggregates = false  # derive ModalitiesInStudy and the counts (true: the PACS's own)

    [fhir]                      # optional: publish ImagingStudy resources after STOW-RS
    publish_url = "https://fhir.example.org/fhir"
    publish_version = "R4"      # R4 | R5

    [auth]                      # OAuth2 / SMART bearer tokens (README: Security)
    issuers = ["https://login.example.org/realms/hospital"]
    audience = "https://pacs.example.org/dicom-web"

DICOM TLS to a PACS is ``tls = true`` in its table, with ``tls_ca`` (PEM CA bundle; default: the
system's trust store), ``tls_cert`` and ``tls_key`` (the gateway's client certificate, for mutual
TLS) and ``tls_server_name`` (the name its certificate must carry; default: ``host``). The C-MOVE
storage SCP takes ``store_tls``, ``store_tls_cert``, ``store_tls_key`` and ``store_tls_ca`` in
``[gateway]``. Every path is checked when the settings are built.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.environment import UPSTREAM_VARIABLE, VariableError, environment_document

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "PROFILES",
    "AuthSettings",
    "check_secure_url",
    "is_loopback",
    "Capabilities",
    "ConfigError",
    "FhirPublishSettings",
    "Settings",
    "UpstreamSettings",
    "default_publish_queue_dir",
    "load_settings",
    "parse_upstream_address",
]

RetrieveMethod = Literal["get", "move"]
FhirVersion = Literal["R4", "R5"]

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE: no backslash, no control chars
_SOP_CLASS = re.compile(r"^(?:[0-9.]{1,64}|[A-Za-z0-9]{1,80})$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")  # what a certificate's subjectAltName can carry
_UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HTTP_URL = re.compile(r"^https?://[^/?#\s]+(?:/[^?#\s]*)?$")
_SOURCE_HOST = re.compile(r"^(?:\*|[A-Za-z0-9_.:-]{1,253}(?:/\d{1,3})?)$")  # host, IPv4/IPv6, CIDR, or *
_UPSTREAM_ADDRESS = re.compile(r"^(?:(?P<name>[A-Za-z0-9_-]+)=)?(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


def _check_tls(
    prefix: str, enabled_key: str, enabled: bool, paths: Mapping[str, str], *, pair: tuple[str, str]
) -> None:
    """Check a TLS block: its keys only with TLS on, `pair` (certificate and key) together, readable files."""
    if not isinstance(enabled, bool):
        raise ConfigError(f"{prefix}.{enabled_key}: {enabled!r} is not true or false")
    for name, path in paths.items():
        if not isinstance(path, str):
            raise ConfigError(f"{prefix}.{name}: {path!r} is not a path")
    if not enabled:
        given = [key for key, value in paths.items() if value]
        if given:
            raise ConfigError(f"{prefix}.{given[0]} is set but {prefix}.{enabled_key} is not true")
        return
    cert, key = pair
    if bool(paths[cert]) != bool(paths[key]):
        raise ConfigError(f"{prefix}.{cert} and {prefix}.{key} go together: a certificate and its private key")
    for name, path in paths.items():
        if path and not Path(path).is_file():
            raise ConfigError(f"{prefix}.{name}: {path!r} is not a file")


ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
"""JWS algorithms a token may be signed with (RFC 7518): public-key ones only, never ``none`` or HMAC."""

_SMART_CAPABILITIES = (
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "context-standalone-patient",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or ``localhost``) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_secure_url(key: str, url: str) -> None:
    # Tokens and keys must not travel in the clear, except to a test issuer on this machine.
    match = re.match(r"^(https?)://([^/:]+|\[[^]]+\])(:\d+)?(/.*)?$", url)
    if match is None or (match[1] == "http" and not is_loopback(match[2])):
        raise ConfigError(f"{key}: {url!r} is not an https:// URL (http:// only for a loopback address)")


@dataclass(frozen=True)
class AuthSettings:
    """Who may call the gateway: the bearer tokens it accepts (the ``[auth]`` table).

    With no issuer and no introspection endpoint the gateway serves anonymously, which it does
    only on a loopback address unless `allow_anonymous` says otherwise.
    """

    issuers: tuple[str, ...] = ()
    """OpenID Connect issuers whose JWTs are accepted (keys from ``{issuer}/.well-known/openid-configuration``)."""
    audience: str = ""
    """The ``aud`` every token must name: this gateway (required with an issuer)."""
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    leeway: float = 30.0
    """Seconds of clock skew tolerated on ``exp`` and ``nbf``."""
    patient_claim: str = "patient"
    """The claim holding a patient-scoped token's patient, taken as the DICOM PatientID."""
    allow_anonymous: bool = False
    """Serve without tokens on a non-loopback address (no issuer configured)."""
    introspection_url: str = ""
    """RFC 7662 token introspection endpoint, for opaque (non-JWT) tokens."""
    introspection_client_id: str = ""
    introspection_client_secret: str = ""
    audit_log: str = ""
    """A file the audit trail (logger ``gateway.audit``) is appended to; empty: the gateway's log."""
    smart_capabilities: tuple[str, ...] = _SMART_CAPABILITIES
    """What ``/fhir/.well-known/smart-configuration`` announces the authorization server supports."""
    http_timeout: float = 5.0
    """Seconds for each call to the issuer (discovery, JWKS, introspection)."""
    key_refetch_interval: float = 30.0
    """Least seconds between two JWKS fetches for an unknown ``kid`` (a flood of made-up kids)."""

    @property
    def enabled(self) -> bool:
        """Whether requests need a bearer token."""
        return bool(self.issuers or self.introspection_url)

    def __post_init__(self) -> None:
        for issuer in self.issuers:
            check_secure_url("auth.issuers", issuer)
        if self.issuers and not self.audience:
            raise ConfigError(
                "auth.audience is required with an issuer (--auth-audience): without it, tokens the issuer made "
                "for any other service would be accepted"
            )
        bad = [a for a in self.algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if bad or not self.algorithms:
            raise ConfigError(
                f"auth.algorithms: {bad or 'empty'}: only {', '.join(ASYMMETRIC_ALGORITHMS)} are accepted "
                "(never 'none'; HMAC would let anyone holding the public key sign tokens)"
            )
        if not 0 <= self.leeway <= 300:
            raise ConfigError(f"auth.leeway: {self.leeway} is not between 0 and 300 seconds")
        if not self.patient_claim:
            raise ConfigError("auth.patient_claim must not be empty")
        if self.introspection_url:
            check_secure_url("auth.introspection_url", self.introspection_url)
            if not self.introspection_client_id:
                raise ConfigError("auth.introspection_client_id is required with auth.introspection_url")
        if not 0 < self.http_timeout <= 60 or not 0 <= self.key_refetch_interval <= 3600:
            raise ConfigError("0 < auth.http_timeout <= 60 and 0 <= auth.key_refetch_interval <= 3600 seconds")


@dataclass(frozen=True)
class Capabilities:
    """What an upstream's C-FIND SCP does correctly.

    Every flag that is ``False`` makes the gateway emulate the feature (PS3.4 C.3.4, C.4.1.2.1.4):
    the answer is the same, it only takes more C-FINDs. ``None`` means "not known yet": the
    gateway treats it as ``False`` and, with ``profile = "auto"``, probes the PACS to find out.
    """

    relational: bool | None = None
    """SERIES and IMAGE level queries without the parent UIDs (relational queries)."""
    trusted_aggregates: bool | None = None
    """ModalitiesInStudy, SOPClassesInStudy and the Number of ... Related ... counts are computed by
    the PACS at query time (PS3.4 C.3.4), so the gateway passes them through and lets the PACS
    match on them. Never probed (a PACS that answers them may answer stale values, requirement
    G5): only a profile or the configuration sets it. Otherwise they are derived from the series
    and instances the PACS holds now."""
    list_matching: bool | None = None
    """Backslash-separated value lists on non-UID attributes (``Modality=SR\\KO``)."""
    case_insensitive_pn: bool | None = None
    """PN matching ignores case, as the gateway promises to its clients."""
    fuzzy_matching: bool | None = None
    """Fuzzy semantic matching of person names (negotiated with extended negotiation)."""
    uid_list_matching: bool | None = None
    """UID lists (``StudyInstanceUID=1.2\\1.3``, PS3.4 C.2.2.2.2); pynetdicom's qrscp fails them (0xC320)."""
    instances_by_study: bool | None = None
    """An IMAGE C-FIND with the StudyInstanceUID alone (SeriesInstanceUID universal) answers every
    instance of the study with its SeriesInstanceUID and Modality. Not required of a hierarchical
    PACS (PS3.4 C.4.1.2.1 wants the series UID too), but dcmqrscp and pynetdicom's qrscp do it:
    one such C-FIND then counts a study's instances by series, instead of one C-FIND per series."""

    def merged(self, overrides: Capabilities) -> Capabilities:
        """Return these capabilities with every non-``None`` value of `overrides` applied."""
        changes = {f.name: getattr(overrides, f.name) for f in fields(self) if getattr(overrides, f.name) is not None}
        return replace(self, **changes)

    @property
    def complete(self) -> bool:
        """True when every flag is known (nothing is left to probe)."""
        unprobed = ("fuzzy_matching", "trusted_aggregates")
        return all(getattr(self, f.name) is not None for f in fields(self) if f.name not in unprobed)


PROFILES: dict[str, Capabilities] = {
    # Measured: Orthanc 1.10 does list matching, relational queries, computed attributes (from its
    # index at query time, so they are trusted) and case-insensitive person names; it has no fuzzy
    # semantic matching over DIMSE.
    "orthanc": Capabilities(True, True, True, True, False, True),
    # Measured: dcmqrscp and pynetdicom's qrscp are hierarchical only, ignore
    # ModalitiesInStudy and return no counts; dcmqrscp matches names case-sensitively;
    # qrscp answers a UID list with 0xC320 (it takes the list for a single value).
    # Both answer an IMAGE C-FIND by study alone, with each instance's series and Modality.
    "dcmqrscp": Capabilities(False, False, False, False, False, True, True),
    "qrscp": Capabilities(False, False, False, False, False, False, True),
    # Assume nothing: always correct, the most C-FINDs.
    "legacy": Capabilities(False, False, False, False, False, False),
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
    tls: bool = False
    """DICOM TLS (PS3.15 B.9, TLS 1.2 or later) on every association to this PACS: query, retrieve, store."""
    tls_ca: str = ""
    """PEM file of the CAs the PACS certificate must chain to; empty: the system's trust store."""
    tls_cert: str = ""
    """PEM certificate the gateway presents when the PACS asks for one (mutual TLS), with `tls_key`."""
    tls_key: str = ""
    """PEM private key (unencrypted) of `tls_cert`."""
    tls_server_name: str = ""
    """The name the PACS certificate must carry (DNS name or IP address); empty: `host`."""
    move_source_hosts: tuple[str, ...] = ()
    """Addresses (host names, IPs or CIDR networks; ``*``: any) a C-MOVE's instances may come from
    besides ``host``, for a PACS that sends from another address than it listens on."""
    max_waiting: int = 0
    """Requests that may wait for an association of one of this upstream's pools; beyond it, 503 at
    once. 0: eight per association of the pool (``max_associations``, ``max_store_associations``)."""
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
        if self.tls_server_name and not self.tls:
            raise ConfigError(f"{prefix}.tls_server_name is set but {prefix}.tls is not true")
        if self.tls_server_name and not _SERVER_NAME.match(self.tls_server_name):
            raise ConfigError(f"{prefix}.tls_server_name: {self.tls_server_name!r} is not a DNS name or IP address")
        tls_paths = {"tls_ca": self.tls_ca, "tls_cert": self.tls_cert, "tls_key": self.tls_key}
        _check_tls(prefix, "tls", self.tls, tls_paths, pair=("tls_cert", "tls_key"))
        for source in self.move_source_hosts:
            if not _SOURCE_HOST.match(source):
                raise ConfigError(f"{prefix}.move_source_hosts: {source!r} is not a host name, an IP or a network")
        if not 0 <= self.max_waiting <= 10_000:
            raise ConfigError(f"{prefix}.max_waiting: {self.max_waiting} is not between 0 and 10000")
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
class FhirPublishSettings:
    """Where ImagingStudy resources are published after STOW-RS (the ``[fhir]`` table's ``publish_*`` keys).

    The server is authenticated with a static ``bearer_token``, or with an OAuth2 client-credentials
    grant (RFC 6749 §4.4: ``token_url``, ``client_id``, ``client_secret``), or not at all.
    """

    publish_url: str
    """The FHIR server's base URL (``[base]``), without a trailing slash."""
    publish_version: FhirVersion = "R4"
    """The FHIR version the server runs; R4 (4.0.1) is what most deployed servers run."""
    bearer_token: str = field(default="", repr=False)
    token_url: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    token_scope: str = ""
    """The ``scope`` of the token request, e.g. ``system/ImagingStudy.write system/Endpoint.write``."""
    token_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    """How the client authenticates to ``token_url`` (RFC 6749 §2.3.1): HTTP Basic, or in the form body."""
    queue_dir: str = ""
    """Where the publication queue lives, one file per study; empty: :func:`default_publish_queue_dir`."""
    queue_max: int = 10000
    """Studies the queue holds at most; a new study beyond that is refused (logged and counted)."""
    publish_timeout: float = 30.0
    """Seconds one HTTP request to the FHIR server (or its token endpoint) may take."""
    publish_attempts: int = 30
    """Attempts per study before a transient failure (5xx, 429, timeout, refused) is given up."""
    publish_backoff: float = 1.0
    """Seconds before the first retry; doubled at each further one, with jitter."""
    publish_backoff_max: float = 600.0
    """The longest wait between two attempts, unless the server's ``Retry-After`` asks for more."""
    publish_concurrency: int = 2
    """Studies published at once."""
    publish_delay: float = 1.0
    """Seconds a newly queued study waits, so that the STOW-RS requests of one upload coalesce."""

    def __post_init__(self) -> None:
        if not _HTTP_URL.match(self.publish_url) or self.publish_url.endswith("/"):
            raise ConfigError(f"fhir.publish_url: {self.publish_url!r} is not an http(s) URL without a trailing '/'")
        if self.publish_version not in ("R4", "R5"):
            raise ConfigError(f"fhir.publish_version: {self.publish_version!r} is not 'R4' or 'R5'")
        oauth = {"token_url": self.token_url, "client_id": self.client_id, "client_secret": self.client_secret}
        given = [key for key, value in oauth.items() if value]
        if self.bearer_token and given:
            raise ConfigError(f"fhir.bearer_token and fhir.{given[0]}: give a bearer token or client credentials")
        if given and len(given) < len(oauth):
            missing = [key for key in oauth if key not in given]
            raise ConfigError(f"fhir.{missing[0]}: OAuth2 client credentials need token_url, client_id, client_secret")
        if self.token_url and not _HTTP_URL.match(self.token_url):
            raise ConfigError(f"fhir.token_url: {self.token_url!r} is not an http(s) URL")
        if self.token_auth_method not in ("client_secret_basic", "client_secret_post"):
            raise ConfigError(
                f"fhir.token_auth_method: {self.token_auth_method!r} is not client_secret_basic or client_secret_post"
            )
        if not 1 <= self.queue_max <= 10_000_000:
            raise ConfigError(f"fhir.queue_max: {self.queue_max} is not between 1 and 10000000")
        if not 0 < self.publish_timeout <= 3600:
            raise ConfigError(f"fhir.publish_timeout: {self.publish_timeout} is not between 0 and 3600 seconds")
        if not 1 <= self.publish_attempts <= 1000:
            raise ConfigError(f"fhir.publish_attempts: {self.publish_attempts} is not between 1 and 1000")
        if not 0 < self.publish_backoff <= self.publish_backoff_max <= 86400:
            raise ConfigError(
                f"fhir.publish_backoff ({self.publish_backoff}) and publish_backoff_max ({self.publish_backoff_max}):"
                " 0 < publish_backoff <= publish_backoff_max <= 86400 seconds"
            )
        if not 1 <= self.publish_concurrency <= 64:
            raise ConfigError(f"fhir.publish_concurrency: {self.publish_concurrency} is not between 1 and 64")
        if not 0 <= self.publish_delay <= 3600:
            raise ConfigError(f"fhir.publish_delay: {self.publish_delay} is not between 0 and 3600 seconds")

    @property
    def resolved_queue_dir(self) -> Path:
        """``queue_dir``, or the default one when it is empty."""
        return Path(self.queue_dir).expanduser() if self.queue_dir else default_publish_queue_dir()


def default_publish_queue_dir() -> Path:
    """``$XDG_STATE_HOME/dicomweb-gateway/fhir-publish`` (``~/.local/state/...``): state that outlives a restart.

    Not under ``cache_dir``, which is a temporary directory by default and whose content may be evicted.
    """
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "dicomweb-gateway" / "fhir-publish"


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
    log_format: str = "text"
    """``text`` (one readable line per record) or ``json`` (one JSON object per line, with the request id)."""
    metrics: bool = True
    """Serve ``GET /metrics`` (Prometheus) and count requests for it."""
    cache_dir: str = ""
    """Where retrieved instances are cached; empty: a temporary directory removed at shutdown."""
    cache_max_bytes: int = 2 * 1024**3
    """Size the instance cache is kept under (instances being streamed are never evicted)."""
    cache_ttl: float = 300.0
    """Seconds a cached series is served without asking the PACS again (metadata, frames, rendered)."""
    store_tls: bool = False
    """DICOM TLS on the C-MOVE storage SCP: PACS connect to ``store_port`` over TLS 1.2 or later."""
    store_tls_cert: str = ""
    """PEM certificate the storage SCP presents (required with `store_tls`)."""
    store_tls_key: str = ""
    """PEM private key (unencrypted) of `store_tls_cert`."""
    store_tls_ca: str = ""
    """PEM file of CAs: when set, every PACS must present a client certificate signed by one of them."""
    fhir_publish: FhirPublishSettings | None = None
    """Publishing ImagingStudy resources to a FHIR server; ``None``: not configured."""
    cors_max_age: int = 600
    """Seconds a browser may cache a CORS preflight answer."""
    cors_allow_credentials: bool = False
    """Let browsers send cookies (a session proxy in front); never with ``*`` in cors_origins."""
    resource_policy: str = "same-origin"
    """Cross-Origin-Resource-Policy of WADO-RS answers (same-origin, same-site or cross-origin)."""
    auth: AuthSettings = field(default_factory=AuthSettings)
    max_frames_per_request: int = 1000
    """Frames one frames request may list, pictures one rendered answer may have (400 above)."""
    max_rendered_size: int = 4096
    """Largest viewport width or height of a rendered or thumbnail picture, in pixels (400 above)."""
    max_decoded_pixels: int = 256 * 1024 * 1024
    """Pixel samples (rows x columns x samples per pixel, over all frames) one request may decode (400 above)."""
    http_header_timeout: float = 10.0
    """Seconds a request line and its headers may take to arrive (408, or the connection closed if none came)."""
    http_keep_alive_timeout: int = 5
    """Seconds an idle keep-alive connection is kept open."""
    http_max_request_line: int = 8192
    """Longest request target, in bytes (414 above)."""
    http_max_header_bytes: int = 65536
    """Longest request head: request line and header fields, in bytes (431 above)."""
    http_body_timeout: float = 30.0
    """Longest wait for the next piece of a request body being read (408); how long an unread one is drained."""
    http_body_min_rate: int = 1024
    """Bytes per second a request body must average while the gateway waits for it (408 below); 0: none."""
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
        store_tls_paths = {
            "store_tls_cert": self.store_tls_cert,
            "store_tls_key": self.store_tls_key,
            "store_tls_ca": self.store_tls_ca,
        }
        _check_tls("gateway", "store_tls", self.store_tls, store_tls_paths, pair=("store_tls_cert", "store_tls_key"))
        if self.store_tls and not self.store_tls_cert:
            raise ConfigError("gateway.store_tls needs gateway.store_tls_cert and gateway.store_tls_key")
        if self.fhir_publish is not None and not self.public_url:
            # The published Endpoints tell FHIR clients where the images are: a Host header cannot.
            raise ConfigError("fhir.publish_url needs gateway.public_url (the DICOMweb address FHIR clients follow)")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"gateway.log_format: {self.log_format!r} is not 'text' or 'json'")
        if not isinstance(self.metrics, bool):
            raise ConfigError(f"gateway.metrics: {self.metrics!r} is not true or false")
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ConfigError("gateway.cors_allow_credentials cannot be combined with '*' in gateway.cors_origins")
        if not 0 <= self.cors_max_age <= 86400:
            raise ConfigError(f"gateway.cors_max_age: {self.cors_max_age} is not between 0 and 86400 seconds")
        if self.resource_policy not in ("same-origin", "same-site", "cross-origin"):
            raise ConfigError(
                f"gateway.resource_policy: {self.resource_policy!r} is not same-origin|same-site|cross-origin"
            )
        if not self.auth.enabled and not self.auth.allow_anonymous and not is_loopback(self.host):
            raise ConfigError(
                f"gateway.host {self.host!r} is not a loopback address and no token issuer is configured: anyone "
                "reaching the port could read and store every patient's images. Configure an issuer "
                "(--auth-issuer URL --auth-audience AUD, or [auth] issuers and audience), or serve anonymously "
                "on purpose (--allow-anonymous, or [auth] allow_anonymous = true)"
            )
        for name in ("http_header_timeout", "http_keep_alive_timeout", "http_body_timeout"):
            if not 0 < getattr(self, name) <= 3600:
                raise ConfigError(f"gateway.{name}: {getattr(self, name)} is not between 0 and 3600 seconds")
        if not 256 <= self.http_max_request_line <= self.http_max_header_bytes <= 1024 * 1024:
            raise ConfigError("gateway: 256 <= http_max_request_line <= http_max_header_bytes <= 1048576")
        if self.http_body_min_rate < 0:
            raise ConfigError(f"gateway.http_body_min_rate: {self.http_body_min_rate} must not be negative")
        if self.max_frames_per_request < 1 or self.max_rendered_size < 1 or self.max_decoded_pixels < 1:
            raise ConfigError("gateway: max_frames_per_request, max_rendered_size, max_decoded_pixels must be positive")

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
    if "move_source_hosts" in values:
        values["move_source_hosts"] = tuple(values["move_source_hosts"])
    try:
        return UpstreamSettings(name=name, capabilities=Capabilities(**capability_table), **values)
    except TypeError as exc:
        raise ConfigError(f"upstreams.{name}: {exc}") from exc


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number"}


def _fhir_publish_from_table(table: Mapping[str, Any], url_flag: str | None) -> FhirPublishSettings | None:
    """The ``[fhir]`` table's publishing keys (and ``--fhir-publish-url``); ``None`` without a publish_url."""
    known = {f.name for f in fields(FhirPublishSettings)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"fhir: unknown keys {sorted(unknown)}")
    values = {key: value for key, value in table.items() if key in known}
    defaults = {f.name: f.default for f in fields(FhirPublishSettings)}
    for key, value in values.items():
        kind = str if key == "publish_url" else type(defaults[key])
        accepted = (int, float) if kind is float else kind
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ConfigError(f"fhir.{key}: {value!r} is not {_KIND_NAMES[kind]}")
    if url_flag is not None:
        values["publish_url"] = url_flag
    if not values.get("publish_url"):
        if values:
            raise ConfigError(f"fhir: {sorted(values)[0]} is set but publish_url is not")
        return None
    try:
        return FhirPublishSettings(**values)
    except TypeError as exc:
        raise ConfigError(f"fhir: {exc}") from exc


def _key_type(path: tuple[str, ...]) -> object:
    """The type of the configuration key at `path`, for values read from the environment."""
    owner: object = None
    if path[0] == "gateway" and len(path) == 2:
        owner = Settings
    elif path[0] == "upstreams" and len(path) == 3:
        owner = UpstreamSettings
    elif path[0] == "upstreams" and len(path) == 4 and path[2] == "capabilities":
        owner = Capabilities
    elif path[0] == "fhir" and len(path) == 2:
        owner = FhirPublishSettings
    elif len(path) == 2:  # a table of its own, held by a Settings field of the same name
        owner = typing.get_type_hints(Settings).get(path[0])
    if not dataclasses.is_dataclass(owner):
        return None
    return typing.get_type_hints(owner).get(path[-1])


def _laid_over(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with every value of `top` put in its place, tables merged key by key."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        merged[key] = _laid_over(below, value) if isinstance(value, dict) and isinstance(below, dict) else value
    return merged


def _auth_from_table(table: Mapping[str, Any], overrides: dict[str, Any]) -> AuthSettings:
    """The ``[auth]`` table with the ``--auth-issuer``, ``--auth-audience`` and ``--allow-anonymous`` flags applied."""
    unknown = set(table) - {f.name for f in fields(AuthSettings)}
    if unknown:
        raise ConfigError(f"auth: unknown keys {sorted(unknown)}")
    values = dict(table)
    for key in ("issuers", "algorithms", "smart_capabilities"):
        if key in values:
            if not isinstance(values[key], list) or not all(isinstance(v, str) for v in values[key]):
                raise ConfigError(f"auth.{key}: expected a list of strings")
            values[key] = tuple(values[key])
    issuers = overrides.pop("auth_issuers", None)
    audience = overrides.pop("auth_audience", None)
    allow_anonymous = overrides.pop("allow_anonymous", None)
    if issuers:
        values["issuers"] = tuple(issuers)
    if audience is not None:
        values["audience"] = audience
    if allow_anonymous:
        values["allow_anonymous"] = True
    try:
        return AuthSettings(**values)
    except TypeError as exc:
        raise ConfigError(f"auth: {exc}") from exc


def load_settings(
    config_path: Path | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Build :class:`Settings` from an optional TOML file, environment variables and flag overrides.

    Flags win over the environment, which wins over the file, which wins over the defaults.

    Parameters
    ----------
    config_path : pathlib.Path, optional
        A TOML file with a ``[gateway]`` table and one ``[upstreams.NAME]`` table per PACS.
    environ : mapping, optional
        Environment variables; the ``GATEWAY_*`` ones are read (see :mod:`gateway.environment`).
    **overrides
        Values from the command line; ``None`` means "not given". ``upstream`` (a string
        ``[NAME=]AET@HOST:PORT``) replaces or adds the default upstream, and ``retrieve``
        applies to it. ``fhir_publish_url`` sets or replaces ``[fhir] publish_url``.
    """
    environ = environ or {}
    document: dict[str, Any] = {}
    if config_path is not None:
        try:
            document = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc}") from exc
    try:
        document = _laid_over(document, environment_document(environ, _key_type))
    except VariableError as exc:
        raise ConfigError(str(exc)) from exc
    auth = _auth_from_table(dict(document.get("auth", {})), overrides)
    upstream_flag = overrides.pop("upstream", None) or environ.get(UPSTREAM_VARIABLE) or None
    if upstream_flag is not None:
        # The address completes (or creates) that upstream's table, so its other keys may come from anywhere.
        address = parse_upstream_address(upstream_flag)
        tables = document.setdefault("upstreams", {})
        tables[address.name] = {
            **tables.get(address.name, {}),
            "ae_title": address.ae_title,
            "host": address.host,
            "port": address.port,
        }
    unknown = set(document) - {"gateway", "upstreams", "fhir", "auth"}
    if unknown:
        raise ConfigError(f"{config_path or 'environment'}: unknown tables {sorted(unknown)}")
    gateway_table: dict[str, Any] = dict(document.get("gateway", {}))
    upstreams = [_upstream_from_table(name, table) for name, table in document.get("upstreams", {}).items()]

    retrieve_flag = overrides.pop("retrieve", None)
    fhir_publish = _fhir_publish_from_table(dict(document.get("fhir", {})), overrides.pop("fhir_publish_url", None))
    if upstream_flag is not None:  # that upstream becomes the default one
        upstreams.sort(key=lambda upstream: upstream.name != address.name)
    if retrieve_flag is not None and upstreams:
        upstreams[0] = replace(upstreams[0], retrieve=retrieve_flag)

    known = {f.name for f in fields(Settings)} - {"upstreams", "fhir_publish", "auth"}
    unknown = set(gateway_table) - known
    if unknown:
        raise ConfigError(f"gateway: unknown keys {sorted(unknown)}")
    values = {**gateway_table, **{k: v for k, v in overrides.items() if v is not None}}
    if "cors_origins" in values:
        values["cors_origins"] = tuple(values["cors_origins"])
    try:
        return Settings(upstreams=tuple(upstreams), fhir_publish=fhir_publish, auth=auth, **values)
    except TypeError as exc:
        raise ConfigError(f"gateway: {exc}") from exc
