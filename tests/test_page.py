"""The static leaderboard page: content and escaping, and its sorting/filtering checked in a real headless Chromium.

The browser tests need a Chromium binary (Debian: ``apt-get install -y chromium``); they skip with that hint
when none is found. They load the page from a file with ``--dump-dom``, which prints the DOM after the
page's own script ran, and drive the page through the URL fragment it supports (``#sort=...&filter=...``)
or through a tiny injected script that clicks a header.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_leaderboard import make_record

from leaderboard.page import model_card_url, render_page, write_page
from leaderboard.record import Record

EVIL = "<script>alert(1)</script>"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _records() -> list[Record]:
    """Three smoke records; rank order zeta, EVIL, alpha; alphabetical order EVIL ('<' first), alpha, zeta."""
    evil = make_record(EVIL, score=0.5)
    evil.submission["source"] = "hf://someone/evil-surrogate@abc123"
    return [make_record("alpha", score=0.2), evil, make_record("zeta", score=0.9, n_runs=2)]


# --- content without a browser ---------------------------------------------------------------------------------------


def test_page_escapes_record_text() -> None:
    recs = _records()
    recs[0].submission["metadata"]["recipe"] = '"><img src=x onerror=alert(2)>'
    page = render_page(recs, title="<b>board</b>")
    assert EVIL not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;board&lt;/b&gt;" in page
    assert page.count("<script>") == 1  # the page's own script only


def test_page_content_provenance_and_labels() -> None:
    recs = [*_records(), make_record("cifar-sur", score=0.3, protocol="cifar10")]
    page = render_page(recs)
    assert page.startswith("<!DOCTYPE html>") and "http://" not in page and "<link" not in page
    assert "https://" in page  # only the model card link
    assert page.index('data-protocol="cifar10-v1"') < page.index('data-protocol="smoke-digits-v2"')
    assert "SMOKE: not benchmark results" in page and page.count('<span class="badge smoke">SMOKE</span>') == 3
    for r in recs:
        assert r.protocol["sha256"] in page and r.data["sha256"] in page and r.submission["sha256"] in page
    assert 'href="https://huggingface.co/someone/evil-surrogate/tree/abc123"' in page
    for label in ("git sha", "CUDA / cuDNN", "device", "precision", "seed", "wall time", "1.2 s", "fp32"):
        assert label in page
    assert "90.00 ± 1.00" in page  # seed-group score with its std
    assert render_page(recs) == render_page(list(reversed(recs)))  # a pure function of the records
    assert "No results yet" in render_page([])


def test_page_ranks_each_group_in_its_own_table_and_shows_target_weights() -> None:
    recs = [make_record("a", score=0.4), make_record("b", score=0.5),
            make_record("jpeg", score=0.9, data_sha256="e" * 64)]  # fmt: skip
    page = render_page(recs)
    assert page.count('<table class="tb">') == 2 and page.count("<h3>Ranked separately: ") == 2
    assert "2 ranking groups" in page and f"data sha256 {'e' * 10}" in page
    for t, info in recs[0].targets.items():  # every target's weights hash, in the citation and each row's details
        assert page.count(info["sha256"]) == 1 + len(recs), t
    one = render_page(recs[:2])
    assert one.count('<table class="tb">') == 1 and "Ranked separately" not in one and "ranking groups" not in one


def test_model_card_url() -> None:
    assert model_card_url("hf://owner/repo@v1") == "https://huggingface.co/owner/repo/tree/v1"
    assert model_card_url("hf://owner/repo") == "https://huggingface.co/owner/repo/tree/main"
    assert model_card_url("hf://owner/repo@refs/pr/1") == "https://huggingface.co/owner/repo/tree/refs%2Fpr%2F1"
    for bad in ("/local/folder", "hf://owner", 'hf://o/r"onclick=x', "hf://javascript:alert(1)/x", None):
        assert model_card_url(bad) is None


def test_write_page_is_atomic_and_complete(tmp_path: Path) -> None:
    out = write_page(_records(), tmp_path / "site" / "index.html")
    assert out.read_text() == render_page(_records())
    assert [p.name for p in out.parent.iterdir()] == ["index.html"]


# --- in a real browser ---------------------------------------------------------------------------------------------


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium binary found (Debian/Ubuntu: apt-get install -y chromium); the page's JS is untested")


class _Rows(HTMLParser):
    """Table rows of a dumped DOM: (protocol, surrogate name, hidden) in document order, plus page-level facts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, bool]] = []
        self.hidden_sections: set[str] = set()
        self.scripts = 0
        self.ready = False
        self.sorted: dict[str, str] = {}
        self._protocol = ""
        self._in_name = False
        self._name = ""
        self._row_hidden = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "html":
            self.ready = a.get("data-ready") == "1"
        elif tag == "script":
            self.scripts += 1
        elif tag == "section" and "data-protocol" in a:
            self._protocol = a["data-protocol"] or ""
            if "hidden" in a:
                self.hidden_sections.add(self._protocol)
        elif tag == "th" and a.get("aria-sort"):
            self.sorted[a.get("data-key") or ""] = a["aria-sort"] or ""
        elif tag == "tr" and "data-search" in a:
            self._row_hidden = "hidden" in a
        elif tag == "span" and a.get("class") == "name":
            self._in_name, self._name = True, ""

    def handle_data(self, data: str) -> None:
        if self._in_name:
            self._name += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._in_name:
            self._in_name = False
            self.rows.append((self._protocol, self._name, self._row_hidden))


def _dump(browser: str, page: Path, fragment: str, profile: Path) -> tuple[_Rows, str]:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--dump-dom", page.as_uri() + fragment]  # fmt: skip
    env = {**os.environ, "HOME": str(profile)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0 and "<html" in done.stdout, (
        f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    )
    parser = _Rows()
    parser.feed(done.stdout)
    assert parser.ready, "the page's script did not run (CSP hash mismatch or a JS error)"
    return parser, done.stdout


def _names(p: _Rows, *, visible_only: bool = False) -> list[str]:
    return [name for _, name, hidden in p.rows if not (visible_only and hidden)]


@pytest.fixture(scope="module")
def browser() -> str:
    return _browser()


def test_browser_rows_sort_and_filter(browser: str, tmp_path: Path) -> None:
    page = write_page(_records(), tmp_path / "index.html")
    profile = tmp_path / "profile"
    plain, dom = _dump(browser, page, "", profile)
    assert _names(plain) == ["zeta", EVIL, "alpha"]  # rank order
    assert not any(hidden for *_, hidden in plain.rows)
    assert plain.scripts == 1 and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # the name stayed text

    by_name, _ = _dump(browser, page, "#sort=surrogate&dir=asc", profile)
    assert _names(by_name) == [EVIL, "alpha", "zeta"] and by_name.sorted == {"surrogate": "ascending"}
    by_score, _ = _dump(browser, page, "#sort=score&dir=asc", profile)
    assert _names(by_score) == ["alpha", EVIL, "zeta"]

    filtered, _ = _dump(browser, page, "#filter=ZET", profile)
    assert _names(filtered) == ["zeta", EVIL, "alpha"]
    assert _names(filtered, visible_only=True) == ["zeta"]
    smoke_only, _ = _dump(browser, page, "#filter=alert", profile)
    assert _names(smoke_only, visible_only=True) == [EVIL]


def test_browser_header_clicks_and_protocol_selector(browser: str, tmp_path: Path) -> None:
    recs = [*_records(), make_record("cifar-sur", score=0.3, protocol="cifar10")]
    html = render_page(recs)
    # inject a script that clicks headers the way a user would; the page's CSP admits it by its hash
    clicks = ("document.querySelector('section[data-protocol=\"smoke-digits-v2\"] th[data-key=\"score\"] button')"
              ".click();document.querySelector('th[data-key=\"score\"]').click();")  # fmt: skip
    digest = base64.b64encode(hashlib.sha256(clicks.encode()).digest()).decode()
    html = html.replace("script-src ", f"script-src 'sha256-{digest}' ").replace(
        "</body>", f"<script>{clicks}</script></body>"
    )
    page = tmp_path / "clicked.html"
    page.write_text(html)
    clicked, _ = _dump(browser, page, "", tmp_path / "profile")
    smoke = [n for proto, n, _ in clicked.rows if proto == "smoke-digits-v2"]
    assert smoke == ["alpha", EVIL, "zeta"]  # first click: score descending, second: ascending
    assert clicked.sorted == {"score": "ascending"}

    page = write_page(recs, tmp_path / "index.html")
    only, _ = _dump(browser, page, "#protocol=cifar10-v1", tmp_path / "profile")
    assert only.hidden_sections == {"smoke-digits-v2"}
    assert [n for proto, n, _ in only.rows if proto not in only.hidden_sections] == ["cifar-sur"]


def test_browser_blocks_scripts_the_page_did_not_ship(browser: str, tmp_path: Path) -> None:
    """Defence in depth: even markup that escaped escaping could not run, because of the CSP script hash."""
    html = render_page(_records()).replace(
        "</body>", "<script>document.documentElement.setAttribute('data-pwned', '1')</script></body>"
    )
    page = tmp_path / "injected.html"
    page.write_text(html)
    _, dom = _dump(browser, page, "", tmp_path / "profile")
    assert 'data-pwned="1"' not in dom and 'data-ready="1"' in dom
