"""One DDP rank of the conformance case "ddp 2 gloo": launched by test_conformance.py, relaunched
by Lightning for rank 1; not collected by pytest.

Usage: python ddp_worker.py OUT_DIR. Each rank fits the MLP twice with two gloo processes, plain
and with default ``LayerDiagnostics()``, and saves both runs to ``OUT_DIR/rank{r}.pt``.
"""

import importlib.util
import os
import sys
from pathlib import Path

import conformance_models as m
import torch
from conformance_harness import fit_once
from pytorch_lightning import Trainer
from pytorch_lightning.loggers import TensorBoardLogger

from ln_diagnostics.callbacks import LayerDiagnostics


def _shared_fixtures():
    """tests/conftest.py, whose hook counters the in-process cases get as fixtures."""
    path = Path(__file__).parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("tests_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    out = Path(sys.argv[1])
    fixtures = _shared_fixtures()

    def trainer(name):
        return lambda callbacks: Trainer(
            strategy="ddp",
            devices=2,
            accelerator="cpu",
            max_steps=3,
            log_every_n_steps=2,
            logger=TensorBoardLogger(out, name=name, version=""),
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    def counts(model):
        return fixtures._module_hooks(model), fixtures._tensor_hooks(model)

    plain = fit_once(m.MLP, trainer("plain"), [], plugin=None, hook_counts=counts)
    ours = fit_once(m.MLP, trainer("ours"), [], plugin=LayerDiagnostics(), hook_counts=counts)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.save({"plain": plain, "ours": ours}, out / f"rank{rank}.pt")
