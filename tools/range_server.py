"""A read-only HTTP server on 127.0.0.1 for tests and bench_remote: files with Range requests.

Python's ``http.server`` ignores ``Range`` (it sends whole files), so tests of remote
stores serve them through this one: ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` answer
206 with those bytes, a missing file 404, a folder 404 (no listings: like a bucket behind
a CDN, the store must open without listing). ``mode`` "ignore-range" answers every GET
with the whole file (200), "stall" accepts connections and never answers; ``delay``
seconds are slept before each answer (a network's latency, for benchmarks).
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeServer:
    """``with RangeServer(folder) as url:`` serves ``folder`` at ``url`` (no trailing /)."""

    def __init__(self, folder: Path, mode: str = "normal", delay: float = 0.0):
        self.folder = Path(folder).resolve()
        self.mode = mode
        self.delay = float(delay)
        self.requests = 0
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40-ms stalls

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                server.requests += 1
                if server.mode == "stall":
                    server._stop.wait(60)
                    return
                if server.delay:
                    server._stop.wait(server.delay)
                path = (server.folder / self.path.split("?")[0].lstrip("/")).resolve()
                if server.folder not in path.parents or not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = path.stat().st_size
                status, start, end = 200, 0, size
                match = _RANGE.match(self.headers.get("Range", ""))
                if match and server.mode != "ignore-range":
                    a, b = match.groups()
                    if a == "":
                        start = max(size - int(b), 0)
                    else:
                        start, end = int(a), (size if b == "" else min(int(b) + 1, size))
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.end_headers()
                if body:
                    with open(path, "rb") as fh:  # only the range: shards are megabytes
                        fh.seek(start)
                        self.wfile.write(fh.read(end - start))

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # a loader opens many connections at once
            def handle_error(self, request, client_address):  # noqa: ANN001
                """A client that hung up (a loader closing) is not worth a traceback."""

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
