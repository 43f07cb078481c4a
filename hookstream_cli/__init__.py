"""The ``hookstream`` command line, built on the typed client in ``shared.client``."""
