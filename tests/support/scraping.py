"""
Scraping the proxy's metrics over its UNIX socket, as Prometheus would,
and reading the exposition with prometheus_client's own parser.
"""

from __future__ import annotations

import re
import socket

from prometheus_client.parser import text_string_to_metric_families

from tests.support.sockets import connect, recvAll


def request(
    path: str, method: str = "GET", target: str = "/metrics", accept: str | None = None
) -> tuple[str, str, bytes]:
    """
    One HTTP/1.0 request to the metrics socket at C{path} (with an
    C{Accept} header if given): the status line, the headers and the body.
    """
    extra = f"Accept: {accept}\r\n" if accept else ""
    with connect(path) as sock:
        sock.sendall(f"{method} {target} HTTP/1.0\r\nHost: metrics\r\n{extra}\r\n".encode())
        response = recvAll(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    status, _, headers = head.decode("latin-1").partition("\r\n")
    return status, headers.lower(), body


def scrapeKeepingAlive(sock: socket.socket) -> tuple[str, str]:
    """
    One HTTP/1.1 scrape on C{sock}, which stays open for the next, as
    Prometheus keeps its connections: the status line and the body.
    """
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n")
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(65536)
        if not chunk:
            break
        response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    while length is not None and len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head.decode("latin-1").partition("\r\n")[0], body.decode()


def samples(path: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    The scraped samples, by name and sorted labels, as Prometheus's own
    parser reads them.
    """
    status, _, body = request(path)
    assert status.endswith("200 OK"), status
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
