"""Weights load from safetensors where present, and pickled weights only through torch's
``weights_only`` loading: a malicious pickle runs no code, and the load fails with the cause."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.serving


class _Payload:
    """Unpickling this runs ``os.system``: what an attacker's pytorch_model.bin would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_runs_no_code(model_dirs, tmp_path):
    from mii_azure.errors import ModelLoadError
    from mii_azure.runtime.engine import Engine

    model = shutil.copytree(model_dirs["bert_classifier"], tmp_path / "model")
    (model / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(model / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"weights": _Payload(marker)}, handle)

    with pytest.raises(ModelLoadError) as refused:
        Engine.load(model)
    assert not marker.exists(), "unpickling ran the attacker's code"
    assert "Refused the pickled weights" in refused.value.message and "safetensors" in refused.value.message
    assert "weights_only set to False" not in refused.value.message  # never advise the unsafe load


def test_safetensors_are_preferred_when_both_are_there(model_dirs, tmp_path):
    from mii_azure.runtime.engine import Engine

    model = shutil.copytree(model_dirs["bert_classifier"], tmp_path / "model")
    marker = tmp_path / "pwned"
    with open(model / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"weights": _Payload(marker)}, handle)
    engine = Engine.load(model)
    try:
        assert engine.warm_up()  # it serves, from model.safetensors
    finally:
        engine.close()
    assert not marker.exists()
