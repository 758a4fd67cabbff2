"""Where the scoring script and its inference-server launcher live in this copy of mii_azure.

The launcher (``mii_azure/scoring/launch.py``) runs the real ``azureml-inference-server-http`` for a
scoring script, bound to 127.0.0.1 unless asked otherwise; it is a standalone script so that the
score.py it serves imports the runtime it ships with.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["entry_script_path", "launcher_path", "LOOPBACK"]

LOOPBACK = "127.0.0.1"

_SCORING = Path(__file__).resolve().parents[1] / "scoring"


def entry_script_path() -> Path:
    """The scoring script that ships with this copy of mii_azure."""
    return _SCORING / "score.py"


def launcher_path() -> Path:
    """The standalone launcher of the inference server that ships with this copy of mii_azure."""
    return _SCORING / "launch.py"
