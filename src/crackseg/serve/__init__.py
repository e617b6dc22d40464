"""The web service and page behind `crackseg serve`: `create_app(segmenter)` returns the FastAPI app.

`app` builds it; `routes` holds the endpoints, `analysis` what they compute, `store` the kept results and
`security` the Host/Origin and upload-size guards; `server` runs it under uvicorn and stops it on Ctrl+C.
"""

from crackseg.serve.app import create_app

__all__ = ["create_app"]
