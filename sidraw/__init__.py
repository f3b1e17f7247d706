"""sidraw: bright, clean images from raw photos shot in near darkness."""

__version__ = "0.1.0"
