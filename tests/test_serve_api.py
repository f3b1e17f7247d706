"""``sidraw serve``'s JSON API on Starlette's test client: uploads, the queue, results, limits,
names, clean-up and the token. Skips without the ``web`` extra (the README's test command)."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")

import tifffile
from serve_helpers import (
    CLIENT,
    SIZE,
    files_under,
    raw_bytes,
    running,
    serve_config,
    upload,
    wait_until,
)

from sidraw import __version__
from sidraw.serve.conversion import Cancelled, convert_job

FINAL = {"done", "failed", "cancelled"}


@pytest.fixture
def dng(tmp_path: Path) -> bytes:
    return raw_bytes(tmp_path)


def gated(release: threading.Event) -> Callable[..., Any]:
    """A conversion that waits for ``release`` (cancellable meanwhile), then converts."""

    def convert(source: Path, settings: Any, models: Any, **kwargs: Any) -> Any:
        while not release.wait(0.02):
            if kwargs["stopped"]():
                raise Cancelled
        return convert_job(source, settings, models, **kwargs)

    return convert


def test_upload_poll_download_a_16_bit_tiff_with_metadata(
    tmp_path: Path, tiny_models: Path, dng: bytes
) -> None:
    with running(serve_config(tmp_path / "work", tiny_models)) as client:
        res = upload(client, ("night.dng", dng), ratio="50")
        assert res.status_code == 202, res.text
        body = res.json()
        assert body["client"] == CLIENT and body["jobs"][0]["state"] in ("queued", "running")
        job = wait_until(client, body["jobs"][0]["id"], FINAL)
        assert job["state"] == "done", job
        assert job["ratio"] == 50 and job["ratio_mode"] == "fixed" and job["seconds"] > 0
        assert job["result_name"] == "night.tif" and 0 < job["expires_in"] <= 1800

        result = client.get(job["result"])
        assert result.status_code == 200 and result.headers["content-type"] == "image/tiff"
        assert 'filename="night.tif"' in result.headers["content-disposition"]
        with tifffile.TiffFile(io.BytesIO(result.content)) as tif:
            page = tif.pages[0]
            image = page.asarray()
            tags = page.tags
            assert tags["Make"].value == "Sony" and tags["Model"].value == "ILCE-7SM2"
            assert tags["Software"].value == f"sidraw {__version__}"
            xmp = bytes(tags["XMP"].value).decode()
        assert image.dtype == np.uint16 and image.shape == (SIZE["height"], SIZE["width"], 3)
        assert "sidraw:Ratio" in xmp and "50.0000" in xmp

        preview = client.get(job["preview"])
        assert (
            preview.headers["content-type"] == "image/jpeg" and preview.content[:2] == b"\xff\xd8"
        )
        listed = client.get(f"/api/jobs?client={CLIENT}").json()["jobs"]
        assert [j["id"] for j in listed] == [job["id"]]


@pytest.mark.parametrize("fmt", ["png", "dng"])
def test_png_and_denoised_dng(tmp_path: Path, tiny_models: Path, dng: bytes, fmt: str) -> None:
    import imagecodecs

    from sidraw.raw import read_info

    with running(serve_config(tmp_path / "work", tiny_models)) as client:
        res = upload(client, ("a.ARW", dng), format=fmt, color_space="p3")
        job = wait_until(client, res.json()["jobs"][0]["id"], FINAL)
        assert job["state"] == "done", job
        assert job["settings"] == {"ratio": "auto", "target_exposure": None, "format": fmt,
                                   "color_space": "p3"}  # fmt: skip
        data = client.get(job["result"]).content
        assert client.get(job["preview"]).status_code == 200  # DNG: made by compare_file
    if fmt == "png":
        assert job["result_name"] == "a.png"
        assert imagecodecs.png_decode(data).dtype == np.uint16
    else:
        assert job["result_name"] == "a.dng"
        (tmp_path / "out.dng").write_bytes(data)
        info, _ = read_info(tmp_path / "out.dng")
        assert info.format == "DNG" and (info.width, info.height) == (SIZE["width"], SIZE["height"])


def test_random_bytes_and_a_damaged_raw_fail_and_the_queue_goes_on(
    tmp_path: Path, tiny_models: Path, dng: bytes
) -> None:
    noise = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    truncated = dng[: len(dng) // 3]  # starts like a DNG: LibRaw finds the damage
    with running(serve_config(tmp_path / "work", tiny_models)) as client:
        res = upload(client, ("noise.dng", noise), ("cut.dng", truncated), ("good.dng", dng))
        noisy, cut, good = res.json()["jobs"]
        # Not a raw file by content: failed at once, never queued.
        assert noisy["state"] == "failed" and noisy["error"].startswith("not a raw file")
        cut = wait_until(client, cut["id"], FINAL)
        good = wait_until(client, good["id"], FINAL)
    assert cut["state"] == "failed" and cut["error"] and "\n" not in cut["error"], cut
    assert str(tmp_path) not in cut["error"]  # the reason, not the stored path
    assert good["state"] == "done", good


def test_too_large_uploads_are_refused_and_leave_nothing(
    tmp_path: Path, tiny_models: Path, dng: bytes
) -> None:
    work = tmp_path / "work"
    config = serve_config(work, tiny_models, max_upload=len(dng) - 1, max_request=3 * len(dng))
    with running(config) as client:
        per_file = upload(client, ("big.dng", dng))
        assert per_file.status_code == 413
        assert "big.dng is larger than" in per_file.json()["error"]
        assert "--max-upload" in per_file.json()["error"]
        # Content-Length over the request limit: refused before the body is read.
        per_request = upload(client, *[(f"{k}.dng", dng[:1000]) for k in range(4000)])
        assert per_request.status_code == 413 and "--max-request" in per_request.json()["error"]

        # No Content-Length (chunked): the limit is enforced on the bytes read so far.
        def chunked() -> Any:
            yield b"--XyZ\r\nContent-Disposition: form-data; name=files; filename=a.dng\r\n\r\n"
            for _ in range(8):
                yield dng[: len(dng) // 2]

        streamed = client.post(
            "/api/jobs", content=chunked(),
            headers={"content-type": "multipart/form-data; boundary=XyZ"},
        )  # fmt: skip
        assert streamed.status_code == 413, streamed.text
        assert files_under(work / "jobs") == []
        assert client.post("/api/jobs", content=b"x").status_code == 415


def test_traversal_names_stay_in_the_work_folder(
    tmp_path: Path, tiny_models: Path, dng: bytes
) -> None:
    work = tmp_path / "deep" / "er" / "work"
    names = ["../../x.dng", "..\\..\\y.dng", "/etc/z.dng", ".."]
    with running(serve_config(work, tiny_models)) as client:
        jobs = upload(client, *[(n, dng) for n in names], ratio="20").json()["jobs"]
        shown = [j["name"] for j in jobs]
        assert shown == ["x.dng", "y.dng", "z.dng", "upload.raw"]
        stored = files_under(work)
        assert stored and all(p.resolve().is_relative_to(work.resolve()) for p in stored)
        assert {p.name for p in stored} == {"source.dng", "source.raw"}  # generated names only
        done = [wait_until(client, j["id"], FINAL) for j in jobs]
        assert [j["state"] for j in done] == ["done"] * 4
        header = client.get(done[0]["result"]).headers["content-disposition"]
        assert header == "attachment; filename=\"x.tif\"; filename*=UTF-8''x.tif"
        archive = client.get("/api/results.zip?ids=" + ",".join(j["id"] for j in done))
    entries = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert entries == ["x.tif", "y.tif", "z.tif", "upload.tif"]
    outside = [p for p in tmp_path.rglob("*") if p.name in ("x.dng", "x.tif", "y.dng", "z.dng")]
    assert outside == []


def test_zip_of_two_results_with_the_same_name(
    tmp_path: Path, tiny_models: Path, dng: bytes
) -> None:
    with running(serve_config(tmp_path / "work", tiny_models)) as client:
        jobs = upload(client, ("a.dng", dng), ("a.dng", dng), ("bad.dng", b"hello")).json()["jobs"]
        ids = [wait_until(client, j["id"], FINAL)["id"] for j in jobs]
        res = client.get("/api/results.zip?ids=" + ",".join(ids))
        assert res.status_code == 200 and res.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(res.content)) as archive:
            assert archive.namelist() == ["a.tif", "a (2).tif"]
            image = tifffile.imread(io.BytesIO(archive.read("a (2).tif")))
        assert image.dtype == np.uint16
        assert files_under(tmp_path / "work" / "zips") == []  # the zip went once sent
        assert client.get("/api/results.zip?ids=nope").status_code == 404


def test_queue_runs_one_at_a_time_and_shows_positions(
    tmp_path: Path, tiny_models: Path, dng: bytes
) -> None:
    release = threading.Event()
    with running(serve_config(tmp_path / "work", tiny_models), convert=gated(release)) as client:
        ids = [
            j["id"] for j in upload(client, *[(f"{k}.dng", dng) for k in range(3)]).json()["jobs"]
        ]
        first = wait_until(client, ids[0], {"running"})
        states = [client.get(f"/api/jobs/{i}").json() for i in ids[1:]]
        assert first["position"] is None
        assert [(j["state"], j["position"]) for j in states] == [("queued", 1), ("queued", 2)]
        release.set()
        assert [wait_until(client, i, FINAL)["state"] for i in ids] == ["done"] * 3


def test_a_client_that_stops_asking_has_its_jobs_cancelled(
    tmp_path: Path, tiny_models: Path, dng: bytes
) -> None:
    work = tmp_path / "work"
    release = threading.Event()
    config = serve_config(work, tiny_models, idle_seconds=1)
    with running(config, convert=gated(release)) as client:
        ids = [j["id"] for j in upload(client, ("a.dng", dng), ("b.dng", dng)).json()["jobs"]]
        time.sleep(2.5)  # no request: the page was closed
        jobs = [client.get(f"/api/jobs/{i}").json() for i in ids]
        assert [j["state"] for j in jobs] == ["cancelled", "cancelled"], jobs
        assert "stopped asking" in jobs[1]["error"]
        assert files_under(work / "jobs") == []
        # The queue goes on for others.
        release.set()
        again = upload(client, ("c.dng", dng)).json()["jobs"][0]
        assert wait_until(client, again["id"], FINAL)["state"] == "done"


def test_delete_cancels_a_queued_job(tmp_path: Path, tiny_models: Path, dng: bytes) -> None:
    release = threading.Event()
    with running(serve_config(tmp_path / "work", tiny_models), convert=gated(release)) as client:
        ids = [j["id"] for j in upload(client, ("a.dng", dng), ("b.dng", dng)).json()["jobs"]]
        res = client.delete(f"/api/jobs/{ids[1]}")
        assert res.json()["state"] == "cancelled"
        release.set()
        assert wait_until(client, ids[0], FINAL)["state"] == "done"
        assert client.get(f"/api/jobs/{ids[1]}/result").status_code == 409


def test_a_result_is_deleted_after_its_download(
    tmp_path: Path, tiny_models: Path, dng: bytes
) -> None:
    work = tmp_path / "work"
    with running(serve_config(work, tiny_models, download_grace=0)) as client:
        kept, fetched = upload(client, ("kept.dng", dng), ("fetched.dng", dng)).json()["jobs"]
        fetched = wait_until(client, fetched["id"], FINAL)
        wait_until(client, kept["id"], FINAL)
        assert client.get(fetched["result"]).status_code == 200
        deadline = time.monotonic() + 10
        while client.get(f"/api/jobs/{fetched['id']}").status_code != 404:
            assert time.monotonic() < deadline, "not deleted after its download"
            time.sleep(0.05)
        assert not (work / "jobs" / fetched["id"]).exists()
        assert files_under(work / "jobs" / kept["id"]) != []  # not downloaded: kept


def test_results_are_deleted_after_keep_minutes(
    tmp_path: Path, tiny_models: Path, dng: bytes
) -> None:
    work = tmp_path / "work"
    with running(serve_config(work, tiny_models, keep_minutes=1 / 60)) as client:
        job = upload(client, ("a.dng", dng), ("b.txt", b"a note")).json()["jobs"][0]
        assert wait_until(client, job["id"], FINAL)["state"] == "done"
        deadline = time.monotonic() + 10
        while (res := client.get(f"/api/jobs/{job['id']}")).status_code != 404:
            assert time.monotonic() < deadline, "not deleted after --keep"
            time.sleep(0.1)
        assert "deleted" in res.json()["error"]
        assert files_under(work / "jobs") == []
        assert client.get(f"/api/jobs?client={CLIENT}").json()["jobs"] == []


def test_shutdown_deletes_every_file(tmp_path: Path, tiny_models: Path, dng: bytes) -> None:
    work = tmp_path / "work"
    release = threading.Event()
    with running(serve_config(work, tiny_models), convert=gated(release)) as client:
        upload(client, ("a.dng", dng), ("b.dng", dng))
        assert files_under(work / "jobs") != []
    assert not (work / "jobs").exists() and not (work / "zips").exists()


def test_bad_options_are_refused_and_the_upload_removed(
    tmp_path: Path, tiny_models: Path, dng: bytes
) -> None:
    work = tmp_path / "work"
    with running(serve_config(work, tiny_models)) as client:
        for fields, words in [
            ({"ratio": "bright"}, "neither 'auto' nor a number"),
            ({"ratio": "10", "target_exposure": "4"}, "not both"),
            ({"format": "jpeg"}, "format must be one of tiff, png, dng"),
            ({"color_space": "cmyk"}, "color_space must be one of"),
        ]:
            res = upload(client, ("a.dng", dng), **fields)
            assert res.status_code == 400 and words in res.json()["error"], res.text
        assert files_under(work / "jobs") == []


def test_token_is_needed_everywhere_when_set(tmp_path: Path, tiny_models: Path) -> None:
    token = "s3cret-token"
    with running(serve_config(tmp_path / "work", tiny_models, token=token)) as client:
        for path in ("/", "/static/app.js", "/api/config", f"/api/jobs?client={CLIENT}"):
            assert client.get(path).status_code == 401, path
        assert "token" in client.get("/api/config").json()["error"]
        assert (
            client.get("/api/config", headers={"x-sidraw-token": "wrong-token"}).status_code == 401
        )
        assert client.get("/api/config", headers={"x-sidraw-token": token}).status_code == 200
        bearer = {"authorization": f"Bearer {token}"}
        assert client.get("/api/config", headers=bearer).status_code == 200
        page = client.get(f"/?token={token}")  # the printed link: the page sets a cookie ...
        assert page.status_code == 200 and "httponly" in page.headers["set-cookie"].lower()
        assert client.get("/static/style.css").status_code == 200  # ... that its assets carry


def test_page_and_assets_are_served_by_sidraw_itself(tmp_path: Path, tiny_models: Path) -> None:
    with running(serve_config(tmp_path / "work", tiny_models)) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in ("/static/app.js", "/static/style.css"):
            assert client.get(asset).status_code == 200
        assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
        # A loopback server answers loopback names only (DNS rebinding).
        assert client.get("/", headers={"host": "attacker.example"}).status_code == 400
        assert client.get("/api/config").json()["max_upload"] == 200_000_000


def test_sidraw_serve_prints_its_address_and_deletes_its_folder_at_exit(
    tmp_path: Path, tiny_models: Path
) -> None:
    import json
    import os
    import queue
    import signal
    import subprocess
    import sys
    import urllib.request

    temp = tmp_path / "tmp"
    temp.mkdir()
    command = [sys.executable, "-m", "sidraw", "serve", "--port", "0", "--model",
               str(tiny_models), "--device", "cpu", "--threads", "1"]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(temp)}
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    try:
        line = lines.get(timeout=60)
        assert line.startswith("sidraw serve: http://127.0.0.1:"), line
        url = line.split()[-1]
        with urllib.request.urlopen(url + "api/config", timeout=10) as res:
            assert json.load(res)["version"] == __version__
        assert len(list(temp.glob("sidraw-serve-*"))) == 1  # its work folder
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130  # as any sidraw command that is interrupted
    assert list(temp.iterdir()) == []


def test_listening_beyond_loopback_warns_and_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from sidraw.serve import server
    from sidraw.serve.config import ServeConfig

    real_bind = server.bind
    monkeypatch.setattr(server, "bind", lambda host, port: real_bind("127.0.0.1", 0))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    said: list[str] = []
    warned: list[str] = []
    server.run_server(ServeConfig(host="0.0.0.0", port=0), said.append, warned.append)
    assert warned and "beyond this machine" in warned[0]
    assert "?token=" in said[0]
