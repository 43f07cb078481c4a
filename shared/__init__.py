"""Hookstream's kit: settings, database, Kafka, records, signing, URL safety, logging."""

__version__ = "0.1.0"
