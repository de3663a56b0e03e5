"""
The floor: the least a Python process can do to proxy the way socketproxyd
does, for comparing against in the benchmarks.

    LISTEN_FDS=1 python benchmarks/floor.py HOST:PORT

One listening socket on fd 3, one epoll loop, no Twisted, no limits, no
timeouts, no logs. It makes the same system calls as socketproxyd's splice
path: a non-blocking connect per client, small messages copied through one
buffer with C{recv_into}/C{send}, bulk spliced through a pipe pair once a
read fills the buffer, half-close forwarded. Whatever socketproxyd costs
beyond this is Twisted's and socketproxyd's own; what this costs beyond
the C original is Python's. It is not a proxy to use: the target must be
an IPv4 C{HOST:PORT}, and errors just close the connection.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import sys

COPY_SIZE = 64 * 1024
PIPE_SIZE = 256 * 1024
FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
IN, OUT = select.EPOLLIN, select.EPOLLOUT


class End:
    """
    One socket of a connection and the direction that leaves from it.
    """

    __slots__ = ("sock", "fd", "peer", "pipe", "pending", "backlog", "eof", "mask")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer: End
        self.pipe: tuple[int, int] | None = None
        self.pending = 0
        self.backlog = b""
        self.eof = False
        self.mask = IN


class Floor:
    """
    The loop.
    """

    def __init__(self, listener: socket.socket, target: tuple[str, int]) -> None:
        self.listener = listener
        self.target = target
        self.poller = select.epoll()
        self.ends: dict[int, End] = {}
        self.buffer = bytearray(COPY_SIZE)
        self.view = memoryview(self.buffer)

    def run(self) -> None:
        self.poller.register(self.listener.fileno(), IN)
        listening = self.listener.fileno()
        while True:
            for fd, event in self.poller.poll():
                if fd == listening:
                    self.accept()
                    continue
                end = self.ends.get(fd)
                if end is None:
                    continue
                if event & OUT:
                    self.drain(end.peer)
                elif end.mask & IN:
                    self.read(end)

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except BlockingIOError:
                return
            client.setblocking(False)
            target = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            target.connect_ex(self.target)
            a, b = End(client), End(target)
            a.peer, b.peer = b, a
            for end in (a, b):
                self.ends[end.fd] = end
                self.poller.register(end.fd, IN)

    def setMask(self, end: End, mask: int) -> None:
        if end.mask != mask:
            end.mask = mask
            self.poller.modify(end.fd, mask)

    def read(self, end: End) -> None:
        try:
            if end.pipe is None:
                moved = end.sock.recv_into(self.buffer)
            else:
                moved = os.splice(end.fd, end.pipe[1], PIPE_SIZE - end.pending, flags=FLAGS)
        except BlockingIOError:
            return
        except OSError:
            return self.close(end)
        if moved == 0:
            end.eof = True
            self.setMask(end, end.mask & ~IN)
            if not end.pending and not end.backlog:
                self.finish(end)
            return
        if end.pipe is None:
            try:
                sent = end.peer.sock.send(self.view[:moved])
            except BlockingIOError:
                sent = 0
            except OSError:
                return self.close(end)
            if sent < moved:
                end.backlog = bytes(self.view[sent:moved])
                self.wait(end)
            elif moved == COPY_SIZE:
                for e in (end, end.peer):
                    read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
                    e.pipe = (read, write)
            return
        end.pending += moved
        self.drain(end)

    def wait(self, end: End) -> None:
        self.setMask(end, end.mask & ~IN)
        self.setMask(end.peer, end.peer.mask | OUT)

    def drain(self, end: End) -> None:
        destination = end.peer
        try:
            if end.backlog:
                end.backlog = end.backlog[destination.sock.send(end.backlog) :]
            while end.pending and not end.backlog:
                end.pending -= os.splice(end.pipe[0], destination.fd, end.pending, flags=FLAGS)
        except BlockingIOError:
            pass
        except OSError:
            return self.close(end)
        if end.pending or end.backlog:
            return self.wait(end)
        self.setMask(destination, destination.mask & ~OUT)
        if end.eof:
            self.finish(end)
        else:
            self.setMask(end, end.mask | IN)

    def finish(self, end: End) -> None:
        if end.peer.eof and not (end.peer.pending or end.peer.backlog):
            return self.close(end)
        try:
            end.peer.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self, end: End) -> None:
        for e in (end, end.peer):
            if self.ends.pop(e.fd, None) is not None:
                self.poller.unregister(e.fd)
                if e.pipe is not None:
                    os.close(e.pipe[0])
                    os.close(e.pipe[1])
                e.sock.close()


def main() -> None:
    host, port = sys.argv[-1].rsplit(":", 1)
    listener = socket.socket(fileno=3)
    listener.setblocking(False)
    Floor(listener, (host, int(port))).run()


if __name__ == "__main__":
    main()
