"""The SDK's version (the daemon's is ``Hull.version()``)."""

__version__ = "0.1.0"
