"""``dicomweb-gateway``: serve the gateway, or run the self-contained demo.

dicomweb-gateway serve --host 127.0.0.1 --port 8080 --upstream AET@HOST:PORT --ae-title GATEWAY
dicomweb-gateway demo
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import uvicorn

from gateway.app import create_app
from gateway.serving.config import uvicorn_config
from gateway.settings import ConfigError, Settings, load_settings

__all__ = ["main"]

logger = logging.getLogger("gateway")


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    # pynetdicom logs every association at INFO; keep that for debugging sessions.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def _run(settings: Settings) -> None:
    uvicorn.Server(uvicorn_config(create_app(settings), settings)).run()


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


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(
        args.config,
        upstream=args.upstream,
        retrieve=args.retrieve,
        host=args.host,
        port=args.port,
        ae_title=args.ae_title,
        store_port=args.store_port,
        cache_dir=args.cache_dir,
        public_url=args.public_url,
        max_upload_bytes=args.max_upload_bytes,
        log_level=args.log_level,
    )
    _configure_logging(settings.log_level)
    _run(settings)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo.pacs import QrscpPacs
    from gateway.demo.samples import generate_sample_studies, iter_sample_datasets

    _configure_logging(args.log_level or "info")
    with tempfile.TemporaryDirectory(prefix="dicomweb-gateway-demo-") as workdir:
        studies = generate_sample_studies(args.studies)
        with QrscpPacs(Path(workdir)) as pacs:
            stored = pacs.store(iter_sample_datasets(studies))
            settings = load_settings(
                None,
                upstream=f"demo={pacs.upstream}",
                host=args.host,
                port=args.port,
                ae_title=args.ae_title,
                log_level=args.log_level,
            )
            root = f"http://{settings.host}:{settings.port}{settings.base_path}"
            study = studies[0]
            print(
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
                "Press Ctrl-C to stop.\n",
                flush=True,
            )
            _run(settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dicomweb-gateway`` command."""
    parser = argparse.ArgumentParser(prog="dicomweb-gateway", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve DICOMweb in front of a PACS")
    serve.add_argument("--upstream", help="the default PACS as [NAME=]AET@HOST:PORT")
    _add_serve_flags(serve)
    demo = commands.add_parser("demo", help="start a demo PACS filled with sample studies, and the gateway")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--ae-title", dest="ae_title", default="GATEWAY")
    demo.add_argument("--studies", type=int, default=48, help="how many sample studies (default 48)")
    demo.add_argument("--log-level", dest="log_level", default="info")
    args = parser.parse_args(argv)
    try:
        return _serve(args) if args.command == "serve" else _demo(args)
    except ConfigError as exc:
        print(f"dicomweb-gateway: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
