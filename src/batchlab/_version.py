"""The single source of batchlab's version."""

__version__ = "0.1.0"
