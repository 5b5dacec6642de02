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
from twin.tasks import push_t  # noqa: F401
from twin.tasks import box_to_shelf, open_cabinet, reach  # noqa: F401

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
