"""Pair lists (sidraw.pairs): the SID list, a short/ + long/ folder and a CSV, and their checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from pair_tree import scene_mosaic, write_pair_tree, write_raw

from sidraw.pairs import (
    MAX_PAIR_RATIO,
    PairError,
    list_pairs,
    load_pairs,
    parse_sid_name,
    read_meta,
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Path, Path]]]:
    root = tmp_path_factory.mktemp("pairs")
    return root, write_pair_tree(root)


def test_sid_names() -> None:
    assert parse_sid_name("Sony/short/10003_00_0.1s.ARW").exposure == pytest.approx(0.1)
    name = parse_sid_name("00001_01_10s.RAF")
    assert (name.scene, name.shot, name.exposure) == ("00001", "01", 10.0)
    assert parse_sid_name("IMG_0001.CR2") is None


@pytest.mark.parametrize("form", ["list.txt", "pairs.csv", "."])
def test_every_format_reads_the_same_pairs(tree, form: str) -> None:
    root, good = tree
    result = load_pairs(root / form)
    got = [(p.short.resolve(), p.long.resolve()) for p in result.pairs]
    assert sorted(got) == sorted((s.resolve(), lo.resolve()) for s, lo in good)
    # Several shorts share one long.
    assert len({p.long.resolve() for p in result.pairs}) == 2
    assert sorted(round(p.ratio) for p in result.pairs) == [100, 100, 250, 250, 300, 300]
    assert {p.ratio_source for p in result.pairs} == {"exif"}
    assert {p.camera for p in result.pairs} == {"Sony ILCE-7SM2"}
    assert all((p.width, p.height, p.cfa) == (128, 96, "RGGB") for p in result.pairs)
    # The broken file and the mismatched pair are refused, one line each, naming the short.
    lines = sorted(str(e) for e in result.refused)
    assert len(lines) == 2
    assert "20001_00_0.1s.dng" in lines[0] and "\n" not in lines[0]
    assert "20002_00_0.1s.dng" in lines[1] and "size 136x96 differs" in lines[1]


def test_ratio_from_names_when_exif_has_none(tmp_path: Path) -> None:
    clean = scene_mosaic(0, 64, 64)
    short, long = tmp_path / "s" / "7_00_0.05s.dng", tmp_path / "l" / "7_00_30s.dng"
    write_raw(short, clean, 100.0, 1)
    write_raw(long, clean, 1.0, 2)
    # Rewrite without EXIF exposure times: the names (0.05 s and 30 s) give x600, capped at 300.
    from sidraw.dng import DngMetadata, write_dng
    from sidraw.raw import read_info
    from sidraw.sample import pattern_letters

    for p in (short, long):
        _, mosaic = read_info(p)
        write_dng(p, mosaic, DngMetadata(pattern=pattern_letters("RGGB"), black=512))
    (tmp_path / "l.csv").write_text(f"short,long\n{short},{long}\n")
    (pair,) = load_pairs(tmp_path / "l.csv").pairs
    assert pair.ratio_source == "name"
    assert pair.uncapped == pytest.approx(600) and pair.ratio == MAX_PAIR_RATIO


def test_other_camera_and_shorter_long_refused(tmp_path: Path) -> None:
    clean = scene_mosaic(0, 64, 64)
    a, b, c = (tmp_path / f"{n}_00_1s.dng" for n in "abc")
    write_raw(a, clean, 100.0, 1)
    write_raw(b, clean, 1.0, 2, model="ILCE-7M3")
    write_raw(c, clean, 300.0, 3)
    d = tmp_path / "d_00_10s.dng"
    write_raw(d, scene_mosaic(0, 64, 64, "GRBG"), 1.0, 4, pattern="GRBG")
    rows = f"{a.name},{b.name}\n{a.name},{c.name}\n{a.name},{d.name}\n"
    (tmp_path / "p.csv").write_text("short,long\n" + rows)
    refused = [str(e) for e in load_pairs(tmp_path / "p.csv").refused]
    assert "camera Sony ILCE-7SM2 differs" in refused[0]
    assert "shorter" in refused[1]
    assert "CFA RGGB differs from d_00_10s.dng's GRBG" in refused[2]


def test_bad_lists(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(PairError, match="'short' and 'long' columns"):
        list_pairs(tmp_path / "x.csv")
    (tmp_path / "l.txt").write_text("only_one_path.ARW\n")
    with pytest.raises(PairError, match="line 1"):
        list_pairs(tmp_path / "l.txt")
    with pytest.raises(PairError, match="short/ and long/"):
        list_pairs(tmp_path)
    with pytest.raises(PairError, match="not found"):
        list_pairs(tmp_path / "missing.txt")


def test_real_raws_metadata_path(shared_raw: Path) -> None:
    crw = shared_raw / "cameras" / "canon_eos_d30_iso100_5s.crw"
    dng = shared_raw / "cameras" / "canon_550d_magiclantern_colorchart.dng"
    if not crw.exists() or not dng.exists():
        pytest.skip("the camera files are not in ../shared/data/raw/cameras")
    meta = read_meta(crw)
    assert meta.camera == "Canon EOS D30" and meta.iso == 100 and meta.cfa == "RGGB"
    assert meta.exposure_time == pytest.approx(5.04, abs=0.01)
    # A CRW against itself: same camera, ratio 1; against the 550D: refused by camera.

    result = load_pairs(crw.parent, names=[(crw, crw), (crw, dng)])
    assert [p.ratio for p in result.pairs] == [pytest.approx(1.0)]
    assert "camera Canon EOS D30 differs" in str(result.refused[0])



def test_truncated_real_raws_are_refused(shared_raw: Path) -> None:
    broken = sorted((shared_raw / "broken").glob("*"))
    if not broken:
        pytest.skip("no broken files in ../shared/data/raw/broken")
    result = load_pairs(shared_raw, names=[(b, b) for b in broken])
    assert len(result.refused) >= 1
    for err in result.refused:
        assert "\n" not in str(err) and str(err).startswith(str(shared_raw / "broken"))
