"""Built-in tasks, registered by name on import."""

from twin.tasks.base import (
    ActionCfg,
    ObservationCfg,
    Task,
    TaskCfg,
    TaskError,
    TerminationCfg,
    get_task_class,
    list_tasks,
    make_task,
    register_task,
)
from twin.tasks import mug_to_sink  # noqa: F401  (registration)

__all__ = [
    "ActionCfg",
    "ObservationCfg",
    "Task",
    "TaskCfg",
    "TaskError",
    "TerminationCfg",
    "get_task_class",
    "list_tasks",
    "make_task",
    "register_task",
]
