"""The one reader of a request's `Cache-Control`, for every cache the request passes."""

from __future__ import annotations

from starlette.datastructures import Headers


def wants_fresh(headers: Headers) -> bool:
    """`Cache-Control: no-cache`: skip the cache reads and refresh the entries.

    The answer cache, the upstream cache and the entity view all ask here, so one request
    means one thing to each: every directive of every Cache-Control header counts.
    """
    return any(
        part.split("=")[0].strip().lower() == "no-cache"
        for value in headers.getlist("cache-control")
        for part in value.split(",")
    )
