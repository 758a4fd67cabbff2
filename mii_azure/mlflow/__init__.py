"""MLflow: a package as an MLflow pyfunc model, and plans, cost reports and benchmarks as MLflow runs.

```python
import mii_azure.mlflow

info = mii_azure.mlflow.log_model("./gpt2")              # a model folder, hub id or package
model = mlflow.pyfunc.load_model(info.model_uri)         # any process, any machine with the pins
model.predict(["DeepSpeed is"], params={"max_new_tokens": 8})   # -> the DESIGN.md section-3 entries

mii_azure.mlflow.log_plan("./gpt2", sku="NC24ads")       # params: model, SKU, plan choices
mii_azure.mlflow.log_cost_report(mii_azure.estimate_cost("gpt2", workload=...))
mii_azure.mlflow.log_benchmark("benchmarks/results/continuous_batching.json")
```

Only this wing imports mlflow, and only when one of its functions is called; without it they raise
:class:`~mii_azure.errors.MissingDependencyError` naming ``pip install "mii-azure[mlflow]"``.
Runs go to the tracking store MLflow itself resolves (``mlflow.get_tracking_uri()``: since MLflow 3.7
a SQLite file ``mlflow.db`` in the working directory, or ``MLFLOW_TRACKING_URI``), or the one given as
``tracking_uri=``, or an Azure ML workspace's (``ml_client=``; needs the ``azureml-mlflow`` plugin,
and is not tested here: no workspace can be reached from the test machine).
"""

from __future__ import annotations

from ._tracking import MLFLOW_INSTALL, AZUREML_MLFLOW_INSTALL, require_mlflow, resolve_tracking_uri
from .models import log_model, model_signature, pip_requirements
from .runs import log_benchmark, log_cost_report, log_plan

__all__ = [
    "log_model",
    "log_plan",
    "log_cost_report",
    "log_benchmark",
    "model_signature",
    "pip_requirements",
    "resolve_tracking_uri",
    "require_mlflow",
    "MLFLOW_INSTALL",
    "AZUREML_MLFLOW_INSTALL",
]
