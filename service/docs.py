"""`/docs`: the OpenAPI document in Swagger UI, served offline from the installed Swagger UI files.

flask-smorest renders the page (`OPENAPI_SWAGGER_UI_PATH`); its script and style sheet URLs point
at this blueprint's static folder, the `swagger_ui_bundle` package's copy of Swagger UI's dist,
so the page needs no CDN (and no network past this service). Swagger UI 5: OpenAPI 3.1 documents.
"""

from __future__ import annotations

from flask import Blueprint
from swagger_ui_bundle import swagger_ui_path

PAGE_PATH = "/docs"
ASSETS_PATH = "/docs/assets"

assets = Blueprint("docs_assets", __name__, static_folder=str(swagger_ui_path), static_url_path=ASSETS_PATH)

CONFIG = {
    "OPENAPI_SWAGGER_UI_PATH": PAGE_PATH,
    "OPENAPI_SWAGGER_UI_URL": ASSETS_PATH + "/",
    # The token typed into "Authorize" lives only as long as the page: persistAuthorization would
    # keep it in the browser's localStorage, readable by any script of this origin, for good.
    "OPENAPI_SWAGGER_UI_CONFIG": {"persistAuthorization": False, "deepLinking": True},
}


def is_docs_path(path: str) -> bool:
    return path == PAGE_PATH or path.startswith(ASSETS_PATH + "/")
