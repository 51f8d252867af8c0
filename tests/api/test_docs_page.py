"""`/docs`: Swagger UI served by the service itself, every asset from the app, nothing from a CDN."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import fakeredis

from ukcancel.assemble import create_api, create_runtime
from ukcancel.settings import Settings


class AssetUrls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_docs_page_renders_with_assets_the_app_serves_itself() -> None:
    runtime = create_runtime(Settings(), connection=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    client = create_api(runtime=runtime).test_client()
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "SwaggerUIBundle(config)" in html
    assert '"/openapi.json"' in html  # the document it shows is this service's

    parser = AssetUrls()
    parser.feed(html)
    assert {url.rsplit("/", 1)[-1] for url in parser.urls} >= {
        "swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"
    }
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{url} is not served by the app"
        asset = client.get(urljoin("/docs", url))
        assert asset.status_code == 200, url
        assert len(asset.get_data()) > 1000, url
    bundle = client.get("/docs/assets/swagger-ui-bundle.js").get_data(as_text=True)
    assert "openapi" in bundle.lower() and "3.1" in bundle  # Swagger UI 5: renders OpenAPI 3.1 documents
    runtime.connection.close()


def test_docs_are_open_and_not_rate_limited() -> None:
    runtime = create_runtime(Settings(api_rate_limit="2 per minute"),
                             connection=fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    client = create_api(runtime=runtime).test_client()
    statuses = {client.get(path).status_code for path in ["/docs", "/docs/assets/swagger-ui.css"] * 3}
    assert statuses == {200}
    runtime.connection.close()
