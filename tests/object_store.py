"""A real S3-compatible server for tests: moto's standalone server (`moto_server`, installed by
moto[server]) in its own process on 127.0.0.1, spoken to over HTTP by Beam's own S3 client, and a
counting proxy that can sit between the two to measure what each request downloads.

    with moto_server() as endpoint:            # http://127.0.0.1:PORT
        client = s3_client(endpoint)
        client.create_bucket(Bucket="b")
        upload_tree(client, local_folder, "b", "inputs")
        with CountingProxy(endpoint) as proxy:  # give Beam proxy.url; read proxy.requests
            run_cli("build", config, *s3_flags(proxy.url))
"""
from __future__ import annotations

import contextlib
import dataclasses
import http.client
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, Optional

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
ACCESS_KEY, SECRET_KEY, REGION = "florenz-test-key", "florenz-test-secret", "us-east-1"
# Headers that belong to one connection, not to the request: the proxy sets its own.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
        "expect", "content-length"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A fresh, empty S3-compatible server; yields its endpoint URL."""
    if not MOTO_SERVER.exists():
        raise RuntimeError(f"{MOTO_SERVER} not found: install the dev extra (moto[server])")
    port = free_port()
    proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def s3_flags(endpoint: str) -> list[str]:
    """Beam's S3 options (apache_beam.options.pipeline_options.S3Options) for `endpoint`."""
    return ["--s3_endpoint_url", endpoint, "--s3_access_key_id", ACCESS_KEY,
            "--s3_secret_access_key", SECRET_KEY, "--s3_region_name", REGION]


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name=REGION)


def upload_tree(client, local: Path, bucket: str, prefix: str) -> None:
    """Every file under `local` to s3://bucket/prefix/<its relative path>."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(local).as_posix()}",
                          Body=path.read_bytes())


def list_keys(client, bucket: str, prefix: str = "") -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return sorted(keys)


def download_prefix(client, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under s3://bucket/prefix/, by its path relative to the prefix."""
    return {key[len(prefix) + 1:]: client.get_object(Bucket=bucket, Key=key)["Body"].read()
            for key in list_keys(client, bucket, prefix + "/")}


@dataclasses.dataclass(frozen=True)
class Request:
    """One request as the proxy forwarded it, and what the server answered."""

    method: str
    bucket: str
    key: str  # "" for a bucket-level request (list, head bucket)
    query: str
    range: Optional[str]  # the Range header, e.g. "bytes=512-"
    status: int
    body_bytes: int  # response body bytes the server sent
    body: Optional[bytes] = None  # the response body itself, for the keys the proxy was asked to keep

    @property
    def range_start(self) -> int:
        """The first byte a GET asked for (0 without a Range header)."""
        if not self.range:
            return 0
        return int(self.range.split("=", 1)[1].split("-", 1)[0])

    @property
    def range_end(self) -> Optional[int]:
        """One past the last byte a GET asked for; None for "to the end" (no Range, or bytes=S-)."""
        last = self.range.split("=", 1)[1].split("-", 1)[1] if self.range else ""
        return int(last) + 1 if last else None


class CountingProxy:
    """An HTTP proxy in front of an S3 server recording every request (method, object, Range header,
    response body bytes): what a client downloaded, measured at the server's side of the wire. The
    response bodies of objects whose key `keep_body` accepts are kept too (to see what a read of an
    object the test did not write delivered)."""

    def __init__(self, upstream: str, keep_body: Callable[[str], bool] = lambda key: False):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.requests: list[Request] = []
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as boto3 expects

            def log_message(self, *_):
                pass

            def _body(self) -> Optional[bytes]:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _forward(self) -> None:
                body = self._body()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                    self.send_response(response.status)
                    for name, value in response.getheaders():
                        if name.lower() not in _HOP | {"date", "server"}:
                            self.send_header(name, value)
                    self.send_header("Content-Length", length or "0")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()
                url = urllib.parse.urlsplit(self.path)
                bucket, _, key = urllib.parse.unquote(url.path).lstrip("/").partition("/")
                with lock:
                    proxy.requests.append(Request(self.command, bucket, key, url.query, self.headers.get("Range"),
                                                  response.status, len(data), data if keep_body(key) else None))

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-counting-proxy", daemon=True)

    def __enter__(self) -> "CountingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
