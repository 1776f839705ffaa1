"""factory: a build system for specialist language models."""

__version__ = "0.1.0"
