"""The version: one home, read by pyproject.toml (setuptools), the CLI and the client's User-Agent. A module of its
own so that the engine can name it without importing the package's lazy Dagster exports."""

__version__ = "0.1.0"
