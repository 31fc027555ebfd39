"""The GraphQL schema: an Apollo Federation v2 subgraph over the call history."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

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
from strawberry.federation.schema import FederationAny
from strawberry.schema.config import StrawberryConfig
from strawberry.types.info import Info

from gateway.context import Context
from gateway.errors import BadUserInput, OperationTooComplex
from gateway.schema.query import Query
from gateway.schema.subscription import Subscription
from gateway.schema.types import DATETIME_SCALAR, Call, DateTime

__all__ = ["build_schema", "graphql_core_schema", "print_client_sdl", "print_sdl"]

# What Apollo Federation adds to a subgraph's SDL: routers need it, client tools cannot
# load it (`@link` and `@key` are directives they do not know; `_Any` and `_FieldSet` are
# scalars that codegen's strictScalars has no type for). Clients never query any of it.
FEDERATION_TYPES = frozenset(
    {"_Any", "_Entity", "_Service", "_FieldSet", "FieldSet", "link__Import", "link__Purpose"}
)
FEDERATION_FIELDS = frozenset({"_entities", "_service"})
# The types a router may send to `_entities`: those with a `@key` and `resolve_reference`.
ENTITY_TYPES = frozenset({"Call"})


class _Subgraph(strawberry.federation.Schema):
    """The federation schema, with an `_entities` that checks each representation first.

    Strawberry's own resolver indexes its type map with the representation's
    `__typename` and lets a missing, unknown or non-entity type name escape as a
    `KeyError`, failing the whole field as an internal error. A router only sends what
    the supergraph says; anyone can send anything. A representation that names no
    entity of this subgraph is a `BAD_USER_INPUT` error at its own index (as
    `@apollo/subgraph` words it: there is no such entity type), and the others resolve.

    The representations come in variables, where no document limit sees them: a 1 MB
    request held 17,000 references to one call, a 57 MB answer that took the event
    loop 12 s (`/healthz` stalled 9.5 s). So an operation may ask for at most
    `GATEWAY_MAX_ENTITIES` in all its `_entities` fields together, else the field is
    `OPERATION_TOO_COMPLEX` before any of them is resolved.
    """

    def entities_resolver(
        self, info: Info, representations: list[FederationAny]
    ) -> list[FederationAny]:
        context: Context = info.context
        context.entities_asked += len(representations)
        if context.entities_asked > context.max_entities:
            raise OperationTooComplex(
                f"The operation asks for more than {context.max_entities} entities.",
                limit="maxEntities",
            )
        results: list[Any] = [None] * len(representations)
        indices: list[int] = []
        valid: list[FederationAny] = []
        for index, representation in enumerate(representations):
            typename = (
                representation.get("__typename") if isinstance(representation, dict) else None
            )
            if isinstance(typename, str) and typename in ENTITY_TYPES:
                indices.append(index)
                # A copy: strawberry pops `__typename` from what it is given.
                valid.append(FederationAny(dict(representation)))  # type: ignore[call-overload]
            else:
                results[index] = BadUserInput(
                    "Each representation needs a `__typename` naming an entity type of "
                    f"this subgraph ({', '.join(sorted(ENTITY_TYPES))})."
                )
        resolved = super().entities_resolver(info, valid) if valid else []
        for index, result in zip(indices, resolved, strict=True):
            results[index] = result
        return _one_refusal(results)  # type: ignore[return-value]


async def _one_refusal(results: list[Any]) -> list[Any]:
    """The entities, with one OPERATION_TOO_COMPLEX for all those past the operation's
    upstream-request limit, the others past it null.

    The limit is per operation, so every reference past it is refused for the same
    reason: 1,000 unknown ids were 1,000 errors (210 KB). The federation spec lets an
    entity be null with an error at its index; one error says it once.
    """
    settled = await asyncio.gather(*(_settled(result) for result in results))
    refused = False
    for index, result in enumerate(settled):
        if isinstance(result, OperationTooComplex):
            settled[index] = None if refused else result
            refused = True
    return settled


async def _settled(result: Any) -> Any:
    # An entity, or the error that is its entry (graphql-core raises an entry that is
    # an exception at its index, as strawberry's own resolver relies on).
    if not inspect.isawaitable(result):
        return result
    try:
        return await result
    except Exception as exc:  # each entry's error is its own, at its index
        return exc


def build_schema() -> strawberry.federation.Schema:
    """Build the schema; cheap enough to call once per app."""
    return _Subgraph(
        query=Query,
        subscription=Subscription,
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
