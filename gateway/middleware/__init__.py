"""ASGI middleware: the layers a request passes before routing, outermost first in app.py."""
