"""What the benchmarks share: the gateway's CLI started in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from pydicom.dataset import Dataset

from gateway.demo.pacs import LocalPacs, free_port
from gateway.dimse.client import UpstreamClient

__all__ = ["OBSERVABILITY", "CountingClient", "start_gateway", "upstream_config"]

OBSERVABILITY: dict[str, tuple[list[str], dict[str, str]]] = {
    # (flags, environment) of the two gateways `--observability` compares, at the same log level
    # (info: uvicorn logs every request) so that only /metrics and the log format differ.
    "on": (["--log-level", "info", "--log-format", "json"], {"GATEWAY_METRICS": "true"}),
    "off": (["--log-level", "info", "--log-format", "text"], {"GATEWAY_METRICS": "false"}),
}
"""Metrics and JSON logs on, and both off: the overhead comparison of bench/qido.py and bench/wado.py."""


def start_gateway(
    arguments: list[str], log: Path, environ: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``dicomweb-gateway serve --host 127.0.0.1 --port P *arguments``, once it answers /health.

    `environ` adds variables to the process's environment (``GATEWAY_*`` settings).

    Returns the process and its DICOMweb root URL.
    """
    port = free_port()
    command = [str(Path(sys.executable).with_name("dicomweb-gateway")), "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), *arguments]
    env = os.environ | (environ or {})
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return process, f"http://127.0.0.1:{port}/dicom-web"
        except OSError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"the gateway did not start (see {log})")


def upstream_config(pacs: LocalPacs, path: Path, profile: str, **capabilities: bool) -> Path:
    """Write a TOML configuration at `path`: `pacs` as the only upstream, of `profile`, with
    `capabilities` under ``[upstreams.pacs.capabilities]``. Returns `path`."""
    text = f'[gateway]\nlog_level = "warning"\n\n[upstreams.pacs]\nae_title = "{pacs.ae_title}"\n'
    text += f'host = "{pacs.host}"\nport = {pacs.port}\nprofile = "{profile}"\n'
    if capabilities:
        text += "\n[upstreams.pacs.capabilities]\n"
        text += "".join(f"{name} = {str(value).lower()}\n" for name, value in capabilities.items())
    path.write_text(text)
    return path


class CountingClient(UpstreamClient):
    """An upstream client that counts its C-FINDs by QueryRetrieveLevel."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.finds: Counter[str] = Counter()

    async def find(self, identifier: Dataset) -> AsyncIterator[Dataset]:
        self.finds[identifier.QueryRetrieveLevel] += 1
        async for dataset in super().find(identifier):
            yield dataset
