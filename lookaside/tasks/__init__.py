"""Task kinds, registered by name in one explicit table (like :data:`lookaside.adapters.ADAPTERS`).

Adding a task kind (say multi-label tagging, or streaming): one module with a
:class:`~lookaside.tasks.base.TaskKind` subclass and one line in :data:`TASKS`; adapter methods
that serve it list its name in :attr:`~lookaside.adapters.base.AdapterMethod.tasks`.
"""

from __future__ import annotations

from lookaside.adapters import get_method
from lookaside.errors import ConfigError
from lookaside.tasks.av_events import AV_EVENTS
from lookaside.tasks.base import Inputs, TaskKind
from lookaside.tasks.clip import CLIP

__all__ = ["AV_EVENTS", "CLIP", "TASKS", "Inputs", "TaskKind", "get_task", "task_for"]

TASKS: dict[str, TaskKind] = {t.name: t for t in (CLIP, AV_EVENTS)}


def get_task(name: str) -> TaskKind:
    """The registered task kind called ``name``."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task kind {name!r}; known: {', '.join(TASKS)}") from None


def task_for(method: str) -> TaskKind:
    """The task kind an adapter method serves (its first declared one)."""
    return get_task(get_method(method).tasks[0])
