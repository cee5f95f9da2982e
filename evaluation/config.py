"""Which benchmark tasks to score and how: shared by `atom eval` and the trainer's in-loop evals."""

from __future__ import annotations

from pydantic import Field, model_validator

from core.config import ConfigModel
from evaluation.catalog import get_task


class TaskConfig(ConfigModel):
    """One task to score: a catalog name, or a user's JSONL of multiple-choice items under a name of its own."""

    name: str
    limit: int | None = Field(None, ge=1)  # the first `limit` instances in file order
    path: str | None = None  # a user task: {"id", "query", "choices", "gold"} per line
    max_new_tokens: int | None = Field(None, ge=1)  # generative tasks: overrides the task's own

    @model_validator(mode="after")
    def _known(self) -> TaskConfig:
        if self.path is None:
            get_task(self.name)
        return self


class TasksConfig(ConfigModel):
    tasks: list[TaskConfig] = Field(min_length=1)
    batch_size: int = Field(16, ge=1)
    progress: bool = True
