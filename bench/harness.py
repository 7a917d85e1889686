"""What the benchmarks share: the gateway's CLI started in a process of its own."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gateway.demo.pacs import free_port

__all__ = ["start_gateway"]


def start_gateway(arguments: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``dicomweb-gateway serve --host 127.0.0.1 --port P *arguments``, once it answers /health.

    Returns the process and its DICOMweb root URL.
    """
    port = free_port()
    command = [str(Path(sys.executable).with_name("dicomweb-gateway")), "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), *arguments]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return process, f"http://127.0.0.1:{port}/dicom-web"
        except OSError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"the gateway did not start (see {log})")
