"""Fixtures of the web tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from exporter.web.server import ExporterServer
from tests.web.serving import app


@pytest.fixture
def make_server() -> Iterator[Callable[..., ExporterServer]]:
    servers: list[ExporterServer] = []

    def make(web_config_file: str | None = None, **kwargs: Any) -> ExporterServer:
        server = ExporterServer(app, "127.0.0.1:0", web_config_file, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.shutdown()
