"""A compiled execution path for the common shape of query: `calls` lists of plain `Call` fields.

graphql-core resolves every field of every call through the generic executor, a few
microseconds each; a 1000-call page with 16 fields is 16,000 of them. For operations that
only select `calls` (any aliases, fragments on `Call`, `@skip`/`@include`, variables,
`__typename`) this module builds the result straight from the upstream JSON with one
projection per selection, planned once per document (the graphql-jit idea).

It is an optimisation, never a second semantics: whenever the operation is unusual (a
variable that does not coerce, an argument the schema path would refuse, an upstream
failure) it returns None and the standard executor answers instead, reusing the upstream
answer the operation already fetched. A record outside the plain shape (an unknown state,
a malformed field) is served here too, through the schema's own field readers
(`schema.types.READERS`), with the same warnings. A differential test compares both paths
byte for byte.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from functools import lru_cache
from typing import Any

import orjson
from graphql import (
    DirectiveNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLIncludeDirective,
    GraphQLSchema,
    GraphQLSkipDirective,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    Visitor,
    visit,
)
from graphql.execution.values import (
    VariableValues,
    get_argument_values,
    get_directive_values,
    get_variable_values,
)

from gateway.calls import (
    CALL_FIELDS,
    MAX_SIP_HEADERS,
    BadRecord,
    CallField,
    CallRecord,
    ListQuery,
    Odd,
    parse_boolean,
    parse_call,
    parse_integer,
    parse_timestamp,
)
from gateway.context import Context, left_out_warning, oversized_page_warning
from gateway.errors import GatewayError
from gateway.schema.query import call_filter, list_query
from gateway.schema.types import READERS, odd_field_warning, serialize_datetime

Row = dict[str, Any]

_CANONICAL_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class Fallback(Exception):
    """This operation, or this upstream answer, is for the standard executor."""


class _OddValue(Exception):
    """A value outside the plain shape: this record is served by the field readers."""


# --- per-field projections: upstream JSON value -> GraphQL result value ------------------
#
# A projection is generated as one Python function per selection (one dict display, no
# call per field for the common cases), compiled once per document and variables shape.
# The helpers below handle what the inline expressions leave to them, with the parser's
# own rules (calls.py), so both paths agree on every value.


def _odd() -> Any:
    raise _OddValue


def _int(value: Any) -> int | None:
    number = parse_integer(value)
    if isinstance(number, Odd):
        raise _OddValue
    return number


def _bool(value: Any) -> bool | None:
    checked = parse_boolean(value)
    if isinstance(checked, Odd):
        raise _OddValue
    return checked


def _choice(value: Any, names: frozenset[str]) -> str | None:
    if value is None:
        return None
    if value.__class__ is not str or value.upper() not in names:
        raise _OddValue
    return value.upper()


def _instant(value: Any) -> str | None:
    if value is None:
        return None
    if value.__class__ is str:
        # Only instant-sized text is memoised: the keys are the upstream's strings.
        return _instant_text(value) if len(value) <= _INSTANT_TEXT else _instant_uncached(value)
    parsed = parse_timestamp(value)
    if isinstance(parsed, Odd) or parsed is None:
        raise _OddValue
    return serialize_datetime(parsed)


# The instants the upstream sends are 20 to 24 characters; longer text is never a cache
# key, so the 32768 entries kept stay under ~4 MB whatever the upstream sends.
_INSTANT_TEXT = 40


@lru_cache(maxsize=32768)
def _instant_text(value: str) -> str:
    # Memoised: the same calls come back page after page (polling, paging back and
    # forth), and printing an instant costs more than looking it up. Bounded (~4 MB).
    return _instant_uncached(value)


def _instant_uncached(value: str) -> str:
    if len(value) == 24 and _CANONICAL_INSTANT.fullmatch(value):
        # A canonical instant prints back as the same text, once it is known to be a
        # real date (the pattern alone would let 2013-02-30 through).
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise _OddValue from None
        return value
    parsed = parse_timestamp(value)
    if isinstance(parsed, Odd) or parsed is None:
        raise _OddValue
    return serialize_datetime(parsed)


def _sip_headers(value: dict[str, str], fields: tuple[tuple[str, str], ...]) -> list[Row]:
    # `value` was checked by the projection: a dict of strings.
    if fields == _NAME_VALUE:
        return [{"name": name, "value": header} for name, header in value.items()]
    return [
        {key: (name, header, "SipHeader")[_SIP_FIELD[field]] for key, field in fields}
        for name, header in value.items()
    ]


_SIP_FIELD = {"name": 0, "value": 1, "__typename": 2}
_NAME_VALUE = (("name", "name"), ("value", "value"))
_INT32 = "-2147483648 <= _v <= 2147483647"

# -- the generated source, from the field table (calls.CALL_FIELDS) -----------------------
#
# Required fields and the SIP headers are read and checked once per record by the
# projection's preamble (`_preamble`), into locals named after the field (`_id`,
# `_direction`); every other field is one inline expression of its upstream value, per
# kind. A choice is served as its enum's name, its value upper-cased (the schema's enums
# are written that way, and tests/schema/test_types.py checks it).


def _local(field: CallField) -> str:
    # GraphQL field names are identifiers ([_A-Za-z][_0-9A-Za-z]*), so is this.
    return f"_{field.name}"


def _choice_names(field: CallField) -> Any:
    """What the generated code looks a choice up in, as `_names_<field>`."""
    if field.required:  # the upstream's value, normalised, to the enum's name
        return {value: value.upper() for value in field.choices}
    return frozenset(value.upper() for value in field.choices)  # for `_choice`


def _expression(field: CallField) -> str:
    """The expression building a field's result value (see `_preamble` for `get`)."""
    if field.required:
        return _local(field)  # checked (and a choice named) by the preamble
    get = f"get({field.wire!r})"
    return {
        "id": f"(_v if (_v := {get}) is None or _v.__class__ is str else _odd())",
        "text": f"(_v if (_v := {get}) is None or _v.__class__ is str else _odd())",
        "choice": f"_choice({get}, _names_{field.name})",
        "instant": f"_instant({get})",
        "integer": (
            f"(_v if (_v := {get}) is None or (_v.__class__ is int and {_INT32}) else _int(_v))"
        ),
        "boolean": f"(_v if (_v := {get}) is None or _v.__class__ is bool else _bool(_v))",
        # `{pairs}`: the plan's sub-selection of the headers, bound by `_compile_projection`.
        "headers": f"([] if {_local(field)} is None else _sip_headers({_local(field)}, {{pairs}}))",
    }[field.kind]


def _preamble() -> str:
    """The start of every projection: the plain shape, checked whatever is selected.

    A record failing it (no id, an unknown state or direction, odd SIP headers) makes the
    projection return None, and the record parser and the field readers decide, as on
    the standard path. Numbers and booleans among the SIP header values are rendered by
    the parser's rules; rare, so those records go to the parser too.
    """
    essential = [f for f in CALL_FIELDS if f.required and f.kind in ("id", "text")]
    choices = [f for f in CALL_FIELDS if f.required and f.kind == "choice"]
    headers = [f for f in CALL_FIELDS if f.kind == "headers"]
    if any(f.required for f in CALL_FIELDS if f not in essential and f not in choices):
        raise TypeError("the compiled path knows required text, ids and choices only")
    lines = ["def project(raw):", "    get = raw.get"]
    for group in (essential, choices + headers):
        names = ", ".join(_local(f) for f in group)
        lines.append(f"    {names} = {', '.join(f'get({f.wire!r})' for f in group)}")
    checks = [f"{_local(f)}.__class__ is str and {_local(f)}" for f in essential]
    checks += [f"{_local(f)}.__class__ is str" for f in choices]
    lines += ["    if not (", f"        {' and '.join(checks)}", "    ):", "        return None"]
    for f in choices:
        lines.append(f"    {_local(f)} = _names_{f.name}.get({_local(f)}.{f.case}())")
    if choices:
        unknown = " or ".join(f"{_local(f)} is None" for f in choices)
        lines += [f"    if {unknown}:", "        return None"]
    for f in headers:
        value = _local(f)
        lines += [
            f"    if {value} is not None and (",
            f"        {value}.__class__ is not dict or len({value}) > {MAX_SIP_HEADERS}"
            f" or not all(v.__class__ is str for v in {value}.values())",
            "    ):",
            "        return None",
        ]
    return "\n".join([*lines, "    return {", ""])


_EXPRESSIONS = {field.name: _expression(field) for field in CALL_FIELDS}
_EXPRESSIONS["__typename"] = '"Call"'
_HEADERS = frozenset(field.name for field in CALL_FIELDS if field.kind == "headers")
_PREAMBLE = _preamble()

_NAMESPACE: dict[str, Any] = {
    **{f"_names_{f.name}": _choice_names(f) for f in CALL_FIELDS if f.kind == "choice"},
    "_instant": _instant,
    "_choice": _choice,
    "_int": _int,
    "_bool": _bool,
    "_odd": _odd,
    "_sip_headers": _sip_headers,
}


Plan = tuple[tuple[str, str, Any], ...]  # (response key, field name, sub-selection)


@dataclass(frozen=True, slots=True)
class Projection:
    """A plan and its compiled function; `project` returns None or raises `_OddValue`
    for a record outside the plain shape (see `_PREAMBLE`)."""

    plan: Plan
    project: Callable[[Row], Row | None]


# The projections memoised are of plans of at most this many fields (~20 KB each), so the
# 256 kept take at most ~5 MB.
_MEMOISED_PLAN_FIELDS = 64


@lru_cache(maxsize=256)
def _compile_projection(plan: Plan) -> Projection:
    """One function building a result object from an upstream record, for this plan."""
    namespace = dict(_NAMESPACE)
    items = []
    for index, (key, field, extra) in enumerate(plan):
        if field not in _EXPRESSIONS:
            raise Fallback
        expression = _EXPRESSIONS[field]
        if field in _HEADERS:
            namespace[f"_pairs{index}"] = extra
            expression = expression.format(pairs=f"_pairs{index}")
        # Response keys are GraphQL names ([_A-Za-z][_0-9A-Za-z]*), safe in a literal.
        items.append(f"        {key!r}: {expression},\n")
    source = _PREAMBLE + "".join(items) + "    }\n"
    exec(compile(source, "<calls projection>", "exec"), namespace)  # noqa: S102
    project: Callable[[Row], Row | None] = namespace["project"]
    return Projection(plan, project)


# --- planning: which fields, in which order, for these variables -------------------------


def _included(node: Any, variables: VariableValues) -> bool:
    skip = get_directive_values(GraphQLSkipDirective, node, variables)
    if skip is not None and skip["if"] is True:
        return False
    include = get_directive_values(GraphQLIncludeDirective, node, variables)
    return not (include is not None and include["if"] is False)


def _collect(
    selection_set: SelectionSetNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: VariableValues,
    type_name: str,
    into: dict[str, list[FieldNode]],
    visited: set[str],
) -> dict[str, list[FieldNode]]:
    for selection in selection_set.selections:
        if not _included(selection, variables):
            continue
        if isinstance(selection, FieldNode):
            key = selection.alias.value if selection.alias else selection.name.value
            into.setdefault(key, []).append(selection)
        elif isinstance(selection, InlineFragmentNode):
            condition = selection.type_condition
            if condition is not None and condition.name.value != type_name:
                raise Fallback
            _collect(selection.selection_set, fragments, variables, type_name, into, visited)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            if name in visited:
                continue
            visited.add(name)
            fragment = fragments[name]
            if fragment.type_condition.name.value != type_name:
                raise Fallback
            _collect(fragment.selection_set, fragments, variables, type_name, into, visited)
    return into


def _call_projection(
    nodes: list[FieldNode],
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: VariableValues,
) -> Projection:
    fields: dict[str, list[FieldNode]] = {}
    for node in nodes:
        if node.selection_set is None:
            raise Fallback
        _collect(node.selection_set, fragments, variables, "Call", fields, set())
    plan: list[tuple[str, str, Any]] = []
    for key, field_nodes in fields.items():
        name = field_nodes[0].name.value
        if name in _HEADERS:
            sub: dict[str, list[FieldNode]] = {}
            for node in field_nodes:
                if node.selection_set is None:
                    raise Fallback
                _collect(node.selection_set, fragments, variables, "SipHeader", sub, set())
            pairs = tuple((k, v[0].name.value) for k, v in sub.items())
            if any(field not in ("name", "value", "__typename") for _, field in pairs):
                raise Fallback
            plan.append((key, name, pairs))
        else:
            plan.append((key, name, None))
    if len(plan) > _MEMOISED_PLAN_FIELDS:
        # Large plans come from large documents, whose plans the endpoint keeps anyway.
        return _compile_projection.__wrapped__(tuple(plan))
    return _compile_projection(tuple(plan))


_NO_VARIABLES = VariableValues(sources={}, coerced={})
# Coerced variables kept per planned document (oldest out first), for variables of at
# most this many bytes of JSON: at most ~30 MB over the 512 plans the endpoint keeps.
_COERCED_ENTRIES = 32
_COERCED_KEY_BYTES = 512

# (response key, the `calls` field node or None for `__typename`, its projection)
Shape = list[tuple[str, FieldNode | None, Projection | None]]


class FastPlan:
    """A `calls`-only operation, checked once; `run` answers it or returns None."""

    def __init__(
        self,
        schema: GraphQLSchema,
        operation: OperationDefinitionNode,
        fragments: Mapping[str, FragmentDefinitionNode],
    ) -> None:
        self._schema = schema
        self._operation = operation
        self._fragments = fragments
        self._calls_field: GraphQLField = schema.query_type.fields["calls"]  # type: ignore[union-attr]
        # Which fields are selected depends on the variables only through @skip/@include;
        # without a variable in those, the shape is planned once, here.
        self._static: Shape | None = None
        self._coerced: dict[bytes, VariableValues] = {}
        if not _directives_use_variables(operation, fragments.values()):
            try:
                self._static = self._shape(_NO_VARIABLES)
            except Fallback:
                self._static = None

    def _coerce(self, raw: dict[str, Any]) -> VariableValues | None:
        # The same variables come again and again (a page, its neighbours, polling);
        # coercing them costs as much as building the request. Keyed by their JSON.
        try:
            key: bytes | None = orjson.dumps(raw)
        except TypeError:  # not JSON (a 64-bit overflow, say): coerce without the cache
            key = None
        if key is not None and len(key) > _COERCED_KEY_BYTES:
            key = None
        found = self._coerced.get(key) if key is not None else None
        if found is not None:
            return found
        coerced = get_variable_values(self._schema, self._operation.variable_definitions or (), raw)
        if not isinstance(coerced, VariableValues):
            return None
        if key is not None:
            if len(self._coerced) >= _COERCED_ENTRIES:
                self._coerced.pop(next(iter(self._coerced)))
            self._coerced[key] = coerced
        return coerced

    def _shape(self, variables: VariableValues) -> Shape:
        roots = _collect(
            self._operation.selection_set, self._fragments, variables, "Query", {}, set()
        )
        shape: Shape = []
        for key, nodes in roots.items():
            name = nodes[0].name.value
            if name == "__typename":
                shape.append((key, None, None))
            elif name == "calls" and len(nodes) == 1:
                shape.append((key, nodes[0], _call_projection(nodes, self._fragments, variables)))
            else:
                raise Fallback
        return shape

    async def run(self, context: Context, raw_variables: dict[str, Any] | None) -> Row | None:
        """The operation's `data`, or None when the standard executor must answer; raises
        `OperationTooComplex` when it serves more calls than the operation may."""
        coerced = self._coerce(raw_variables or {})
        if coerced is None:
            return None  # the standard executor words the variable errors
        try:
            shape = self._static if self._static is not None else self._shape(coerced)
            queries = [
                _list_query(get_argument_values(self._calls_field, node, coerced))
                for _, node, _ in shape
                if node is not None
            ]
            if len(queries) == 1:
                bodies = [await context.calls.list_calls_raw(queries[0])]
            else:
                # Fetched together, as the standard executor resolves root fields.
                calls = context.calls
                bodies = await asyncio.gather(*(calls.list_calls_raw(q) for q in queries))
            # Each already cut to its `size`, with how many calls were cut.
            pages = list(bodies)
            served = 0
            for body, _ in pages:
                if body.__class__ is not list:
                    raise Fallback
                served += len(body)
        except (Fallback, GatewayError):
            _given_up(context)
            return None
        # Counted before any page is built. Past GATEWAY_MAX_CALLS_PER_OPERATION this
        # raises `OperationTooComplex` for the endpoint to answer: the whole operation is
        # known to be over, and building its first pages (or handing it to the standard
        # executor, which would) is the cost the bound is there to refuse.
        context.calls.serve(served)
        try:
            data: Row = {}
            cut = iter(pages)
            asked = iter(queries)
            for key, node, project in shape:
                if node is None or project is None:
                    data[key] = "Query"
                    continue
                body, excess = next(cut)
                query = next(asked)
                if excess:
                    context.warnings.append(oversized_page_warning(excess, query.size, (key,)))
                data[key] = _project_page(body, project, context, key)
        except (Fallback, GatewayError):
            _given_up(context)
            return None
        return data


def _given_up(context: Context) -> None:
    # Nothing of this attempt may show: the standard executor starts afresh.
    context.warnings.clear()
    context.calls.restart()


def _directives_use_variables(
    operation: OperationDefinitionNode, fragments: Iterable[FragmentDefinitionNode]
) -> bool:
    found = False

    class Finder(Visitor):
        def enter_directive(self, node: DirectiveNode, *_: Any) -> None:
            nonlocal found
            arguments = node.arguments or ()
            found = found or any(isinstance(arg.value, VariableNode) for arg in arguments)

    for definition in (operation, *fragments):
        visit(definition, Finder())
    return found


def _project_page(body: list[Any], projection: Projection, context: Context, key: str) -> list[Row]:
    project = projection.project
    page: list[Row] = []
    for raw in body:
        try:
            row = project(raw) if raw.__class__ is dict else None
        except _OddValue:
            row = None
        if row is None:
            parsed = parse_call(raw)
            if isinstance(parsed, BadRecord):
                # Left out with a warning, exactly as the schema's `calls` resolver does.
                context.warnings.append(left_out_warning(parsed, (key,)))
                continue
            row = _read_row(parsed, projection.plan, context, (key, len(page)))
        page.append(row)
    return page


def _read_row(record: CallRecord, plan: Plan, context: Context, path: tuple[str | int, ...]) -> Row:
    """A record outside the plain shape, served by the schema's field readers."""
    row: Row = {}
    for key, field, extra in plan:
        if field == "__typename":
            row[key] = "Call"
            continue
        value, odd = READERS[field](record)
        if odd is not None:
            context.warnings.append(odd_field_warning(record, field, odd, value, (*path, key)))
        if field in _HEADERS:
            row[key] = [
                {sub: (h.name, h.value, "SipHeader")[_SIP_FIELD[name]] for sub, name in extra}
                for h in value
            ]
        elif isinstance(value, Enum):
            row[key] = value.name
        elif isinstance(value, datetime):
            row[key] = serialize_datetime(value)
        else:
            row[key] = value
    return row


def _list_query(arguments: Mapping[str, Any]) -> ListQuery:
    filter_ = arguments.get("filter") or {}
    if not isinstance(filter_, Mapping):
        raise Fallback
    return list_query(
        call_filter(filter_), arguments["sortOrder"], page=arguments["page"], size=arguments["size"]
    )


def compile_plan(
    schema: GraphQLSchema, document: Any, operation: OperationDefinitionNode | None
) -> FastPlan | None:
    """A plan for `operation` if it is a query of `calls` roots only, else None."""
    if operation is None or operation.operation is not OperationType.QUERY:
        return None
    for selection in operation.selection_set.selections:
        if not isinstance(selection, FieldNode) or selection.name.value not in (
            "calls",
            "__typename",
        ):
            return None
    fragments = {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    return FastPlan(schema, operation, fragments)
