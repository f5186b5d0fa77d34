"""A tiny threaded HTTP server on loopback serving fixed bytes, for tests and local trials.

with MediaServer({"/cat.png": (png_bytes, "image/png")}) as server:
    url = server.url("/cat.png")
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


class MediaServer:
    def __init__(self, files: dict[str, tuple[bytes, str]], host: str = "127.0.0.1"):
        self.files = dict(files)
        self.hits: list[str] = []
        handler = self._handler()
        self._server = ThreadingHTTPServer((host, 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.hits.append(self.path)
                entry = server.files.get(self.path)
                if entry is None:
                    self.send_error(404)
                    return
                data, mime = entry
                self.send_response(200)
                self.send_header("Content-Type", mime)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return

        return Handler

    def __enter__(self) -> MediaServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
