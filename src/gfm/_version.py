"""The package version, in one place: pyproject.toml reads it (``[tool.setuptools.dynamic]``), and ``gfm``,
``gfm --version`` and the version stamped into every store import it from here (a leaf module, so importing
it never pulls in the package face or torch)."""

__version__ = "0.1.0"
