"""The ws command line and the Textual viewer."""

__version__ = "0.1.0"
