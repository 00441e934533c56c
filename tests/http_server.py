"""A local HTTP file server for download tests: in-memory files on 127.0.0.1, Range support, a request log, and
transfers that can be cut short to exercise resuming. Nothing here touches the network beyond 127.0.0.1.

>>> with FileServer() as server:
...     server.files["a/b.bin"] = b"0123456789"
...     server.cut["a/b.bin"] = 4          # the next response for a/b.bin stops after 4 bytes of body
...     url = server.url_for("a/b.bin")    # http://127.0.0.1:<port>/a/b.bin
"""
import http.server
import socket
import threading

__all__ = ["FileServer"]


class FileServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 serving in-memory files (GET only).

    Attributes:
        files: URL path without the leading ``/`` -> bytes. A path not in it answers 404.
        cut: path -> n. The next response for that path announces its full length but sends only ``n`` bytes of
            body and then drops the connection (a broken transfer); the entry is consumed by that response.
        honour_range: when False, ``Range`` headers are ignored and every answer is ``200`` with the whole file.
        log: ``(path, Range header or None)`` for every request, in arrival order.
        url: ``http://127.0.0.1:<port>`` (the port is picked by the OS).
    """

    def __init__(self):
        self.files, self.cut, self.log = {}, {}, []
        self.honour_range = True
        self._lock = threading.Lock()  # handler threads touch ``log`` and ``cut`` concurrently
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def url_for(self, path):
        """The full URL of ``path`` (a key of :attr:`files`)."""
        return f"{self.url}/{path}"

    def start(self):
        self._thread.start()
        return self

    def close(self):
        """Stop serving and release the port (safe to call on a server that was never started)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _handler_class(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                rng = self.headers.get("Range")
                with server._lock:
                    server.log.append((path, rng))
                    data = server.files.get(path)
                    limit = server.cut.pop(path, None) if data is not None else None
                if data is None:
                    self.send_error(404)
                    return
                start = _range_start(rng) if rng and server.honour_range else None
                if start is not None and start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if start is not None:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                    start = 0
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if limit is None:
                    self.wfile.write(body)
                    return
                self.wfile.write(body[:limit])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the stream end early

        return Handler


def _range_start(header):
    """First byte of a ``bytes=<start>-`` header (the only form the downloaders under test send)."""
    unit, _, spec = header.partition("=")
    first, dash, last = spec.partition("-")
    if unit.strip() != "bytes" or not dash or last or not first.isdigit():
        raise ValueError(f"test server: unsupported Range header {header!r}; only 'bytes=<start>-' is served")
    return int(first)
