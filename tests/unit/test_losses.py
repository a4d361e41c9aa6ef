"""Large-catalog losses: chunked CE is full CE (loss and gradients), gBCE follows gSASRec's formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlconnect.engine.losses import LossOptions, chunk_size, cross_entropy, gbce, gbce_beta, next_item_loss


def _leaves(n: int = 37, v: int = 1001, h: int = 16, bias: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hid = torch.randn(n, h, generator=g, dtype=torch.float64).requires_grad_()
    table = torch.randn(v, h, generator=g, dtype=torch.float64).requires_grad_()
    b = (torch.randn(v, generator=g, dtype=torch.float64) * 0.1).requires_grad_() if bias else None
    targets = torch.randint(1, v, (n,), generator=g)
    targets[0], targets[1] = v - 1, 1  # first and last chunk both hold a target
    return hid, table, b, targets


@pytest.mark.parametrize("chunk", [97, 250, 1000], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_chunked_ce_equals_full_ce_loss_and_gradients(chunk: int, with_bias: bool) -> None:
    hid, table, bias, targets = _leaves(bias=with_bias)
    logits = hid @ table.T + (bias if bias is not None else 0)
    full = F.cross_entropy(logits, targets)
    want = torch.autograd.grad(full, [hid, table] + ([bias] if bias is not None else []))
    got_loss = cross_entropy(hid, table, bias, targets, chunk=chunk)
    got = torch.autograd.grad(got_loss, [hid, table] + ([bias] if bias is not None else []))
    assert got_loss.item() == pytest.approx(full.item(), abs=1e-5)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a.double(), b, atol=1e-5), (a - b).abs().max()


def test_chunked_ce_in_float32_matches_full_ce_to_1e5() -> None:
    hid, table, bias, targets = _leaves(n=64, v=3000, h=32, seed=1)
    hid32, table32 = hid.detach().float().requires_grad_(), table.detach().float().requires_grad_()
    full = F.cross_entropy(hid32 @ table32.T, targets)
    gh, gt = torch.autograd.grad(full, [hid32, table32])
    chunked = cross_entropy(hid32, table32, None, targets, chunk=700)
    ch, ct = torch.autograd.grad(chunked, [hid32, table32])
    assert chunked.item() == pytest.approx(full.item(), abs=1e-5)
    assert torch.allclose(ch, gh, atol=1e-5) and torch.allclose(ct, gt, atol=1e-5)


def test_chunk_size_is_chosen_from_the_batch_and_catalog() -> None:
    assert chunk_size(2048, 1683, "cpu") == 1683  # ml-100k: one chunk, plain CE as before
    c = chunk_size(2048, 200_000, "cpu")
    assert 256 <= c < 200_000 and 2048 * c <= 1 << 22
    assert chunk_size(2048, 200_000, "cpu", configured=5000) == 5000
    assert chunk_size(10, 300, "cpu", configured=5000) == 300


def test_gbce_beta_matches_the_paper() -> None:
    # t = 0 is BCE (beta = 1); t = 1 is beta = alpha; alpha = k / (|I| - 1).
    assert gbce_beta(256, 3417, 0.0) == pytest.approx(1.0)
    assert gbce_beta(256, 3417, 1.0) == pytest.approx(256 / 3416)
    alpha = 256 / 3416
    assert gbce_beta(256, 3417, 0.75) == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))


def test_gbce_hand_computed_and_chunked_rows_agree() -> None:
    torch.manual_seed(3)
    hid, table, _, targets = _leaves(n=20, v=50, h=8, bias=False, seed=4)
    k, t = 5, 0.75
    beta = gbce_beta(k, 49, t)
    torch.manual_seed(11)
    whole = gbce(hid, table, None, targets, k, t)
    torch.manual_seed(11)
    neg = torch.randint(1, 50, (20, k))
    pos = (hid * table[targets]).sum(-1)
    negs = torch.einsum("nh,nkh->nk", hid, table[neg])
    per = -beta * F.logsigmoid(pos) - (F.logsigmoid(-negs) * (neg != targets[:, None])).sum(1)
    assert whole.item() == pytest.approx((per.sum() / (20 * (k + 1))).item(), rel=1e-9)
    g_whole = torch.autograd.grad(whole, [hid, table])
    torch.manual_seed(11)
    pieces = gbce(hid, table, None, targets, k, t, row_chunk=3)  # checkpointed row chunks
    g_pieces = torch.autograd.grad(pieces, [hid, table])
    assert pieces.item() == pytest.approx(whole.item(), rel=1e-12)
    for a, b in zip(g_pieces, g_whole, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_next_item_loss_dispatch_learns_something() -> None:
    # Each loss, optimised a few steps on a fixed batch, lowers the full-catalog CE of the truth.
    for opts in (LossOptions("CE", chunk=7), LossOptions("CE", sampled_negatives=8), LossOptions("BPR"),
                 LossOptions("gBCE", sampled_negatives=8)):
        torch.manual_seed(0)
        hid = torch.randn(30, 8, requires_grad=True)
        table = torch.randn(40, 8, requires_grad=True)
        targets = torch.randint(1, 40, (30,))
        before = F.cross_entropy(hid @ table.T, targets).item()
        opt = torch.optim.SGD([hid, table], lr=0.5)
        for _ in range(30):
            opt.zero_grad()
            next_item_loss(hid, targets, table, None, opts).backward()
            opt.step()
        after = F.cross_entropy(hid @ table.T, targets).item()
        assert after < before and math.isfinite(after), opts
