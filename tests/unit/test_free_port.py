"""Ports for child servers and private stacks: bindable, never handed out twice, and clear
of the ports the kernel gives outgoing connections."""

from __future__ import annotations

import socket

from tests.support.private_stack import quiet_port
from tests.support.procs import CHILD_PORTS, QUIET_PORTS, free_port


def test_child_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(port in CHILD_PORTS for port in ports)
    assert CHILD_PORTS.stop <= 32768  # Linux's default ephemeral range starts there
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_private_stack_never_gets_a_child_servers_port() -> None:
    taken: set[int] = set()
    quiet = {quiet_port(taken) for _ in range(50)}
    assert quiet == taken
    assert all(port in QUIET_PORTS for port in quiet)
    assert not set(QUIET_PORTS) & set(CHILD_PORTS)
