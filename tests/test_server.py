"""The guarded protocol takes its limits from the config it is served with, never defaults."""

from __future__ import annotations

import asyncio

import pytest
import uvicorn
from uvicorn.server import ServerState

from gateway.server import ConnectionLimits, GatewayConfig, GuardedHttpToolsProtocol


def protocol_for(config: uvicorn.Config) -> GuardedHttpToolsProtocol:
    loop = asyncio.new_event_loop()
    try:
        return GuardedHttpToolsProtocol(config, ServerState(), {}, loop)
    finally:
        loop.close()


async def _app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("never called")


def test_the_protocol_serves_the_limits_of_its_config() -> None:
    limits = ConnectionLimits(max_headers=7, keepalive_timeout=2.5)
    config = GatewayConfig(_app, limits=limits)
    config.load()

    protocol = protocol_for(config)

    assert protocol.limits is limits
    assert protocol.timeout_keep_alive == 2.5


def test_a_config_without_limits_is_refused_rather_than_served_with_defaults() -> None:
    config = uvicorn.Config(_app)
    config.load()

    with pytest.raises(TypeError, match="GatewayConfig"):
        protocol_for(config)
