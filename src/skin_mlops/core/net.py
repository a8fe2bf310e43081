"""Small network helpers shared by the commands that open ports."""

from __future__ import annotations

import errno
import socket

from skin_mlops.core.errors import ConfigError


def check_port_free(host: str, port: int, setting: str) -> None:
    """Raise one :class:`ConfigError` line when ``host:port`` is already taken.

    Args:
        host: the interface the service will bind.
        port: the port it will listen on.
        setting: the setting (environment variable) that moves it, named in the error.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As servers do: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is already in use; set {setting} (or --port) "
                    "to another port"
                ) from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
