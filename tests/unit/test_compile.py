"""`compile: true` compiles the training loss itself, not only a wrapper the trainer never calls."""

from __future__ import annotations

import time

import pytest
import torch

from mlconnect.engine.config import load_config
from mlconnect.engine.distributed import DistInfo, wrap
from mlconnect.engine.models import build_model


def _tiny(compile_: bool):
    cfg = load_config(None, {"model": "sasrec", "hidden_size": 8, "inner_size": 16, "n_layers": 1, "n_heads": 1,
                             "MAX_ITEM_LIST_LENGTH": 5, "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0})
    torch.manual_seed(0)
    model = build_model(cfg, 12)
    return model, wrap(model, DistInfo(), torch.device("cpu"), compile=compile_)


def test_without_compile_the_trainer_calls_the_model_itself() -> None:
    model, forward = _tiny(False)
    assert forward is model


@pytest.mark.slow  # inductor compiles C++ on CPU: ~20 s on the loaded 2-core box
def test_compile_routes_the_training_loss_through_the_compiled_graph() -> None:
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, forward = _tiny(True)
    assert isinstance(forward.module, OptimizedModule)
    inputs = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
    targets = torch.tensor([[2, 3, 9, 0, 0], [5, 6, 7, 8, 11]])
    t0 = time.perf_counter()
    loss = forward.training_loss(inputs, targets, "CE")
    loss.backward()  # the compiled graph trains the model's own parameters
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])  # dynamo compiled the loss frames
    assert model.item_embedding.weight.grad is not None
    torch.testing.assert_close(loss, model.training_loss(inputs, targets, "CE"), rtol=1e-4, atol=1e-5)
    print(f"first compiled step {time.perf_counter() - t0:.1f}s")
