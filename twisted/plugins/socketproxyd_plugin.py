"""
The C{socketproxy} command of twistd and twist.
"""

from twisted.application.service import ServiceMaker

socketproxy = ServiceMaker(
    "socketproxyd",
    "socketproxyd.tap",
    "Socket-activated stream proxy, a drop-in for systemd-socket-proxyd.",
    "socketproxy",
)
