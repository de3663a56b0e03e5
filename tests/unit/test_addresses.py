"""
Unit tests for L{socketproxyd.addresses}: addresses as log lines show them and as
sockets give them.
"""

from __future__ import annotations

import socket

from twisted.internet.address import IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from socketproxyd.addresses import describeAddress, socketAddress
from tests.support.fakes import PEER


class AddressTests(SynchronousTestCase):
    """
    Addresses as log lines show them and as sockets give them.
    """

    def test_describeAddress(self) -> None:
        """
        IPv4 is C{host:port}, IPv6 C{[host]:port}, a UNIX socket its path,
        an abstract one C{@name}, an unnamed one says so.
        """
        self.assertEqual(describeAddress(PEER), "192.0.2.1:4000")
        self.assertEqual(
            describeAddress(IPv6Address("TCP", "2001:db8::1", 443)), "[2001:db8::1]:443"
        )
        self.assertEqual(describeAddress(UNIXAddress(b"/run/app.sock")), "/run/app.sock")
        self.assertEqual(describeAddress(UNIXAddress(b"\0app")), "@app")
        self.assertEqual(describeAddress(UNIXAddress(None)), "unix:(unnamed)")

    def test_socketAddress(self) -> None:
        """
        A socket's address becomes Twisted's address object for its family.
        """
        self.assertEqual(socketAddress(socket.AF_INET, ("192.0.2.1", 4000)), PEER)
        self.assertEqual(
            socketAddress(socket.AF_INET6, ("2001:db8::1", 443, 1, 2)),
            IPv6Address("TCP", "2001:db8::1", 443, 1, 2),
        )
        self.assertEqual(
            socketAddress(socket.AF_UNIX, "/run/app.sock"), UNIXAddress("/run/app.sock")
        )
        self.assertEqual(socketAddress(socket.AF_UNIX, ""), UNIXAddress(None))
