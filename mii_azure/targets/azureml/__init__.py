"""The Azure ML target: managed online endpoints through azure-ai-ml (imported lazily).

    workspace.py   which workspace: ml_client, ids + DefaultAzureCredential, or config.json
    boundary.py    Azure's exceptions translated once into the SDK's
    preflight.py   the region offers the size; the family's quota covers it
    assets.py      model (uploaded once per content), environment (per content)
    progress.py    the stages of a deployment, with elapsed time (rich)
    target.py      AzureMLTarget: deploy, get, list, logs, delete; the handle's key/token provider
    dry_run.py     the package's YAML for given names, validated by azure-ai-ml, and the az ml commands
    autoscale.py   Azure Monitor autoscale settings on deployments (azure-mgmt-monitor): create, find, delete
"""

from .target import AzureMLTarget
from .workspace import Workspace, connect

__all__ = ["AzureMLTarget", "Workspace", "connect"]
