"""Output colour encodings and their ICC profiles, built with LittleCMS.

Every output carries an ICC profile that describes exactly how its pixels are encoded: the
primaries LibRaw converts to and the transfer curve it applies. The profiles are created by
LittleCMS (the CMS inside Pillow) from the standard primaries and curves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
from dataclasses import dataclass
from typing import Literal

ColorSpaceName = Literal["srgb", "adobe", "p3", "rec2020", "prophoto"]
COLOR_SPACES: tuple[str, ...] = ("srgb", "adobe", "p3", "rec2020", "prophoto")

_D65 = (0.3127, 0.3290)
_D50 = (0.3457, 0.3585)


@dataclass(frozen=True)
class Encoding:
    """How output pixels are encoded.

    Attributes:
        space: primaries (LibRaw output colour space).
        transfer: ``"srgb"`` (piecewise sRGB curve), ``"gamma"`` (pure power) or ``"linear"``.
        gamma: exponent for ``"gamma"`` transfer.
        description: profile description, e.g. ``"sidraw sRGB"``.
    """

    space: str
    transfer: Literal["srgb", "gamma", "linear"]
    gamma: float = 1.0
    description: str = ""

    @property
    def libraw_gamma(self) -> tuple[float, float]:
        """LibRaw's ``gamma=(power, toe slope)`` setting for this transfer curve."""
        if self.transfer == "srgb":
            return (2.4, 12.92)
        if self.transfer == "gamma":
            return (self.gamma, 0.0)
        return (1.0, 1.0)


_PRIMARIES = {
    "srgb": ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06), _D65, "sRGB"),
    "adobe": ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06), _D65, "Adobe RGB (1998) compatible"),
    "p3": ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060), _D65, "Display P3"),
    "rec2020": ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046), _D65, "Rec. 2020"),
    "prophoto": ((0.7347, 0.2653), (0.1596, 0.8404), (0.0366, 0.0001), _D50, "ProPhoto RGB"),
}


def encoding_for(space: str, linear: bool = False) -> Encoding:
    """The encoding of an output: its space's standard curve, or linear.

    ``rec2020`` is always linear (a scene-referred working space for grading).
    """
    if space not in _PRIMARIES:
        raise ValueError(f"unknown colour space {space!r}; choose from {', '.join(COLOR_SPACES)}")
    name = _PRIMARIES[space][4]
    if linear or space == "rec2020":
        return Encoding(space, "linear", 1.0, f"sidraw linear {name}")
    if space == "adobe":
        return Encoding(space, "gamma", 563 / 256, f"sidraw {name}")
    if space == "prophoto":
        return Encoding(space, "gamma", 1.8, f"sidraw {name}")
    return Encoding(space, "srgb", 1.0, f"sidraw {name}")


class _CIExyY(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double), ("Y", ctypes.c_double)]


class _CIExyYTRIPLE(ctypes.Structure):
    _fields_ = [("Red", _CIExyY), ("Green", _CIExyY), ("Blue", _CIExyY)]


@functools.lru_cache(maxsize=1)
def _lcms() -> ctypes.CDLL:
    candidates: list[str] = []
    try:
        import PIL

        libs = os.path.join(os.path.dirname(os.path.dirname(PIL.__file__)), "pillow.libs")
        candidates += sorted(glob.glob(os.path.join(libs, "liblcms2*")))
    except ImportError:
        pass
    found = ctypes.util.find_library("lcms2")
    if found:
        candidates.append(found)
    candidates.append("liblcms2.so.2")
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        _declare(lib)
        return lib
    raise RuntimeError("LittleCMS (liblcms2) not found: install Pillow or liblcms2")


def _declare(lib: ctypes.CDLL) -> None:
    vp = ctypes.c_void_p
    lib.cmsCreateRGBProfile.restype = vp
    lib.cmsCreateRGBProfile.argtypes = [
        ctypes.POINTER(_CIExyY),
        ctypes.POINTER(_CIExyYTRIPLE),
        ctypes.POINTER(vp * 3),
    ]
    lib.cmsBuildGamma.restype = vp
    lib.cmsBuildGamma.argtypes = [vp, ctypes.c_double]
    lib.cmsBuildParametricToneCurve.restype = vp
    lib.cmsBuildParametricToneCurve.argtypes = [vp, ctypes.c_int, ctypes.POINTER(ctypes.c_double)]
    lib.cmsFreeToneCurve.argtypes = [vp]
    lib.cmsMLUalloc.restype = vp
    lib.cmsMLUalloc.argtypes = [vp, ctypes.c_uint32]
    lib.cmsMLUsetASCII.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.cmsMLUfree.argtypes = [vp]
    lib.cmsWriteTag.argtypes = [vp, ctypes.c_uint32, vp]
    lib.cmsSetProfileVersion.argtypes = [vp, ctypes.c_double]
    lib.cmsSaveProfileToMem.argtypes = [vp, vp, ctypes.POINTER(ctypes.c_uint32)]
    lib.cmsCloseProfile.argtypes = [vp]


def _sig(text: str) -> int:
    return int.from_bytes(text.encode("ascii"), "big")


@functools.lru_cache(maxsize=16)
def icc_profile(encoding: Encoding) -> bytes:
    """An ICC v2 matrix/TRC profile for an encoding (built by LittleCMS)."""
    lib = _lcms()
    red, green, blue, white, _ = _PRIMARIES[encoding.space]
    wp = _CIExyY(white[0], white[1], 1.0)
    prim = _CIExyYTRIPLE(_CIExyY(*red, 1.0), _CIExyY(*green, 1.0), _CIExyY(*blue, 1.0))
    if encoding.transfer == "srgb":
        params = (ctypes.c_double * 5)(2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
        curve = lib.cmsBuildParametricToneCurve(None, 4, params)
    else:
        curve = lib.cmsBuildGamma(None, encoding.gamma if encoding.transfer == "gamma" else 1.0)
    curves = (ctypes.c_void_p * 3)(curve, curve, curve)
    profile = lib.cmsCreateRGBProfile(ctypes.byref(wp), ctypes.byref(prim), ctypes.byref(curves))
    lib.cmsFreeToneCurve(curve)
    if not profile:
        raise RuntimeError(f"LittleCMS could not build a profile for {encoding}")
    try:
        lib.cmsSetProfileVersion(profile, 2.1)
        for tag, text in (
            ("desc", encoding.description),
            ("cprt", "No copyright, use freely (generated by sidraw with LittleCMS)"),
        ):
            mlu = lib.cmsMLUalloc(None, 1)
            lib.cmsMLUsetASCII(mlu, b"en", b"US", text.encode("ascii"))
            lib.cmsWriteTag(profile, _sig(tag), mlu)
            lib.cmsMLUfree(mlu)
        size = ctypes.c_uint32(0)
        if not lib.cmsSaveProfileToMem(profile, None, ctypes.byref(size)):
            raise RuntimeError("LittleCMS could not serialise the profile")
        buf = ctypes.create_string_buffer(size.value)
        if not lib.cmsSaveProfileToMem(profile, buf, ctypes.byref(size)):
            raise RuntimeError("LittleCMS could not serialise the profile")
        return buf.raw[: size.value]
    finally:
        lib.cmsCloseProfile(profile)
