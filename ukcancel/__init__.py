"""ukssdc-cancel: cancel UKSSDC XRT product-build jobs through a queue."""

__version__ = "0.1.0"
