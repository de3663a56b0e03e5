"""
Everything the tests share, in one place (test modules import only from
this package, never from one another), one kind of helper per submodule.
Nothing is re-exported here: a test imports from the submodule itself.

  - L{tests.support.sockets}: real sockets, for the integration tests:
    listening sockets and blocking clients, reproducible payloads and their
    hashes, the threaded C{Backend} standing in for the target and its
    handlers, waiting for a UNIX socket to listen, and C{TIMEOUT}.
  - L{tests.support.processes}: the command under test (the four ways of
    running it, and the C original where installed), the socket-activation
    launcher that runs it as systemd would (C{ProxyProcess}), what
    C{/proc} says of its process, and the mixins, test case and
    C{NOTIFY_SOCKET} listener the tests drive it through.
  - L{tests.support.fakes}: doubles for the unit tests: a reactor that
    records its readers and writers, the one tracker double
    (C{FakeTracker}), string transports and the harness that drives a
    connection on the transport pump by hand, the connection test case, and
    the stand-ins a splice pump is handed (its connection, a paused
    transport).
  - L{tests.support.splicing}: the splice path on real socket pairs: the
    harness that drives a connection on the splice pump by hand, the
    keepalive behaviour every pump shares, and the splice pump test case.
  - L{tests.support.scraping}: one HTTP request to the metrics socket,
    and the scraped samples as Prometheus's parser reads them.

Imports between the submodules point one way: C{processes} and
C{scraping} use C{sockets}, C{splicing} uses C{fakes}.
"""
