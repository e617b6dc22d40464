"""`/docs`: a plain page that says where the API is described (`/openapi.json`) and lists its endpoints.

FastAPI's own /docs (Swagger UI) and /redoc load their scripts from a CDN and stay blank offline, so the server
answers this page instead, built from the same OpenAPI description, with nothing to fetch.
"""

from __future__ import annotations

import html

METHODS = ("get", "post", "put", "delete", "patch")


def docs_page(spec: dict, openapi_url: str) -> str:
    e = html.escape
    rows = []
    for path, item in spec.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                summary = item[method].get("summary", "")
                rows.append(
                    f"<tr><td><code>{method.upper()}</code></td><td><code>{e(path)}</code></td>"
                    f"<td>{e(summary)}</td></tr>"
                )
    info = spec.get("info", {})
    title = f"{info.get('title', 'API')} {info.get('version', '')}".strip()
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">',
            f"<title>{e(title)}: API</title>",
            "<style>body{font:1rem system-ui,sans-serif;margin:1.5rem;max-width:60rem}"
            "td{padding:.25rem .6rem;border-bottom:1px solid #d0d4d9;vertical-align:top}</style></head><body>",
            f"<h1>{e(title)}: API</h1>",
            f'<p>The API is described in <a href="{e(openapi_url)}">openapi.json</a> '
            f"(OpenAPI {e(spec.get('openapi', ''))}): load it into any OpenAPI viewer or client generator. "
            "This server loads nothing from the network, so it has no interactive Swagger UI or ReDoc page.</p>",
            "<table><thead><tr><th>method</th><th>path</th><th>what it does</th></tr></thead><tbody>",
            *rows,
            "</tbody></table>",
            '<p><a href="./">Back to the page</a></p>',
            "</body></html>",
        ]
    )
