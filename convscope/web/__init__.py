"""The gallery: browse an atlas in a web browser, live (:func:`create_app`, served by
``convscope serve``) or as static files (:func:`export_static`, ``convscope export``).

>>> from convscope.web import create_app
>>> app = create_app("atlas/")      # a Starlette app; run it with uvicorn
"""
from .app import create_app
from .export import export_static
from .gallery import Gallery, NotFound

__all__ = ["create_app", "export_static", "Gallery", "NotFound"]
