"""Batch scoring with the serving engine: on this machine (:func:`batch_score`), and as an Azure ML
pipeline step (:func:`batch_score_component`, submitted with :func:`submit`)."""

from .batch_score import BatchScoreSummary, batch_score
from .component import batch_score_component
from .ordering import restore_order, split_into_shards
from .submit import ComputeCheck, check_compute, submit

__all__ = [
    "batch_score",
    "BatchScoreSummary",
    "batch_score_component",
    "submit",
    "check_compute",
    "ComputeCheck",
    "restore_order",
    "split_into_shards",
]
