"""The package version, in one place (read by the CLI's fast ``--version``)."""

__version__ = "0.1.0"
