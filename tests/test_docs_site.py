"""The built docs site in a real headless Chromium, served on 127.0.0.1 as a web server would (not file://):
the home page and a deep page render, the navigation reaches every page of mkdocs.yml, the search box finds
"champion", and no page asks another host for anything."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from mlflow_ui import need_chromium

from conftest import REPO_ROOT
from docs_browser import Browser
from docs_pages import headings, nav_pages

# The page's title as shown: its h1 without the permalink sign.
HEADLINE = """(() => {
  const h1 = document.querySelector('article h1');
  if (!h1) return null;
  const shown = h1.cloneNode(true);
  shown.querySelectorAll('.headerlink').forEach(link => link.remove());
  return shown.textContent.trim();
})()"""


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site_url(tmp_path_factory):
    need_chromium()
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(site_url):
    with Browser() as browser:
        yield browser


def page_url(site_url: str, page: str) -> str:
    return site_url if page == "index.md" else f"{site_url}{page.removesuffix('.md')}/"


def plain(heading: str) -> str:
    return re.sub(r"`|\*\*?", "", heading).strip()


def test_the_home_page_and_a_deep_page_render(browser, site_url):
    browser.goto(site_url)
    assert browser.wait_for(HEADLINE) == "doveseg"
    assert browser.evaluate("document.title").startswith("doveseg")
    assert browser.evaluate(
        "[...document.querySelectorAll('article img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    browser.goto(f"{site_url}configuration/")
    assert browser.wait_for(HEADLINE) == "Configuration reference"
    cells = browser.evaluate("[...document.querySelectorAll('article td code')].map(c => c.textContent)")
    assert "train_paddle.epochs" in cells and "mlflow.registered_models.serving" in cells


def test_the_navigation_reaches_every_page_of_mkdocs_yml(browser, site_url):
    pages = nav_pages(yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())["nav"])
    browser.goto(site_url)
    browser.wait_for(HEADLINE)
    linked = browser.evaluate(
        "[...document.querySelectorAll('nav.md-nav--primary a.md-nav__link[href]')].map(a => a.href.split('#')[0])"
    )
    assert set(linked) == {page_url(site_url, page) for page in pages}
    for page in pages:  # each one opens on its own heading
        browser.goto(page_url(site_url, page))
        assert browser.wait_for(HEADLINE) == plain(headings(f"docs/{page}")[0]), page


def test_the_search_box_finds_champion(browser, site_url):
    browser.goto(site_url)
    browser.wait_for(HEADLINE)
    browser.evaluate("document.querySelector('input.md-search__input').focus()")
    browser.type("champion")
    results = browser.wait_for(
        "[...document.querySelectorAll('.md-search-result__item a.md-search-result__link')]"
        ".map(a => [a.href, a.textContent.trim()])",
        timeout_s=30,
    )
    found = {href.split("?")[0].split("#")[0] for href, _ in results}
    assert {f"{site_url}experiments/", f"{site_url}serving/"} <= found, json.dumps(results)[:2000]
    meta = browser.evaluate("document.querySelector('.md-search-result__meta').textContent")
    assert re.match(r"\d+ matching documents?", meta), meta
    assert browser.evaluate("document.querySelectorAll('.md-search-result mark').length") > 0  # highlighted


def test_no_page_asked_another_host_for_anything(browser, site_url):
    test_the_home_page_and_a_deep_page_render(browser, site_url)
    assert browser.requested, "the browser recorded no request at all"
    elsewhere = [url for url in browser.requested if not url.startswith((site_url, "data:", "blob:", "about:"))]
    assert elsewhere == []
    # The recorder sees a request to another host when a page makes one (offline, it just fails).
    planted = "http://fonts.invalid/x.png"
    browser.evaluate(f"document.body.appendChild(Object.assign(new Image(), {{src: '{planted}'}})) && 1")
    for _ in range(100):  # each call reads the browser's events that came before its answer
        if planted in browser.requested:
            break
        time.sleep(0.05)
        browser.evaluate("1")
    assert planted in browser.requested
