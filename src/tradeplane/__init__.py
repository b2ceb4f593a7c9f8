"""tradeplane: a Kubernetes-native, operator-managed cryptocurrency exchange cluster.

This package holds what the components share: the ``tradeplane`` command line and,
as they land, configuration and telemetry set-up. The components themselves live in
``tradeplane_engine``, ``tradeplane_gateway`` and ``tradeplane_operator``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tradeplane")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
