"""calflow: calcium-imaging movies to cells, traces, classifiers and connectivity."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("calflow")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
