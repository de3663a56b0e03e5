"""
The splice(2) pump on bare sockets: its pump, socket ends, pipes, connector.
"""
