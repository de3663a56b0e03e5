"""
Prometheus metrics on a socket of their own (C{--metrics=ENDPOINT}): the
exporter is one more consumer of the ledger's events. Imported only when
C{--metrics} is given, so that neither C{prometheus_client} nor
C{twisted.web} costs a proxy without it start-up time or memory.
"""
