"""The library version, in a module of its own so that any module can import it
without going through the package ``__init__`` (kept equal to pyproject.toml's)."""

__version__ = "0.1.0"
