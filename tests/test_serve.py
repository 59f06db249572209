"""The search service: POST /search (one or several images), GET /, /healthz, only gallery images
served (path traversal 404), clear 4xx for bad uploads, the micro-batcher, the CLI's bad inputs, and a
small bounded load of concurrent clients against a real uvicorn on 127.0.0.1 (no errors, right hits)."""

import asyncio
import io
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from served_gallery import ServerThread, service

from bench.load_test import load
from udon_fast.commands.serve import main as serve_main
from udon_fast.serve import MicroBatcher


@pytest.fixture(scope="module")
def gallery_index(served_gallery):
    return served_gallery[1]


@pytest.fixture(scope="module")
def client(gallery_index):
    app, gallery = service(gallery_index, top=5, max_upload_bytes=20_000, max_files=4)
    with TestClient(app) as http:
        yield http, gallery


def _upload(*items):
    return [("images", item) for item in items]


def _file(path: str):
    return (path.rsplit("/", 1)[-1], open(path, "rb").read(), "image/jpeg")


def test_search_returns_top_k_of_several_images(client):
    http, gallery = client
    chosen = [gallery.paths[3], gallery.paths[40]]
    reply = http.post("/search", files=_upload(*(_file(p) for p in chosen)))
    assert reply.status_code == 200
    body = reply.json()
    assert body["top"] == 5 and len(body["results"]) == 2
    for path, result in zip(chosen, body["results"]):
        assert result["query"] == path.rsplit("/", 1)[-1]
        hits = result["neighbours"]
        assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
        assert hits[0]["path"] == path and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)  # itself first
        assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
        for hit in hits:
            row = gallery.paths.index(hit["path"])
            assert hit["url"] == f"image/{row}" and hit["class"] == hit["path"].split("/")[-2]
            assert http.get(f"/{hit['url']}").content == open(hit["path"], "rb").read()
    assert len(http.post("/search?top=2", files=_upload(_file(chosen[0]))).json()["results"][0]["neighbours"]) == 2
    png = io.BytesIO()
    Image.open(chosen[0]).save(png, format="PNG")
    as_png = http.post("/search", files=_upload(("q.png", png.getvalue(), "image/png"))).json()
    assert as_png["results"][0]["neighbours"][0]["path"] == chosen[0]


def test_page_and_health(client):
    http, gallery = client
    page = http.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and 'fetch("search"' in page.text
    health = http.get("/healthz").json()
    assert health["status"] == "ok" and health["gallery"] == len(gallery.paths) and health["dimension"] == 64


@pytest.mark.parametrize(
    "path",
    [
        "/image/../../../etc/passwd",
        "/image/..%2F..%2F..%2Fetc%2Fpasswd",
        "/image/%2e%2e/%2e%2e/etc/passwd",
        "/image/-1",
        "/image/999999",
        "/image/1.0",
        "/image/%2Fetc%2Fpasswd",
        "/etc/passwd",
        "/../../etc/passwd",
        "/image//etc/passwd",
        "/static/../udon_fast/__init__.py",
        "/image/%C2%B2",
        "/image/%D9%A1",
    ],
)
def test_only_gallery_images_are_served(client, path):
    http, _ = client
    reply = http.get(path)
    assert reply.status_code == 404, (path, reply.status_code)
    assert b"root:" not in reply.content


def test_bad_uploads_get_a_clear_4xx(client):
    http, gallery = client
    good = _file(gallery.paths[0])
    cases = [
        (_upload(("empty.jpg", b"", "image/jpeg")), 400, "empty.jpg: empty file"),
        (_upload(("notes.txt", b"hello, not an image", "text/plain")), 415, "notes.txt: not an image"),
        (_upload(("cut.jpg", good[1][: len(good[1]) // 2], "image/jpeg")), 415, "cut.jpg: not an image"),
        (_upload(("big.jpg", b"\xff\xd8\xff" + b"0" * 30_000, "image/jpeg")), 413, "big.jpg: larger than the 20000"),
        (_upload(*[good] * 5), 413, "5 files; at most 4"),
        (None, 400, "no image"),
    ]
    for files, status, message in cases:
        reply = http.post("/search", files=files) if files else http.post("/search")
        assert reply.status_code == status, (message, reply.text)
        assert message in reply.json()["detail"]
    assert http.post("/search?top=0", files=_upload(good)).status_code == 422


def test_micro_batcher_batches_concurrent_requests():
    release = threading.Event()

    def embed(items):
        release.wait(timeout=30)  # the first batch holds the worker until the others have queued
        return np.array([[item, 2 * item] for item in items], dtype=np.float32)

    async def scenario():
        batcher = MicroBatcher(embed, max_batch=32, max_wait_s=0.0)
        await batcher.start()
        first = asyncio.create_task(batcher.embed([0]))
        while not batcher.batch_sizes:
            await asyncio.sleep(0.001)
        others = [asyncio.create_task(batcher.embed([i, 10 * i])) for i in range(1, 8)]
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(first, *others)
        await batcher.stop()
        return batcher.batch_sizes, results

    sizes, results = asyncio.run(scenario())
    assert sizes == [1, 14]  # seven requests of two images each shared one model call
    assert results[0].tolist() == [[0, 0]]
    for i, rows in enumerate(results[1:], start=1):
        assert rows.tolist() == [[i, 2 * i], [10 * i, 20 * i]]


def test_micro_batcher_failure_fails_that_batch_only():
    calls = []

    def embed(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("model failed")
        return np.zeros((len(items), 2), np.float32)

    async def scenario():
        batcher = MicroBatcher(embed, max_wait_s=0.0)
        await batcher.start()
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.embed([1])
        rows = await batcher.embed([2, 3])
        await batcher.stop()
        return rows

    assert asyncio.run(scenario()).shape == (2, 2)


def test_concurrent_clients_on_a_real_server(gallery_index):
    app, gallery = service(gallery_index, max_wait_s=0.02)
    images = [(p, open(p, "rb").read()) for p in gallery.paths[:16]]
    with ServerThread(app) as server:
        result = asyncio.run(load(server.url, images, clients=8, requests=16, timeout=120))
        health = asyncio.run(_health(server.url))
    assert result["errors"] == [] and result["self_first"] == 16
    assert health["images"] == 16 and health["batches"] < 16  # some requests shared a batch


async def _health(url):
    import httpx

    async with httpx.AsyncClient() as http:
        return (await http.get(f"{url}/healthz")).json()


def test_cli_bad_inputs_name_the_problem(gallery_index, tmp_path, capsys):
    assert serve_main(["--index", str(tmp_path / "missing.faiss")]) == 2
    assert "missing.faiss" in capsys.readouterr().err
    assert serve_main(["--index", str(gallery_index), "--port", "0"]) == 2
    assert "--port must be" in capsys.readouterr().err
