"""The package version (one place; ``dd_medical.__version__`` and provenance records read it)."""

__version__ = "0.1.0"
