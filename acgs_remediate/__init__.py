"""acgs-remediate: plan, run and verify Docker image-bloat remediation across a fleet."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("acgs-remediate")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
