"""The web service and page behind `crackseg serve`: `create_app(segmenter)` returns the FastAPI app."""

from crackseg.serve.app import create_app

__all__ = ["create_app"]
