"""The gallery: browse an atlas in a web browser, live (:func:`create_app`, run by :func:`serve`
as ``convscope serve`` does) or as static files (:func:`export_static`, ``convscope export``).

>>> from convscope.web import create_app, serve
>>> serve(create_app("atlas/"), host="127.0.0.1", port=8000)      # until Ctrl+C
"""
from .app import create_app
from .export import export_static
from .common import NotFound
from .gallery import Gallery
from .server import serve, server_config

__all__ = ["create_app", "export_static", "serve", "server_config", "Gallery", "NotFound"]
