"""Built-in tasks, registered by name on import."""

from twin.tasks import (  # noqa: F401
    box_to_shelf,
    mug_to_sink,  # noqa: F401  (registration)
    open_cabinet,
    push_t,  # noqa: F401
    reach,
)
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
