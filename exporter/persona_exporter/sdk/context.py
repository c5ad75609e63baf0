"""The ambient persona, chatmode, workflow run and stage, carried in a context variable.

One ``ContextVar`` holds an immutable :class:`Scope`, so an instrumented call reads
everything it needs in one lookup. Context variables follow asyncio tasks (each task
starts with a copy of its creator's context) and stay separate per thread; to carry the
current persona into a thread pool, submit ``in_current_context(fn)``.

    with persona("backend-engineer", chatmode="feature-implementation"):
        llm("Design the API")          # recorded under backend-engineer
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ..events import clean_name

if TYPE_CHECKING:
    from .handles import StageHandle, WorkflowHandle
    from .telemetry import Telemetry

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Scope:
    persona: str | None = None
    chatmode: str | None = None
    run: WorkflowHandle | None = None
    stage: StageHandle | None = None
    telemetry: Telemetry | None = None
    # The scope this one replaced, and the entry that made it: exit restores ``parent``
    # only if the current scope is still its own (see ScopeChange).
    parent: Scope | None = None
    owner: object | None = None


EMPTY_SCOPE = Scope()
SCOPE: contextvars.ContextVar[Scope] = contextvars.ContextVar(
    "persona_exporter_scope", default=EMPTY_SCOPE)


def current_scope() -> Scope:
    return SCOPE.get()


def current_persona() -> str | None:
    return SCOPE.get().persona


def current_chatmode() -> str | None:
    return SCOPE.get().chatmode


class ScopeChange:
    """Enter a changed scope; on exit, go back to the scope it replaced.

    No ``ContextVar`` token is kept on the object: a token belongs to one context and one
    use, so a ``persona`` object shared by several asyncio tasks, or re-entered while
    active, would raise on exit. Instead each scope records its parent and the entry that
    made it, and exit restores the parent only when the current scope is that entry's. An
    exit in another context (an async generator closed by a different task) finds a scope
    that is not its own and leaves it alone.
    """

    __slots__ = ("_changes",)

    def __init__(self, **changes: Any) -> None:
        self._changes = changes

    def __enter__(self) -> Scope:
        previous = SCOPE.get()
        scope = replace(previous, parent=previous, owner=self, **self._changes)
        SCOPE.set(scope)
        return scope

    def __exit__(self, *exc: object) -> None:
        current = SCOPE.get()
        if current.owner is self:
            SCOPE.set(current.parent if current.parent is not None else EMPTY_SCOPE)


class persona:  # noqa: N801 - used like contextlib's lower-case context managers
    """Run a block under a persona (and optionally a chatmode); works with ``with`` and
    ``async with``, and nests.

    Invalid names are cleaned (non-ASCII becomes ``_``, too long is cut) rather than
    raised: instrumentation never breaks the caller.
    """

    __slots__ = ("_change", "chatmode", "name")

    def __init__(self, name: str, chatmode: str | None = None) -> None:
        self.name = clean_name(name)
        self.chatmode = clean_name(chatmode, "none") if chatmode is not None else None
        changes: dict[str, Any] = {"persona": self.name}
        if self.chatmode is not None:
            changes["chatmode"] = self.chatmode
        self._change = ScopeChange(**changes)

    def __enter__(self) -> persona:
        self._change.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._change.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> persona:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


def in_current_context(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``fn`` to run in a copy of the caller's context: the way to hand the current
    persona, workflow run and stage to a thread (``executor.submit(in_current_context(f))``)."""
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return ctx.copy().run(fn, *args, **kwargs)

    return run
