"""Batch scoring with the serving engine: on this machine today; the Azure ML pipeline step is to come."""

from .batch_score import BatchScoreSummary, batch_score

__all__ = ["batch_score", "BatchScoreSummary"]
