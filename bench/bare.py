"""A bare Starlette endpoint that answers every POST with the same bytes: the ceiling of a
Python ASGI server on this machine, to divide the gateway's cache-hit throughput by."""

from __future__ import annotations

import os
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app(body: bytes) -> Starlette:
    async def graphql(request: Request) -> Response:
        # Read the body as a real endpoint must; answer the captured gateway bytes.
        await request.body()
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/graphql", graphql, methods=["POST"])])


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as file:
        captured = file.read()
    uvicorn.run(
        create_app(captured),
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        log_level="warning",
        access_log=False,
    )
