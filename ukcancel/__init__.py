"""ukssdc-cancel: cancel UKSSDC XRT product-build jobs through a queue.

The version has one source, the package's own (``version`` in pyproject.toml), read back from the
installed distribution's metadata: `ukcancel --version`, `/healthz`, the OpenAPI document and the
image label all show it.
"""

from importlib import metadata

try:
    __version__ = metadata.version("ukssdc-cancel")
except metadata.PackageNotFoundError:  # run from a tree that was never installed
    __version__ = "0+unknown"
