"""GET /admin/docs: Swagger UI over /admin/openapi.json, every asset served by this server.

The assets are Swagger UI 5 (it renders OpenAPI 3.1) as shipped in the `swagger-ui-py`
package's `static/` folder; no CDN is contacted. Only the files the page uses are
served, from a fixed list: any other name under /admin/docs/static/ is a JSON 404.

The page and its assets hold no data, so they need no bearer token; every operation the
page tries out still does (the "Authorize" button takes an access token with scope
`admin`, RFC 6750 §2.1). The page carries its own Content-Security-Policy: scripts,
styles and API calls from 'self' only (no 'unsafe-inline', no 'unsafe-eval'), images
also from `data:` URIs (Swagger UI's icons), framing forbidden as on every HTML page
(RFC 9700 §4.16; `web.middleware` keeps a CSP the page sets).
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

STATIC_URL = "/admin/docs/static"
ASSET_MAX_AGE = 86400  # seconds a browser may reuse an asset (they change with the package)


def _swagger_ui_static() -> Path:
    """The `static/` folder of the installed `swagger-ui-py` (found without importing it,
    whose `__init__` loads its framework handlers). Raises RuntimeError when missing."""
    spec = find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("the swagger-ui-py package is not installed (pip install .)")
    return Path(spec.origin).parent / "static"


# name under /admin/docs/static/ -> media type; the page below uses exactly these.
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
# Our own start-up script: a file, not an inline <script>, so the CSP needs no
# 'unsafe-inline'. `url` is the document; "Try it out" calls its `servers` URL.
INIT_JS = """\
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/admin/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>oauth2_server admin API</title>
<link rel="icon" type="image/png" href="{STATIC_URL}/favicon-32x32.png">
<link rel="stylesheet" href="{STATIC_URL}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{STATIC_URL}/swagger-ui-bundle.js"></script>
<script src="{STATIC_URL}/init.js"></script>
</body>
</html>
"""


def content_security_policy(issuer: str) -> str:
    """The docs page's CSP (W3C CSP Level 3): assets from 'self', API calls to 'self' and
    to the issuer's origin (the document's `servers` URL), framing and forms refused."""
    parts = urlsplit(issuer)
    connect = "'self'"
    if parts.scheme in {"http", "https"} and parts.netloc:
        connect += f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


async def page(request: Request) -> HTMLResponse:
    """GET /admin/docs: the Swagger UI page (HTML, no bearer token needed)."""
    csp = content_security_policy(request.app.state.oauth.issuer)
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": csp})


async def asset(request: Request) -> Response:
    """GET /admin/docs/static/{name}: one Swagger UI asset or our init script; an unknown
    name is 404 (HTTPException, answered as JSON by `web.errors`)."""
    name = request.path_params["name"]
    cache = {"Cache-Control": f"public, max-age={ASSET_MAX_AGE}"}
    if name == "init.js":
        return Response(INIT_JS, media_type="text/javascript; charset=utf-8", headers=cache)
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "no such asset")
    return FileResponse(_swagger_ui_static() / name, media_type=media_type, headers=cache)
