"""The GraphQL schema: an Apollo Federation v2 subgraph over the call history."""

from __future__ import annotations

import strawberry
from graphql import GraphQLSchema
from strawberry.schema.config import StrawberryConfig

from gateway.schema.query import Query
from gateway.schema.types import DATETIME_SCALAR, Call, DateTime

__all__ = ["build_schema", "graphql_core_schema", "print_sdl"]


def build_schema() -> strawberry.federation.Schema:
    """Build the schema; cheap enough to call once per app."""
    return strawberry.federation.Schema(
        query=Query,
        types=[Call],
        federation_version="2.5",
        config=StrawberryConfig(scalar_map={DateTime: DATETIME_SCALAR}),
    )


def graphql_core_schema(schema: strawberry.Schema) -> GraphQLSchema:
    """The graphql-core schema strawberry builds.

    The endpoint drives graphql-core directly (parse and validation caches, its own
    error masking and status codes); `_schema` is where strawberry keeps it.
    """
    return schema._schema


def print_sdl(schema: strawberry.Schema) -> str:
    """The SDL as `export-schema` prints it and `schema.graphql` holds it."""
    return schema.as_str() + "\n"
