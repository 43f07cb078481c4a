"""Loaded first by every service process a test or a benchmark starts
(``IsolatedStack.process_env`` puts this directory, then the repository, on
``PYTHONPATH``): the process resolves no name but ``localhost`` and numeric addresses
(see ``tests.support.loopback_only``).
"""

from __future__ import annotations

from tests.support.loopback_only import install

install()
