"""The package's version, where every layer can read it (``nbagent.__version__`` re-exports it)."""

__version__ = "0.1.0"
