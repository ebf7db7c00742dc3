"""The admin API's documentation: /admin/openapi.json is a valid OpenAPI 3.1 document
whose `servers` entry is this server, and /admin/docs renders it with Swagger UI from
assets this server serves itself (no CDN), under a CSP without 'unsafe-inline' or
'unsafe-eval' that still forbids framing (RFC 9700 §4.16). The page needs no token; the
API it documents still does (RFC 6750 §3.1).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests
from openapi_spec_validator import validate

CHROMIUM = "/usr/bin/chromium"


class AssetLinks(HTMLParser):
    """Every `src` and `href` of a page, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


def csp_directives(header: str) -> dict[str, list[str]]:
    """`{"script-src": ["'self'"], ...}` from a Content-Security-Policy header."""
    directives = {}
    for part in header.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


def test_openapi_document_is_valid_and_names_this_server(server):
    response = server.get("/admin/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)  # raises OpenAPIValidationError on an invalid document
    assert document["openapi"] == "3.1.0"
    # The issuer; the paths carry /admin, so issuer + path is the operation's URL.
    assert [entry["url"] for entry in document["servers"]] == [server.base_url]
    assert "/admin/clients" in document["paths"]


def test_docs_page_and_every_asset_it_references_load_from_this_server(server):
    page = server.get("/admin/docs")  # no Authorization header: the page holds no data
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    links = AssetLinks()
    links.feed(page.text)
    assert len(links.urls) >= 3  # stylesheet, Swagger UI bundle, our init script
    origin = urlsplit(server.base_url)
    for url in links.urls:
        absolute = urljoin(page.url, url)
        parts = urlsplit(absolute)
        assert (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc), url
        assert parts.path.startswith("/admin/docs/static/"), url
        asset = requests.get(absolute, timeout=30)
        assert asset.status_code == 200, url
        assert asset.content, url
    init = server.get("/admin/docs/static/init.js")
    assert init.headers["content-type"].startswith("text/javascript")
    assert '"/admin/openapi.json"' in init.text


def test_docs_page_csp_allows_only_its_own_scripts_and_forbids_framing(server):
    page = server.get("/admin/docs")
    header = page.headers["content-security-policy"]
    directives = csp_directives(header)
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["connect-src"] == ["'self'", server.base_url]
    assert directives["frame-ancestors"] == ["'none'"]
    assert "'unsafe-eval'" not in header and "'unsafe-inline'" not in header
    assert "*" not in header
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"


def test_docs_assets_are_a_fixed_list_and_the_api_still_needs_a_token(server):
    for name in ["swagger-editor-bundle.js", "LICENSE", "..%2F__init__.py", "index.html"]:
        response = server.get(f"/admin/docs/static/{name}")
        assert response.status_code == 404, name
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"] == "not_found"
    assert server.get("/admin/clients").status_code == 401


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright; fails (never skips) when it is not installed."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_docs_page_renders_every_operation_in_a_browser_under_its_csp(server, chromium):
    context = chromium.new_context()
    context.set_default_timeout(60_000)
    page = context.new_page()
    requested: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        page.goto(server.url("/admin/docs"))
        page.wait_for_selector(".opblock-summary-path[data-path='/admin/audit']")
        paths = page.eval_on_selector_all(
            ".opblock-summary-path", "nodes => nodes.map(n => n.dataset.path)"
        )
    finally:
        context.close()
    document = server.get("/admin/openapi.json").json()
    assert set(paths) == set(document["paths"])
    assert problems == []  # a CSP violation is a console error
    outside = [url for url in requested if not url.startswith(server.base_url + "/")]
    assert outside == [], "the page loaded something from elsewhere"
