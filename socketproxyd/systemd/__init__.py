"""
The systemd protocols: sd_listen_fds activation and sd_notify.
"""
