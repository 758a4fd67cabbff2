"""The served tasks, one module each; ``get_task`` imports a task's module only when asked.

Importing this package does not import torch; each task module does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import TaskMismatchError
from ..models import TASKS

if TYPE_CHECKING:
    from .base import Task

__all__ = ["TASKS", "get_task"]

_TASK_CLASSES: dict[str, tuple[str, str]] = {
    "text-generation": ("generation", "TextGeneration"),
    "text2text-generation": ("generation", "Text2TextGeneration"),
    "text-classification": ("classification", "TextClassification"),
    "token-classification": ("classification", "TokenClassification"),
    "fill-mask": ("fill_mask", "FillMask"),
    "question-answering": ("question_answering", "QuestionAnswering"),
    "feature-extraction": ("feature_extraction", "FeatureExtraction"),
    "text-to-image": ("text_to_image", "TextToImage"),
}


def get_task(name: str) -> "type[Task]":
    """The Task class serving ``name``."""
    if name not in _TASK_CLASSES:
        raise TaskMismatchError(
            f"Unknown task {name!r}. Supported tasks: {', '.join(TASKS)}.", task=name, supported_tasks=TASKS
        )
    module_name, class_name = _TASK_CLASSES[name]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)
