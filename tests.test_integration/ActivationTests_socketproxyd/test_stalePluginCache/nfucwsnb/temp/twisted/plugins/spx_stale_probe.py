import twisted.internet.endpoints  # noqa
