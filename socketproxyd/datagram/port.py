# -*- test-case-name: tests.integration.test_datagram -*-
"""
L{DatagramPort}: a listening datagram socket read by the proxy itself (see
L{socketproxyd.datagram.relay}), and the socket replies to its clients leave by.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IAddress, IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from socketproxyd.addresses import RawAddress, socketAddress
from socketproxyd.datagram.packetinfo import (
    CONTROL_SPACE,
    Control,
    Destination,
    destinationOf,
    receiveDestinations,
)
from socketproxyd.events import Ending
from socketproxyd.logs import observer

if TYPE_CHECKING:
    from socketproxyd.datagram.relay import DatagramRelay


BATCH = 64
"""
Datagrams read per wake-up from one socket, so one busy client cannot
starve the others.
"""
receiveBuffer = bytearray(256 * 1024)
receiveView = memoryview(receiveBuffer)


@implementer(IReadDescriptor)
class DatagramPort:
    """
    A listening datagram socket in the reactor: what clients send goes to
    the L{DatagramRelay}, and replies leave from it.
    """

    log = Logger(observer=observer)

    def __init__(self, reactor: IReactorFDSet, sock: socket.socket, relay: DatagramRelay) -> None:
        self.reactor = reactor
        self.socket = sock
        self.fileno = sock.fileno
        self.relay = relay
        relay.port = self
        sock.setblocking(False)
        self.findsDestinations = receiveDestinations(sock)
        self.portNumber = sock.getsockname()[1] if self.findsDestinations else 0

    def logPrefix(self) -> str:
        return "datagram"

    def startReading(self) -> None:
        self.reactor.addReader(self)

    def stopReading(self) -> None:
        self.reactor.removeReader(self)

    def getHost(self) -> IAddress:
        return socketAddress(self.socket.family, self.socket.getsockname(), "UDP")

    def doRead(self) -> None:
        if self.findsDestinations:
            self._readWithDestinations()
            return
        receive, relay = self.socket.recvfrom_into, self.relay
        for _ in range(BATCH):
            try:
                size, address = receive(receiveBuffer)
            except BlockingIOError:
                return
            except OSError:
                continue
            relay.received(bytes(receiveView[:size]), address)

    def _readWithDestinations(self) -> None:
        receive, relay, buffers = self.socket.recvmsg_into, self.relay, [receiveView]
        for _ in range(BATCH):
            try:
                size, ancillary, _, address = receive(buffers, CONTROL_SPACE)
            except BlockingIOError:
                return
            except OSError:
                continue
            relay.received(bytes(receiveView[:size]), address, ancillary)

    def destination(self, ancillary: Control | None) -> Destination | None:
        """
        The address a datagram that came with C{ancillary} was sent to, if
        the socket is wildcard-bound (otherwise there is none to say).
        """
        if not ancillary:
            return None
        return destinationOf(self.socket.family, self.portNumber, ancillary)

    def sendTo(self, data: bytes, address: RawAddress, control: Control | None = None) -> bool:
        """
        Send a reply to a client (from the address it wrote to, with
        C{control}); whether it went (a full buffer or an unreachable
        client drops it).
        """
        try:
            if control is None:
                self.socket.sendto(data, address)
            else:
                self.socket.sendmsg([data], control, 0, address)
        except OSError:
            return False
        return True

    def connectionLost(self, reason: Failure) -> None:
        self.log.warn(
            "Datagram socket {fd} failed: {reason}", fd=self.fileno(), reason=reason.value
        )

    def stopListening(self) -> None:
        """
        Stop reading, end every session and close the socket.
        """
        self.stopReading()
        relay = self.relay
        relay.endAll(Ending.SHUTDOWN)
        self.socket.close()
        if dropped := relay.dropped():
            self.log.info(
                "{route}{dropped} datagrams dropped in all (at the connection limit, a full "
                "socket buffer, or a target that could not be reached)",
                route=relay.routePrefix,
                dropped=dropped,
            )
