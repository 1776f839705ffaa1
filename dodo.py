"""doit entry point: `doit list` shows every recipe, `doit recipe:<name>` builds one."""

from factory.tasks import DOIT_CONFIG, task_recipe, task_stage  # noqa: F401
