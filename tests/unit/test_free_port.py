"""Ports for child servers: bindable, never handed out twice, and clear of the ports the
kernel gives outgoing connections."""

from __future__ import annotations

import socket

from tests.support.procs import ephemeral_low, free_port


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    low = ephemeral_low()
    if low - 1024 >= 4096:  # room below the range (the default 32768-60999 has it)
        assert all(1024 <= port < low for port in ports)
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
