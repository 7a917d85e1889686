"""The uvicorn configuration the gateway is served with: one function, for the CLI and the tests alike."""

from __future__ import annotations

from typing import Any

import uvicorn

from gateway.serving.protocol import HttpLimits, guarded_protocol
from gateway.settings import Settings

__all__ = ["uvicorn_config"]


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The :class:`uvicorn.Config` serving `app` as `settings` say.

    Parameters
    ----------
    app
        The ASGI application (:func:`gateway.app.create_app`).
    settings : Settings
        Host, port, log level and the HTTP bounds (``http_*``).
    **overrides
        Other :class:`uvicorn.Config` arguments, or replacements (the tests pick a port and a log level).
    """
    limits = HttpLimits(
        header_timeout=settings.http_header_timeout,
        max_request_line=settings.http_max_request_line,
        max_header_bytes=settings.http_max_header_bytes,
        body_timeout=settings.http_body_timeout,
    )
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "lifespan": "on",
        "timeout_graceful_shutdown": 10,
        "log_config": None,
        "http": guarded_protocol(limits),
        "timeout_keep_alive": settings.http_keep_alive_timeout,
    }
    return uvicorn.Config(app, **(options | overrides))
