"""``sidraw serve`` without the web stack: the missing-extra message, option checks, upload names.

These run in the README's test command too, where the ``web`` extra is not installed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

import sidraw.serve
from sidraw.cli import app
from sidraw.serve.config import ServeConfig, is_loopback
from sidraw.serve.names import (
    content_disposition,
    display_name,
    result_name,
    stored_suffix,
    unique_names,
)

runner = CliRunner()


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sidraw.serve, "missing_web_extra", lambda: "starlette")
    res = runner.invoke(app, ["serve"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and 'pip install "sidraw[web]"' in lines[0], res.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "70000"], "--port"),
        (["--max-upload", "0"], "--max-upload"),
        (["--keep", "-1"], "--keep"),
        (["--token", "short"], "--token"),
        (["--model", "no/such/model"], "no such file"),
    ],
)
def test_serve_option_errors_exit_2(
    monkeypatch: pytest.MonkeyPatch, args: list[str], words: str
) -> None:
    monkeypatch.setattr(sidraw.serve, "missing_web_extra", lambda: None)
    res = runner.invoke(app, ["serve", *args])
    assert res.exit_code == 2 and words in res.output, res.output


def test_importing_sidraw_and_its_cli_needs_no_web_stack() -> None:
    code = (
        "import sys, sidraw, sidraw.cli, sidraw.serve.config, sidraw.serve.names; "
        "assert not {'starlette', 'uvicorn', 'python_multipart'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_token_is_made_up_beyond_loopback() -> None:
    assert ServeConfig().with_token().token is None
    assert ServeConfig(host="0.0.0.0").with_token().token
    assert ServeConfig(host="0.0.0.0", token="mine-1234").with_token().token == "mine-1234"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7")
    assert not is_loopback("myhost")


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("IMG_0001.ARW", "IMG_0001.ARW"),
        ("../../x.dng", "x.dng"),
        ("..\\..\\Windows\\y.dng", "y.dng"),
        ("/etc/passwd", "passwd"),
        ("a\x00b\nc\r.dng", "a_b_c_.dng"),
        ('we<i>rd:"na|me?*.dng', "we_i_rd__na_me__.dng"),
        ("..", "upload.raw"),
        ("", "upload.raw"),
        (None, "upload.raw"),
        (".hidden.dng", "hidden.dng"),
        ("name. . ", "name"),
        ("é" * 300 + ".RAF", "é" * 116 + ".RAF"),  # 120 characters
    ],
)
def test_uploaded_names_are_plain_names(sent: str | None, shown: str) -> None:
    assert display_name(sent) == shown


def test_stored_suffix_result_name_and_download_header() -> None:
    assert stored_suffix("a.ARW") == ".arw" and stored_suffix("a.exe") == ".raw"
    assert stored_suffix("noext") == ".raw"
    assert result_name("night.ARW", "tiff") == "night.tif"
    assert result_name("night.ARW", "dng") == "night.dng"
    assert content_disposition("nuit étoilée.tif") == (
        "attachment; filename=\"nuit etoilee.tif\"; filename*=UTF-8''nuit%20%C3%A9toil%C3%A9e.tif"
    )
    assert '"' not in content_disposition('a"b.tif').split("filename=")[1][1:-30]
    assert unique_names(["a.tif", "A.tif", "a.tif", "b.tif"]) == [
        "a.tif", "A (2).tif", "a (3).tif", "b.tif",
    ]  # fmt: skip
