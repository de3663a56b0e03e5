"""
socketproxyd: a socket-activated stream proxy on Twisted, a drop-in for
systemd-socket-proxyd.
"""

__version__ = "0.1.0"
