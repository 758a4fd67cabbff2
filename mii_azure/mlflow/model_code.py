"""MLflow "models from code" script of the mii_azure pyfunc model (:mod:`mii_azure.mlflow.pyfunc_model`).

:func:`mii_azure.mlflow.log_model` logs this file as the model's code, so loading the model runs no
pickle: MLflow puts the package's own ``mii_azure`` snapshot (the model's ``code/`` folder) first on
``sys.path``, executes this file, and takes the model it sets. Importing it anywhere else only sets
MLflow's current code model.
"""

from mlflow.models import set_model

from mii_azure.mlflow.pyfunc_model import MiiAzureModel

set_model(MiiAzureModel())
