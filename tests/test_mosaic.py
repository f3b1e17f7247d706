import numpy as np
import pytest

from sidraw.errors import UnsupportedFileError
from sidraw.mosaic import (
    denormalise_packed,
    layout_from_letters,
    layout_from_pattern,
    normalise_packed,
    pack,
    unpack,
)
from sidraw.sample import XTRANS_PATTERN

BAYERS = ["RGGB", "GRBG", "GBRG", "BGGR"]
SHAPES = [(6, 6), (7, 9), (600, 900), (601, 903), (37, 58)]


def colour_mosaic(letters: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    p = letters.shape[0]
    codes = np.vectorize("RGB".index)(letters)
    return np.tile(codes, (shape[0] // p + 1, shape[1] // p + 1))[: shape[0], : shape[1]]


@pytest.mark.parametrize("pattern", BAYERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bayer_round_trip_and_channel_colours(pattern: str, shape: tuple[int, int]) -> None:
    layout = layout_from_letters(pattern)
    rng = np.random.default_rng(1)
    mosaic = rng.integers(0, 16384, shape, dtype=np.uint16)
    packed = pack(mosaic, layout)
    assert packed.shape == ((shape[0] + 1) // 2, (shape[1] + 1) // 2, 4)
    assert np.array_equal(unpack(packed, layout, shape), mosaic)
    colours = pack(colour_mosaic(layout.pattern, shape), layout)
    assert (colours == np.array([0, 1, 1, 2])).all()  # R, G, G, B everywhere, padding included


def test_bayer_green_order_is_red_row_then_blue_row() -> None:
    for pattern in BAYERS:
        layout = layout_from_letters(pattern)
        rows = np.arange(4).reshape(2, 2) // 2
        r_row = rows.ravel()[pattern.index("R")]
        g1 = layout.index[0, 0, 1]
        assert g1 // 2 == r_row


@pytest.mark.parametrize("dy", range(6))
@pytest.mark.parametrize("dx", range(6))
def test_xtrans_every_phase_round_trips(dy: int, dx: int) -> None:
    letters = np.roll(np.roll(XTRANS_PATTERN, -dy, 0), -dx, 1)
    layout = layout_from_letters(letters)
    assert layout.kind == "xtrans" and layout.channels == 9
    for shape in [(600, 900), (601, 905), (13, 17)]:
        mosaic = np.random.default_rng(dy * 6 + dx).integers(0, 4096, shape, dtype=np.uint16)
        packed = pack(mosaic, layout)
        assert np.array_equal(unpack(packed, layout, shape), mosaic)
        colours = pack(colour_mosaic(letters, shape), layout)
        assert (colours == np.array([1, 1, 1, 1, 1, 0, 0, 2, 2])).all()


def test_xtrans_packs_to_a_third() -> None:
    layout = layout_from_letters(XTRANS_PATTERN)
    assert layout.packed_shape((4000, 6000)) == (1334, 2000, 9)


def test_rawpy_style_pattern_with_fourth_colour_index() -> None:
    layout = layout_from_pattern(np.array([[0, 1], [3, 2]]), "RGBG")
    assert "".join(layout.pattern.ravel()) == "RGGB"


@pytest.mark.parametrize("bad", ["RRGB", "RGBG"])
def test_unsupported_2x2(bad: str) -> None:
    with pytest.raises(UnsupportedFileError):
        layout_from_letters(bad)


def test_unsupported_4x4() -> None:
    with pytest.raises(UnsupportedFileError):
        layout_from_pattern(np.zeros((4, 4), dtype=int), "RGBG")


def test_normalise_uses_per_position_black() -> None:
    layout = layout_from_letters("GRBG")
    black = np.array([[510, 520], [530, 540]], dtype=np.float32)
    mosaic = np.tile(black, (4, 4)).astype(np.uint16)
    mosaic[0, 0] += 100
    packed = normalise_packed(pack(mosaic, layout), layout, black, 1023)
    assert np.isclose(packed.max(), 100 / (1023 - 510))
    assert np.count_nonzero(packed) == 1
    back = unpack(denormalise_packed(packed, layout, black, 1023), layout, mosaic.shape)
    assert np.array_equal(back, mosaic)


def test_denormalise_clips() -> None:
    layout = layout_from_letters("RGGB")
    packed = np.full((2, 2, 4), 2.0, dtype=np.float32)
    packed[0, 0] = -1
    out = denormalise_packed(packed, layout, np.full((2, 2), 64.0), 4095)
    assert out.max() == 4095 and out.min() == 0


def test_normalising_a_window_matches_the_whole_image() -> None:
    """A window starting at an odd block (X-Trans has two block types per axis) must use the
    levels of where it sits in the image, not of its own first element."""
    from sidraw.sample import pattern_letters

    layout = layout_from_letters(pattern_letters("xtrans"))
    black = np.arange(36, dtype=np.float32).reshape(6, 6) + 500
    rng = np.random.default_rng(3)
    mosaic = rng.integers(500, 4000, size=(60, 90)).astype(np.uint16)
    packed = pack(mosaic, layout)
    whole = normalise_packed(packed, layout, black, 4095)
    window = normalise_packed(packed[3:15, 5:20], layout, black, 4095, origin=(3, 5))
    np.testing.assert_array_equal(window, whole[3:15, 5:20])
    back = denormalise_packed(window, layout, black, 4095, origin=(3, 5))
    np.testing.assert_array_equal(back, packed[3:15, 5:20])
    assert not np.array_equal(normalise_packed(packed[3:15, 5:20], layout, black, 4095), window)
