"""`push` against a real server (uvicorn on 127.0.0.1, the service's own app): the pushed
adapter then answers /classify; refusals show the server's message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.integration.training.server_support import ADMIN_TOKEN, serve_store
from tests.integration.training.synth_data import synth
from training.cli import main
from training.push import PushError, describe, push

TOKEN = ADMIN_TOKEN


@pytest.fixture(scope="module")
def server(backbone_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_store(backbone_file, tmp_path_factory.mktemp("store")) as url:
        yield url


@pytest.fixture(scope="module")
def checkpoint(
    synth_folder: Path, backbone_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("push-runs")
    assert (
        main(
            [
                "train",
                "--dataset",
                "folder",
                "--data-dir",
                str(synth_folder),
                "--backbone",
                f"file:{backbone_file}",
                "--out",
                str(out),
                "--name",
                "sounds",
                "--frames",
                "128",
                "--epochs",
                "1",
                "--method",
                "loaa",
                "--rank",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    return out / "sounds" / "1"


def test_push_activates_and_the_adapter_answers_classify(
    server: str,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN", TOKEN)
    capsys.readouterr()
    assert main(["push", str(checkpoint), "--url", server, "--activate"]) == 0
    assert "the server now serves sounds@1" in capsys.readouterr().out
    clip = tmp_path / "tone.wav"
    sf.write(clip, synth("tone", 1.28, np.random.default_rng(9)), 16_000)
    with clip.open("rb") as f:
        answer = httpx.post(
            f"{server}/classify",
            params={"adapter": "sounds"},
            files={"file": ("tone.wav", f, "audio/wav")},
            timeout=60,
        )
    assert answer.status_code == 200, answer.text
    result = answer.json()["results"][0]
    assert (result["adapter"], result["version"]) == ("sounds", 1)
    assert result["labels"][0]["label"] in {"chirp", "clicks", "noise", "tone"}


def test_push_shows_the_servers_refusal(
    server: str, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["push", str(checkpoint), "--url", server, "--token", "wrong"]) == 2
    err = capsys.readouterr().err
    assert "server refused the upload (403)" in err


def test_push_without_token_says_how(
    checkpoint: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOOKASIDE_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("LOOKASIDE_ADMIN_TOKEN_FILE", raising=False)
    assert main(["push", str(checkpoint), "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "pass --token-file FILE (or --token), or set LOOKASIDE_ADMIN_TOKEN" in err


def test_push_reads_the_token_from_a_file(
    server: str,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--token-file (or $LOOKASIDE_ADMIN_TOKEN_FILE) keeps the token out of ps and history."""
    monkeypatch.delenv("LOOKASIDE_ADMIN_TOKEN", raising=False)
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(f"{TOKEN}\n")
    bad.write_text("wrong\n")
    assert main(["push", str(checkpoint), "--url", server, "--token-file", str(bad)]) == 2
    assert "(403)" in capsys.readouterr().err
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN_FILE", str(good))
    assert main(["push", str(checkpoint), "--url", server]) == 0
    assert "sounds@" in capsys.readouterr().out
    assert (
        main(["push", str(checkpoint), "--url", server, "--token-file", str(tmp_path / "no")]) == 2
    )
    assert "cannot read the token file" in capsys.readouterr().err


def test_push_without_the_servers_backbone_uploads_only_where_it_cannot_ask(
    checkpoint: Path,
) -> None:
    """A server still loading (503 on /info) gets nothing; one older than GET /info (404) gets
    the upload, whose own backbone check then applies."""
    sent: list[str] = []

    def loading(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(503, json={"detail": "the backbone is not loaded yet"})

    with pytest.raises(PushError, match=r"did not say which backbone it runs \(503\)") as exc:
        push(checkpoint, "http://gpu-box", token=TOKEN, transport=httpx.MockTransport(loading))
    assert "the backbone is not loaded yet" in str(exc.value)
    assert sent == ["/info"]

    def older(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        if request.url.path == "/adapters":
            return httpx.Response(201, json={**UPLOADED, "active": True})
        if request.url.path == "/adapters/sounds":
            return httpx.Response(500, text="listing broke")
        return httpx.Response(404, json={"detail": "Not Found"})

    sent.clear()
    pushed = push(checkpoint, "http://gpu-box", token=TOKEN, transport=httpx.MockTransport(older))
    assert sent == ["/info", "/adapters", "/adapters/sounds"]
    assert describe(pushed) == "uploaded sounds@4; the server now serves sounds@4"


UPLOADED = {"name": "sounds", "version": 4, "created": True}
