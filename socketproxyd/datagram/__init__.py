"""
The datagram path: relay, listening port, sessions and packet info.
"""
