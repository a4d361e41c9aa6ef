"""A ``--format torch`` bundle's program (``model.pt2``): loaded and run with torch.

Its own module because it needs torch: the bundle server's imports (bundle.py, server.py) must never
reach torch, even lazily (tests/unit/test_layers.py checks it). ``predict --bundle`` and export's
verification use it; ``serve --bundle`` refuses a torch bundle instead (server.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlconnect.deploy.bundle import BundleError


class TorchProgram:
    """A ``--format torch`` bundle's ``torch.export`` program, with bundle.Scorer's interface."""

    def __init__(self, model_path: Path) -> None:
        import torch

        self.torch = torch
        try:
            self.program = torch.export.load(str(model_path)).module()
        except Exception as exc:  # torch raises many types for a corrupt or foreign archive
            raise BundleError(f"{model_path}: torch cannot load it ({str(exc).splitlines()[0][:200]})",
                              "export the bundle again with this mlconnect and torch version") from None
        self.device = "cpu"

    def topk(self, items: np.ndarray, seen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.no_grad():
            s, i = self.program(torch.from_numpy(items), torch.from_numpy(seen), torch.zeros(k, dtype=torch.int64))
        return s.numpy(), i.numpy()
