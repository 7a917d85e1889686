"""``dicomweb-gateway``: serve the gateway, or run the self-contained demo.

dicomweb-gateway serve --host 127.0.0.1 --port 8080 --upstream AET@HOST:PORT --ae-title GATEWAY
dicomweb-gateway demo
dicomweb-gateway publish --config gateway.toml STUDY_UID... | --since DATE [--until DATE]
dicomweb-gateway health    (exit status 0 when the gateway configured here answers /health)

Exit status: 0 after a clean stop, 1 for a failed health check or start-up, 2 for a configuration
error, 3 when the HTTP port cannot be bound (in use, or not allowed).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import date
from pathlib import Path

import anyio
import uvicorn

from gateway.app import create_app
from gateway.environment import CONFIG_VARIABLE, UPSTREAM_VARIABLE
from gateway.fhir.publish.command import parse_date, publish_studies
from gateway.logs import configure_logging
from gateway.serving.config import uvicorn_config
from gateway.settings import ConfigError, Settings, load_settings

__all__ = ["main"]

logger = logging.getLogger("gateway")


_ANY_UPSTREAM = "HEALTH@127.0.0.1:104"
EXIT_CONFIG = 2
EXIT_CANNOT_LISTEN = 3


class CannotListen(OSError):
    """The HTTP port cannot be bound; the message is the one line to show."""


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise CannotListen(
            f"cannot listen on {host}:{port}: {why} (choose another with --port, GATEWAY_PORT or [gateway] port)"
        ) from exc
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, telling `on_started` once the port is bound and the lifespan has started."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._on_started()


def _run(settings: Settings, banner: str = "") -> int:
    sock = _listen(settings.host, settings.port)  # before anything starts: a busy port is one line, no traceback
    config = uvicorn_config(create_app(settings), settings)
    root = f"http://{settings.host}:{settings.port}{settings.base_path}"
    text = banner or f"dicomweb-gateway serving DICOMweb at {root} (/, /health, /metrics, /openapi.json)"
    server = _Server(config, lambda: print(text, flush=True))
    with sock:
        server.run(sockets=[sock])
    return 0 if server.started else 1


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file (flags override it)")
    parser.add_argument("--host", help="address to serve HTTP on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default 8080)")
    parser.add_argument("--ae-title", dest="ae_title", help="the gateway's own AE title (default GATEWAY)")
    parser.add_argument("--store-port", dest="store_port", type=int, help="port of the storage SCP for C-MOVE")
    parser.add_argument("--retrieve", choices=("get", "move"), help="how the default upstream is retrieved from")
    parser.add_argument(
        "--cache-dir", dest="cache_dir", help="where retrieved instances are cached (default: temporary)"
    )
    parser.add_argument("--public-url", dest="public_url", help="scheme://host[:port] clients reach the gateway at")
    parser.add_argument(
        "--max-upload-bytes", dest="max_upload_bytes", type=int, help="largest STOW-RS body accepted (default 4 GiB)"
    )
    parser.add_argument("--log-level", dest="log_level", choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument(
        "--fhir-publish-url", dest="fhir_publish_url", help="FHIR server to publish ImagingStudy resources to"
    )
    parser.add_argument(
        "--log-format", dest="log_format", choices=("text", "json"), help="text lines, or one JSON object per line"
    )
    parser.add_argument(
        "--auth-issuer",
        dest="auth_issuers",
        action="append",
        metavar="URL",
        help="OpenID Connect issuer whose bearer tokens are accepted (repeatable)",
    )
    parser.add_argument("--auth-audience", dest="auth_audience", metavar="AUD", help="the aud tokens must name")
    parser.add_argument(
        "--allow-anonymous",
        dest="allow_anonymous",
        action="store_true",
        default=None,
        help="serve without tokens on a non-loopback address (no issuer configured)",
    )


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the flags, the environment and the file (``--config`` or ``GATEWAY_CONFIG``)."""
    config = args.config or (Path(os.environ[CONFIG_VARIABLE]) if os.environ.get(CONFIG_VARIABLE) else None)
    return load_settings(
        config,
        environ=os.environ,
        upstream=getattr(args, "upstream", None),
        retrieve=args.retrieve,
        host=args.host,
        port=args.port,
        ae_title=args.ae_title,
        store_port=args.store_port,
        cache_dir=args.cache_dir,
        public_url=args.public_url,
        max_upload_bytes=args.max_upload_bytes,
        log_level=args.log_level,
        auth_issuers=args.auth_issuers,
        auth_audience=args.auth_audience,
        allow_anonymous=args.allow_anonymous,
        fhir_publish_url=args.fhir_publish_url,
        log_format=args.log_format,
    )


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    return _run(settings)


def _health(args: argparse.Namespace) -> int:
    """GET /health of the gateway these settings describe (the container's HEALTHCHECK)."""
    # Only the host and port matter here: a configuration without an upstream (the demo's) is fine.
    args.upstream = os.environ.get(UPSTREAM_VARIABLE) or _ANY_UPSTREAM
    settings = _settings(args)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"dicomweb-gateway health: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    print(f"dicomweb-gateway health: {url}: {status}")
    return 0 if status == 200 else 1


def _date(text: str) -> date:
    try:
        return parse_date(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _publish(args: argparse.Namespace) -> int:
    # Imported here: it binds the FHIR resource builders, which only this command and serve need.
    from gateway.fhir.publish.wiring import make_study_publisher

    if bool(args.studies) == bool(args.since):
        print("dicomweb-gateway publish: give STUDY_UIDs or --since DATE, not both or neither", file=sys.stderr)
        return 2
    if args.until is not None and args.since is not None and args.until < args.since:
        print("dicomweb-gateway publish: --until is before --since", file=sys.stderr)
        return 2
    if not 1 <= args.attempts <= 100:
        print("dicomweb-gateway publish: --attempts is between 1 and 100", file=sys.stderr)
        return 2
    config = args.config or (Path(os.environ[CONFIG_VARIABLE]) if os.environ.get(CONFIG_VARIABLE) else None)
    settings = load_settings(
        config,
        environ=os.environ,
        upstream=args.upstream,
        public_url=args.public_url,
        fhir_publish_url=args.fhir_publish_url,
        log_level=args.log_level,
    )
    configure_logging(settings.log_level, settings.log_format)
    return anyio.run(
        lambda: publish_studies(
            settings,
            make_study_publisher,
            args.studies,
            upstream_name=args.pacs,
            since=args.since,
            until=args.until,
            attempts=args.attempts,
        )
    )


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo.pacs import QrscpPacs
    from gateway.demo.samples import generate_sample_studies, iter_sample_datasets

    configure_logging(args.log_level or "info")
    with tempfile.TemporaryDirectory(prefix="dicomweb-gateway-demo-") as workdir:
        studies = generate_sample_studies(args.studies)
        with QrscpPacs(Path(workdir)) as pacs:
            stored = pacs.store(iter_sample_datasets(studies))
            settings = load_settings(
                None,
                environ=os.environ,
                upstream=f"demo={pacs.upstream}",
                host=args.host,
                port=args.port,
                ae_title=args.ae_title,
                log_level=args.log_level,
                # Synthetic studies only: anonymous even on a non-loopback --host (a container's 0.0.0.0).
                allow_anonymous=True,
            )
            root = f"http://{settings.host}:{settings.port}{settings.base_path}"
            fhir = f"http://{settings.host}:{settings.port}/fhir"
            study = studies[0]
            banner = (
                f"\nDemo PACS (pynetdicom qrscp) at {pacs.upstream} holds {len(studies)} studies, {stored} instances.\n"
                f"DICOMweb gateway at {root} - try:\n"
                f"  curl '{root}/studies?limit=5'\n"
                f"  curl '{root}/studies?ModalitiesInStudy=CT,PT'\n"
                f"  curl '{root}/series?Modality=PT'\n"
                f"  curl '{root}/studies?PatientName=doe*&includefield=StudyDescription'\n"
                f"  curl '{root}/studies/{study.study_uid}/series'\n"
                f"  curl '{root}/studies/{study.study_uid}/instances'\n"
                f"  curl '{root}/studies/{study.study_uid}/series/{study.series[0].series_uid}/metadata'\n"
                f"  curl -o study.multipart '{root}/studies/{study.study_uid}'\n"
                f"  curl -o thumbnail.jpg '{root}/studies/{study.study_uid}/thumbnail'\n"
                f"  curl '{fhir}/ImagingStudy?modality=PT&_count=5'   (FHIR R5; R4 on fhirVersion=4.0)\n"
                f"  curl '{fhir}/ImagingStudy/{study.study_uid}'\n"
                f"or with dicomweb-client (installed with the demo) in {sys.executable}: search, then retrieve:\n"
                f"{_client_example(root, study.study_uid)}\n"
                "Press Ctrl-C to stop.\n"
            )
            return _run(settings, banner)


def _client_example(root: str, study_uid: str) -> str:
    """Two lines of Python that search the demo, then retrieve a study (a test runs them as printed)."""
    return (
        f'  from dicomweb_client import DICOMwebClient; client = DICOMwebClient("{root}")\n'
        f'  studies = client.search_for_studies(search_filters={{"PatientName": "doe*"}}); '
        f'instances = client.retrieve_study("{study_uid}")'
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dicomweb-gateway`` command."""
    parser = argparse.ArgumentParser(prog="dicomweb-gateway", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve DICOMweb in front of a PACS")
    serve.add_argument("--upstream", help="the default PACS as [NAME=]AET@HOST:PORT")
    _add_serve_flags(serve)
    demo = commands.add_parser("demo", help="start a demo PACS filled with sample studies, and the gateway")
    demo.add_argument("--host", help="address to serve HTTP on (default 127.0.0.1, or GATEWAY_HOST)")
    demo.add_argument("--port", type=int, help="HTTP port (default 8080, or GATEWAY_PORT)")
    demo.add_argument("--ae-title", dest="ae_title")
    demo.add_argument("--studies", type=int, default=48, help="how many sample studies (default 48)")
    demo.add_argument("--log-level", dest="log_level")
    publish = commands.add_parser(
        "publish", help="publish studies already in the PACS to the FHIR server (same settings as serve)"
    )
    publish.add_argument("studies", nargs="*", metavar="STUDY_UID", help="StudyInstanceUIDs to publish")
    publish.add_argument("--since", type=_date, help="publish the studies with a StudyDate from DATE (YYYY-MM-DD)")
    publish.add_argument("--until", type=_date, help="... up to DATE included (default: no end)")
    publish.add_argument("--pacs", help="the configured upstream the studies are in (default: the first)")
    publish.add_argument(
        "--attempts",
        type=int,
        default=3,
        metavar="N",
        help="attempts per study on transient failures (default 3)",
    )
    publish.add_argument("--config", type=Path, help="TOML configuration file (flags override it)")
    publish.add_argument("--upstream", help="the default PACS as [NAME=]AET@HOST:PORT")
    publish.add_argument("--public-url", dest="public_url", help="scheme://host[:port] clients reach the gateway at")
    publish.add_argument("--fhir-publish-url", dest="fhir_publish_url", help="the FHIR server")
    publish.add_argument("--log-level", dest="log_level", choices=("critical", "error", "warning", "info", "debug"))
    health = commands.add_parser("health", help="check /health of the gateway the same settings describe")
    _add_serve_flags(health)
    health.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for the answer (default 4)")
    args = parser.parse_args(argv)
    commands_by_name = {"serve": _serve, "demo": _demo, "health": _health, "publish": _publish}
    try:
        return commands_by_name[args.command](args)
    except ConfigError as exc:
        print(f"dicomweb-gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CannotListen as exc:
        print(f"dicomweb-gateway: {exc}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN


if __name__ == "__main__":
    sys.exit(main())
