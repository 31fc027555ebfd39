"""The GraphQL schema: an Apollo Federation v2 subgraph over the call history."""

from __future__ import annotations

import strawberry
from graphql import (
    DefinitionNode,
    DirectiveNode,
    DocumentNode,
    FieldDefinitionNode,
    GraphQLSchema,
    SchemaDefinitionNode,
    TypeDefinitionNode,
    build_ast_schema,
    parse,
    print_schema,
)
from graphql.language import Visitor, visit
from strawberry.schema.config import StrawberryConfig

from gateway.schema.query import Query
from gateway.schema.types import DATETIME_SCALAR, Call, DateTime

__all__ = ["build_schema", "graphql_core_schema", "print_client_sdl", "print_sdl"]

# What Apollo Federation adds to a subgraph's SDL: routers need it, client tools cannot
# load it (`@link` and `@key` are directives they do not know; `_Any` and `_FieldSet` are
# scalars that codegen's strictScalars has no type for). Clients never query any of it.
FEDERATION_TYPES = frozenset(
    {"_Any", "_Entity", "_Service", "_FieldSet", "FieldSet", "link__Import", "link__Purpose"}
)
FEDERATION_FIELDS = frozenset({"_entities", "_service"})


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


def print_client_sdl(schema: strawberry.Schema) -> str:
    """The SDL for client tooling (`export-schema --client`, `schema.client.graphql`).

    The subgraph SDL without what federation adds: no `@link`/`@key` or other directive
    of federation's, no `_entities`/`_service`, no `_Any`/`_Entity`/`_Service`. Plain
    GraphQL that codegen, graphql-inspector, gql and IDEs load as it is.
    """
    document = visit(parse(print_sdl(schema)), _WithoutFederation())
    assert isinstance(document, DocumentNode)
    # Built and printed again, so that it is printed as every GraphQL tool prints SDL.
    return print_schema(build_ast_schema(document)) + "\n"


class _WithoutFederation(Visitor):
    """Drops federation's definitions, fields and directive uses from an SDL document."""

    def enter_directive(self, node: DirectiveNode, *_: object) -> object:
        # Every directive the subgraph SDL uses is federation's (`@link`, `@key`); a
        # directive of our own would need a definition, which client tools read anyway.
        return self.REMOVE

    def enter_directive_definition(self, node: DefinitionNode, *_: object) -> object:
        return self.REMOVE

    def enter_field_definition(self, node: FieldDefinitionNode, *_: object) -> object:
        return self.REMOVE if node.name.value in FEDERATION_FIELDS else None

    def enter(self, node: object, *_: object) -> object:
        if isinstance(node, TypeDefinitionNode) and node.name.value in FEDERATION_TYPES:
            return self.REMOVE
        return None

    def leave_schema_definition(self, node: SchemaDefinitionNode, *_: object) -> object:
        # With only the default root type names left, the schema definition says nothing.
        defaults = {"query": "Query", "mutation": "Mutation", "subscription": "Subscription"}
        if all(defaults[op.operation.value] == op.type.name.value for op in node.operation_types):
            return self.REMOVE
        return None
