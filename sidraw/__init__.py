"""sidraw: bright, clean images from raw photos shot in near darkness.

The library API (what ``sidraw convert`` and ``sidraw info`` call)::

    import sidraw
    result = sidraw.convert_file("night.ARW", "night.tif", sidraw.ConvertOptions(ratio=100))
    print(result.decision.describe())
    report = sidraw.describe_file("night.ARW")
"""

__version__ = "0.1.0"

from .errors import (
    CorruptFileError,
    InputError,
    MetadataError,
    ModelError,
    OutputError,
    SidrawError,
    UnsupportedFileError,
)
from .inspect import describe_file
from .pipeline import ConvertOptions, ConvertResult, convert_file

__all__ = [
    "ConvertOptions",
    "ConvertResult",
    "CorruptFileError",
    "InputError",
    "MetadataError",
    "ModelError",
    "OutputError",
    "SidrawError",
    "UnsupportedFileError",
    "__version__",
    "convert_file",
    "describe_file",
]
