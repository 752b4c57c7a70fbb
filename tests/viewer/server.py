"""OHIF's built viewer and Orthanc's DICOMweb on one loopback origin, as a site deploys them.

One ``ThreadingHTTPServer`` on 127.0.0.1 (a thread of the test process):

- ``/app-config.js``: our configuration (``app_config``), not the package's demo one;
- ``/dicom-web/...``: a reverse proxy to Orthanc's HTTP port, bodies streamed in 64 KiB chunks
  (bounded memory whatever the study size), the headers that matter passed both ways
  (``Accept`` with its multipart ``type``/``transfer-syntax``, the response ``Content-Type`` with
  its ``boundary``), and the client's ``Host`` so Orthanc's BulkDataURIs point back here;
- anything else: a file of OHIF's ``dist/``, or ``index.html`` for a single-page-app route
  (``/viewer?StudyInstanceUIDs=...``) whose last path segment has no file extension.

The server records what it proxied (method, path without query, status) for failure messages;
DICOMweb paths carry UIDs only, never patient attributes.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import shutil
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

CHUNK = 64 * 1024
#: Request headers passed on to Orthanc (everything else, cookies included, stays here).
FORWARDED_REQUEST_HEADERS = ("accept", "accept-encoding", "range", "if-none-match", "if-modified-since")
#: Response headers never passed back: hop-by-hop (RFC 9110 7.6.1); the body is re-framed here.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade"})
CONTENT_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                 ".css": "text/css", ".json": "application/json", ".svg": "image/svg+xml",
                 ".woff2": "font/woff2", ".html": "text/html; charset=utf-8"}
#: Same-origin isolation, as OHIF's deployment docs ask: cornerstone3D then gets
#: SharedArrayBuffer for volumes. Every resource is same-origin, so require-corp blocks nothing.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin",
                     "Cross-Origin-Embedder-Policy": "require-corp"}


def app_config_js(data_source_name: str = "segnode-test-orthanc") -> str:
    """OHIF's ``window.config``: one DICOMweb source at this origin's ``/dicom-web``.

    Orthanc's DICOMweb plugin 1.7 answers single-part requests with 400 (``singlepart: false``)
    and ignores a comma-separated ``includefield`` (``qidoSupportsIncludeField: false``); see
    ../shared/stack-notes.md "Viewer".
    """
    configuration = {
        "friendlyName": "segnode test Orthanc",
        "name": "orthanc",
        "qidoSupportsIncludeField": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "supportsReject": False,
        "staticWado": False,
        "singlepart": False,
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
        "dicomUploadEnabled": False,
    }
    config: dict[str, Any] = {
        "name": "segnode viewer test",
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "investigationalUseDialog": {"option": "never"},
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumberOfWebWorkers": 2,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "showErrorDetails": "always",
        "defaultDataSourceName": data_source_name,
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": data_source_name,
            "configuration": configuration,
        }],
    }
    roots = ", ".join(f"{key}: window.location.origin + '/dicom-web'"
                      for key in ("qidoRoot", "wadoRoot", "wadoUriRoot"))
    body = json.dumps(config, indent=2)
    # The roots follow the page's origin (the server's port is chosen at start).
    return (
        "// segnode tests/viewer: OHIF against a private Orthanc through this server's /dicom-web.\n"
        f"window.config = {body};\n"
        f"Object.assign(window.config.dataSources[0].configuration, {{{roots}}});\n"
    )


@dataclass
class ProxyRecord:
    method: str
    path: str
    status: int


@dataclass
class ServerState:
    dist: Path
    upstream_port: int
    app_config: str
    records: list[ProxyRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.records.append(ProxyRecord(method, path, status))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; bodies have a length or are chunked
    server: ViewerHttpServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """Quiet: the proxy keeps its own records."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        path = urlsplit(self.path).path
        try:
            if path == "/dicom-web" or path.startswith("/dicom-web/"):
                self._proxy(head)
            elif path == "/app-config.js":
                self._send_bytes(self.server.state.app_config.encode(), "text/javascript", head)
            else:
                self._static(unquote(path), head)
        except (BrokenPipeError, ConnectionResetError):  # the browser gave up on this request
            self.close_connection = True

    # --- static files ---------------------------------------------------------------------------

    def _static(self, path: str, head: bool) -> None:
        dist = self.server.state.dist
        target = (dist / path.lstrip("/")).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(dist) or not target.is_file():
            if "." in path.rsplit("/", 1)[-1]:  # a missing asset, not an app route
                self._send_bytes(b"not found\n", "text/plain", head, status=404)
                return
            target = dist / "index.html"
        content_type = CONTENT_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
        size = target.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", content_type or "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "no-cache")
        self._isolation_headers()
        self.end_headers()
        if not head:
            with target.open("rb") as stream:
                shutil.copyfileobj(stream, self.wfile, CHUNK)

    def _send_bytes(self, body: bytes, content_type: str, head: bool, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self._isolation_headers()
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _isolation_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)

    # --- the DICOMweb proxy ---------------------------------------------------------------------

    def _proxy(self, head: bool) -> None:
        state = self.server.state
        headers = {name: value for name in FORWARDED_REQUEST_HEADERS
                   if (value := self.headers.get(name)) is not None}
        # Orthanc writes BulkDataURIs from Host: the browser's, so they point at this server.
        headers["Host"] = self.headers.get("Host") or f"127.0.0.1:{self.server.server_port}"
        upstream = http.client.HTTPConnection("127.0.0.1", state.upstream_port, timeout=120)
        try:
            upstream.request(self.command, self.path, headers=headers)
            response = upstream.getresponse()
            state.record(self.command, urlsplit(self.path).path, response.status)
            self.send_response(response.status)
            length = response.getheader("Content-Length")
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
            chunked = length is None and not head
            if length is not None:
                self.send_header("Content-Length", length)
            elif chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", "0")
            self.end_headers()
            if head:
                return
            while block := response.read(CHUNK):
                if chunked:
                    self.wfile.write(f"{len(block):X}\r\n".encode() + block + b"\r\n")
                else:
                    self.wfile.write(block)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                raise
            state.record(self.command, urlsplit(self.path).path, 502)
            self._send_bytes(f"proxy: {type(exc).__name__}\n".encode(), "text/plain", head, status=502)
        finally:
            upstream.close()


class ViewerHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: ServerState) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = state


class ViewerServer:
    """OHIF ``dist`` + our config + ``/dicom-web`` → Orthanc, served on 127.0.0.1 (a thread)."""

    def __init__(self, dist: Path, orthanc_http_port: int, app_config: str | None = None) -> None:
        self.state = ServerState(dist.resolve(), orthanc_http_port, app_config or app_config_js())
        self._server: ViewerHttpServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ViewerServer:
        self._server = ViewerHttpServer(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_port}"

    def failed_requests(self) -> list[ProxyRecord]:
        with self.state.lock:
            return [record for record in self.state.records if record.status >= 400]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
