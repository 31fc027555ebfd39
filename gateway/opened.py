"""A process-wide collaborator that the app's lifespan opens after the routes are built.

The upstream service and the live hub hold connections, so they are opened when the app
starts and closed when it stops, while what uses them (the context factory, the live
operations, the readiness probe) is built before, by `create_app`. Each is handed the
`Opened` it reads at construction and reads it as it serves: a request never looks its
collaborators up in the ASGI scope.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Held(Protocol[T_co]):
    """What the users of an `Opened` read (only the lifespan opens and closes it): typed
    by what each needs of the collaborator, so that a test hands in a fake."""

    @property
    def current(self) -> T_co | None: ...

    def get(self) -> T_co: ...


class Opened(Generic[T]):
    """Holds one collaborator between its opening and its closing."""

    __slots__ = ("_name", "_value")

    def __init__(self, name: str) -> None:
        self._name = name
        self._value: T | None = None

    def open(self, value: T) -> None:
        self._value = value

    def close(self) -> None:
        self._value = None

    @property
    def current(self) -> T | None:
        """The collaborator, or None before it is opened or after it is closed."""
        return self._value

    def get(self) -> T:
        """The collaborator; raises `RuntimeError` outside the app's lifespan."""
        value = self._value
        if value is None:
            raise RuntimeError(f"{self._name} is not open (the app's lifespan has not started)")
        return value
