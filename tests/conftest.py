"""Fixtures shared by every test: a live gateway served by uvicorn in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from gateway.app import create_app
from gateway.serving.config import uvicorn_config
from gateway.settings import Settings


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_gateway(settings: Settings, **app_options: Any) -> Iterator[str]:
    """Serve the gateway for `settings` with a real uvicorn; yields its DICOMweb root URL.

    `app_options` go to :func:`gateway.app.create_app` (e.g. ``publisher_factory``).
    """
    port = free_port()
    config = uvicorn_config(
        create_app(settings, **app_options), settings, host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}{settings.base_path}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "the gateway did not shut down"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
