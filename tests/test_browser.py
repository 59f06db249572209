"""The service's page and a gallery page in a real browser: Debian's headless Chromium driven by
Playwright's Python API (never `playwright install`: the system browser's executable is used).
Opens the served page, uploads an image and checks that its top-k images render (decoded, non-zero
size), shows an upload error; opens a gallery page from disk and checks its thumbnails and marks.
Screenshots land in the test's tmp folder (docs/ holds copies).  Skipped, with the reason, only where
Chromium is not installed (`.ci/run` installs it with apt-get)."""

import shutil
from pathlib import Path

import pytest
from served_gallery import ServerThread, service

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
]
RENDERED = """sel => { const imgs = [...document.querySelectorAll(sel)];
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0; }"""

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"no browser: {CHROMIUM} is not installed "
    "(apt-get install -y chromium; .ci/run does this and these tests skip only when "
    "that install fails)",
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield chromium
        chromium.close()


def _rendered(page, selector: str, count: int) -> int:
    page.wait_for_function(f"({RENDERED})({selector!r}) >= {count}", timeout=60_000)
    return page.evaluate(f"({RENDERED})({selector!r})")


def test_served_page_uploads_and_shows_the_top_k(browser, served_gallery, tmp_path):
    run, index = served_gallery
    app, gallery = service(index, top=5)
    query = gallery.paths[5]
    with ServerThread(app) as server:
        page = browser.new_page(viewport={"width": 1200, "height": 700})
        page.goto(server.url + "/")
        assert "Pick or drop" in page.inner_text("body")
        page.set_input_files("#file", query)
        assert _rendered(page, "#results figure.hit img", 5) == 5
        assert _rendered(page, "#results figure.query img", 1) == 1
        first = page.get_attribute("#results figure.hit img", "alt")
        assert first == f"rank 1: {query}"
        assert "#1 · 1.000" in page.inner_text("#results figure.hit figcaption")
        page.screenshot(path=str(tmp_path / "serve_page.png"), full_page=True)
        bad = tmp_path / "notes.txt"
        bad.write_text("not an image")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#status.error", timeout=30_000)
        assert "notes.txt: not an image" in page.inner_text("#status")
        assert page.query_selector_all("#results figure") == []
        page.close()


def test_gallery_page_renders_its_thumbnails(browser, served_gallery, tmp_path):
    run, _ = served_gallery
    folder = tmp_path / "moved_gallery"  # a moved copy: relative links only
    shutil.copytree(run / "gallery", folder)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto((folder / "index.html").as_uri())
    page.click("text=birds")
    page.wait_for_load_state()
    assert page.url.endswith("/birds.html")
    sample = 4  # the run's --gallery 4
    assert _rendered(page, "figure.query img", sample) >= sample
    hits = _rendered(page, "figure.hit img", sample * 5)
    assert hits >= sample * 5 and hits == len(page.query_selector_all("figure.hit img"))
    marks = page.locator("figure.hit .mark").all_inner_texts()
    assert len(marks) == hits and all(m in ("✓ correct", "✗ wrong") for m in marks)
    assert page.locator("figure.correct").count() + page.locator("figure.wrong").count() == hits
    page.screenshot(path=str(tmp_path / "gallery_page.png"), full_page=True)
    page.goto((folder / "index.html").as_uri())
    page.screenshot(path=str(tmp_path / "gallery_index.png"), full_page=True)
    page.close()
