"""hagw: a high-availability HTTP gateway. The data plane lives in this package."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hagw")
except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
    __version__ = "0.0.0+unknown"
