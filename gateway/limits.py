"""Operation limits: what a single GraphQL document may ask of the gateway.

Checked once per document, before execution, and cached with the document's validation
result by the endpoint, so a hostile document costs one walk of its AST however often it
is sent. Every refusal is an `OPERATION_TOO_COMPLEX` error and no upstream request is made.

The upstream estimate counts the list fields that reach the upstream (`calls`,
`callsConnection`), each distinct argument set once, as the per-operation loader
deduplicates them. It is a lower bound (a connection may follow several pages), so the
loader also counts at run time and refuses the request that would pass the limit. `call`
and `_entities` add nothing to it: their ids may all be in the entity view, which costs
no upstream request, and cold ones are batched; only the run-time count knows.

The calls estimate is what the document asks for: each `calls` field's `size` and each
`callsConnection` field's `first` (their defaults when absent), summed over every response
key, since aliases that share one upstream request still serve a copy each. A value in a
variable, or a field under `@skip`/`@include`, counts nothing here; the loader counts every
call served at run time (`OperationLoader.serve`), which is the bound itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
    print_ast,
)

from gateway.calls import MAX_PAGE_SIZE
from gateway.errors import OperationTooComplex

# Root fields that cost at least one upstream request each.
UPSTREAM_FIELDS = frozenset({"calls", "callsConnection"})
# The argument of each list field that says how many calls it serves, and its default.
SERVED_BY = {"calls": ("size", 25), "callsConnection": ("first", 25)}


@dataclass(frozen=True, slots=True)
class OperationLimits:
    """The limits one document must stay within (each is a `GATEWAY_MAX_*` setting)."""

    max_depth: int = 10
    max_aliases: int = 30
    max_tokens: int = 2000
    max_query_bytes: int = 32 * 1024
    max_root_fields: int = 20
    max_upstream_requests: int = 10
    max_calls: int = 5000


def too_complex(message: str, **extensions: object) -> GraphQLError:
    """A GraphQL error carrying the `OPERATION_TOO_COMPLEX` code."""
    error = OperationTooComplex(message, **extensions)
    return GraphQLError(message, original_error=error, extensions=error.extensions)


def parse_document(query: str, limits: OperationLimits) -> DocumentNode | GraphQLError:
    """Parse, refusing documents longer than `max_query_bytes` before reading them and
    documents of more than `max_tokens` tokens before building them.

    The token limit alone counts a comment or a string of any length as one token: a
    900 KB comment took 0.5 s to parse, and 6 such requests at once stalled the loop.
    """
    if _utf8_longer_than(query, limits.max_query_bytes):
        return too_complex(
            f"The document is longer than {limits.max_query_bytes} bytes.", limit="maxQueryBytes"
        )
    max_tokens = limits.max_tokens
    try:
        return parse(query, max_tokens=max_tokens)
    except GraphQLError as error:
        if "Document contains more than" in error.message:
            return too_complex(
                f"The document has more than {max_tokens} tokens.", limit="maxTokens"
            )
        if "nested too deeply" in error.message:
            return too_complex("The document is nested too deeply to parse.", limit="maxDepth")
        return error
    except RecursionError:  # pragma: no cover - graphql-core >= 3.3 stops nesting first
        # The parser recurses once per nesting level; a document nested deeper than
        # Python's stack allows is over any sensible depth limit anyway.
        return too_complex("The document is nested too deeply to parse.", limit="maxDepth")


def _utf8_longer_than(text: str, limit: int) -> bool:
    # A character is 1 to 4 bytes: only text between limit/4 and limit characters long
    # needs encoding to know.
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit or text.isascii():
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


def check_limits(document: DocumentNode, limits: OperationLimits) -> list[GraphQLError]:
    """Every limit a (valid) document exceeds, one error per operation and limit."""
    fragments = {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    errors: list[GraphQLError] = []
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            errors += _check_operation(definition, fragments, limits)
    return errors


def _check_operation(
    operation: OperationDefinitionNode,
    fragments: dict[str, FragmentDefinitionNode],
    limits: OperationLimits,
) -> list[GraphQLError]:
    walk = _Walk(fragments, limits.max_depth)
    root_fields = walk.fields(operation.selection_set)
    walk.measure(operation.selection_set, depth=1)
    name = operation.name.value if operation.name else "anonymous"
    errors: list[GraphQLError] = []
    if walk.deepest > limits.max_depth:
        errors.append(
            too_complex(
                f"Operation `{name}` is nested more than {limits.max_depth} fields deep.",
                limit="maxDepth",
            )
        )
    if walk.aliases > limits.max_aliases:
        errors.append(
            too_complex(
                f"Operation `{name}` uses {walk.aliases} aliases; at most "
                f"{limits.max_aliases} are allowed.",
                limit="maxAliases",
            )
        )
    if len(root_fields) > limits.max_root_fields:
        errors.append(
            too_complex(
                f"Operation `{name}` selects {len(root_fields)} root fields; at most "
                f"{limits.max_root_fields} are allowed.",
                limit="maxRootFields",
            )
        )
    upstream = {_request_key(field) for field in root_fields if field.name.value in UPSTREAM_FIELDS}
    if len(upstream) > limits.max_upstream_requests:
        errors.append(
            too_complex(
                f"Operation `{name}` needs at least {len(upstream)} upstream requests; at most "
                f"{limits.max_upstream_requests} are allowed per operation.",
                limit="maxUpstreamRequests",
            )
        )
    asked = _calls_asked(root_fields)
    if asked > limits.max_calls:
        errors.append(
            too_complex(
                f"Operation `{name}` asks for {asked} calls; at most {limits.max_calls} may "
                "be served per operation.",
                limit="maxCallsPerOperation",
            )
        )
    return errors


def _calls_asked(root_fields: list[FieldNode]) -> int:
    """The calls the root fields ask for, as far as the document alone says."""
    # Fields under one response key are merged by the executor (validation made their
    # arguments equal): they serve once.
    by_key = {(field.alias or field.name).value: field for field in root_fields}
    asked = 0
    for field in by_key.values():
        served_by = SERVED_BY.get(field.name.value)
        if served_by is None or field.directives:
            continue
        argument, count = served_by
        for node in field.arguments or ():
            if node.name.value == argument:
                # A variable counts nothing; an out-of-range value is refused at run time
                # as BAD_USER_INPUT, so it counts only as much as could be served.
                count = int(node.value.value) if isinstance(node.value, IntValueNode) else 0
        asked += min(max(count, 0), MAX_PAGE_SIZE)
    return asked


def _request_key(field: FieldNode) -> tuple[str, tuple[tuple[str, str], ...]]:
    # The same field with the same arguments (in any order, under any alias) is one
    # upstream request: the operation's loader makes it once.
    arguments = sorted((arg.name.value, print_ast(arg.value)) for arg in field.arguments or ())
    return field.name.value, tuple(arguments)


class _Walk:
    """Counts depth and aliases over an operation with its fragments expanded."""

    def __init__(self, fragments: dict[str, FragmentDefinitionNode], max_depth: int) -> None:
        self._fragments = fragments
        self._max_depth = max_depth
        self.deepest = 0
        self.aliases = 0

    def fields(self, selection_set: SelectionSetNode) -> list[FieldNode]:
        """The fields of one selection set, fragments expanded (not their sub-selections)."""
        found: list[FieldNode] = []
        pending = list(selection_set.selections)
        seen: set[str] = set()
        while pending:
            selection = pending.pop(0)
            if isinstance(selection, FieldNode):
                found.append(selection)
            elif isinstance(selection, InlineFragmentNode):
                pending[:0] = selection.selection_set.selections
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self._fragments.get(name)
                # A fragment spread twice in one selection adds no fields.
                if fragment is not None and name not in seen:
                    seen.add(name)
                    pending[:0] = fragment.selection_set.selections
        return found

    def measure(self, selection_set: SelectionSetNode, depth: int) -> None:
        """Record the deepest field and count aliases below `selection_set`."""
        for field in self.fields(selection_set):
            if field.alias is not None:
                self.aliases += 1
            self.deepest = max(self.deepest, depth)
            # Introspection is exempt from the depth limit (GraphiQL's schema query is
            # deeper than any real one); graphql-core's MaxIntrospectionDepthRule bounds it.
            # Past the limit there is nothing more to learn, and recursion stops.
            if (
                field.selection_set is not None
                and not field.name.value.startswith("__")
                and depth <= self._max_depth
            ):
                self.measure(field.selection_set, depth + 1)
