"""``mlconnect export``: a trained experiment -> a self-contained, verified bundle (see bundle.py).

The bundle is built in a hidden temp folder next to ``--out`` and renamed into place only after it
verified: the exported graph's top-10 for up to 1,000 users must equal the engine's (same ids,
scores within 1e-4). A bundle that does not verify is deleted and the export fails, so a folder
named ``--out`` is always a complete, checked bundle.

ONNX export uses torch's TorchScript-based exporter (``dynamo=False``): it needs only torch and
onnx, works offline and handles all three models (SASRec, GRU4Rec, BERT4Rec) in one trace. The
dynamo exporter additionally needs onnxscript and re-traces per model with data-dependent guards.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlconnect import __version__
from mlconnect.deploy.bundle import (
    CARD,
    ENCODER_MODEL,
    FORMAT_VERSION,
    HISTORIES,
    INPUTS,
    ITEM_CANDIDATES_MODEL,
    ITEM_TABLE,
    ITEMS,
    ONNX_MODEL,
    OUTPUTS,
    TORCH_MODEL,
    VOCAB,
    Bundle,
    BundleError,
    Scorer,
    file_digests,
    pad_batch,
    seal_card,
)
from mlconnect.deploy.program import TorchProgram
from mlconnect.deploy.topk import EncoderTopK, candidates_graph, item_rows
from mlconnect.engine.inference import Recommender
from mlconnect.engine.models import SequentialRecommender
from mlconnect.errors import ExperimentError, MlconnectError, UsageError
from mlconnect.fileio import atomic_write_json, fsync_dir, read_json, write_failed

VERIFY_USERS = 1000
VERIFY_K = 10
SCORE_ATOL = 1e-4
TIE_ATOL = 1e-5  # two items this close may come out in either order: sums in another order differ by ~1e-7
OPSET = 17
Log = Callable[[str], None]


class ScoringGraph(torch.nn.Module):
    """What the bundle runs: padded histories in, the top-k (seen items ranked last) out.

    It is the model's ``full_scores`` written so that a trace keeps the batch dynamic: the base class
    picks the last hidden state with ``arange(len(items))``, which a trace records as a constant.
    Export verification compares the result with the engine's, so the two cannot drift apart unseen.
    ``k`` is a tensor whose *length* is k, so k stays a graph input (ONNX TopK reads it from a shape).
    """

    def __init__(self, model: SequentialRecommender) -> None:
        super().__init__()
        self.model = model

    def last_hidden(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        m = self.model
        if type(m).last_hidden is not SequentialRecommender.last_hidden:
            return m.last_hidden(items, lengths)  # BERT4Rec's own; it reads items.shape, which traces
        hidden = m.encode(items)
        idx = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, hidden.shape[2])
        return hidden.gather(1, idx).squeeze(1)

    def forward(self, items: torch.Tensor, seen: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.last_hidden(items, (items > 0).sum(1)) @ self.model.item_table().T
        bias = self.model.output_bias()
        if bias is not None:
            scores = scores + bias
        scores = scores.float()
        scores = scores.scatter(1, seen, float("-inf"))  # as Recommender.recommend_ids does
        scores[:, 0] = float("-inf")  # padding, as full_scores does
        top = torch.topk(scores, k.shape[0], dim=1)
        return top.values, top.indices


class EncoderGraph(torch.nn.Module):
    """Padded histories in, the user vector ScoringGraph scores with out: ``[B, H]``, plus a trailing 1
    when the model has an output bias (item_scores.onnx carries the bias as one more row, topk.py)."""

    def __init__(self, model: SequentialRecommender) -> None:
        super().__init__()
        self.scoring = ScoringGraph(model)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        user = self.scoring.last_hidden(items, (items > 0).sum(1)).float()
        if self.scoring.model.output_bias() is not None:
            user = torch.cat([user, torch.ones_like(user[:, :1])], dim=1)
        return user


def _example(rec: Recommender) -> tuple[torch.Tensor, ...]:
    items, seen = pad_batch([[1, 2, 3], [2]], rec.max_len)
    return torch.from_numpy(items), torch.from_numpy(seen), torch.zeros(VERIFY_K, dtype=torch.int64)


def export_onnx(rec: Recommender, path: Path) -> None:
    graph = ScoringGraph(rec.model).eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(graph, _example(rec), str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_axes={"items": {0: "batch", 1: "length"}, "seen": {0: "batch", 1: "n_seen"},
                                        "k": {0: "k"}, "scores": {0: "batch", 1: "k"}, "ids": {0: "batch", 1: "k"}})


def export_encoder(rec: Recommender, root: Path) -> None:
    """``encoder.onnx``, ``item_candidates.onnx`` and ``item_table.npy``: what ``predict --bundle`` scores
    with (see topk.py)."""
    import onnx

    graph = EncoderGraph(rec.model).eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (_example(rec)[0],), str(root / ENCODER_MODEL), dynamo=False, opset_version=OPSET,
                          input_names=["items"], output_names=["user"],
                          dynamic_axes={"items": {0: "batch", 1: "length"}, "user": {0: "batch"}})
        bias = rec.model.output_bias()
        rows = item_rows(rec.model.item_table().detach().float().cpu().numpy(),
                         None if bias is None else bias.detach().float().cpu().numpy())
    onnx.save(candidates_graph(rows), str(root / ITEM_CANDIDATES_MODEL))
    with open(root / ITEM_TABLE, "wb") as f:
        np.save(f, rows, allow_pickle=False)


def export_torch(rec: Recommender, path: Path) -> None:
    graph = ScoringGraph(rec.model).eval()
    dim = torch.export.Dim
    batch, n_seen, k = dim("batch"), dim("n_seen"), dim("k", max=len(rec.item_ids))
    with warnings.catch_warnings():
        # nn.GRU refreshes its cached `_flat_weights` list while traced; torch.export warns that they are
        # not buffers, but they are the GRU's own parameters (verify() below checks the program's answers).
        warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights", category=UserWarning)
        program = torch.export.export(graph, _example(rec), dynamic_shapes={
            "items": {0: batch}, "seen": {0: batch, 1: n_seen}, "k": {0: k}})
    torch.export.save(program, str(path))


def verify_users(n_users: int, limit: int = VERIFY_USERS) -> np.ndarray:
    """Up to ``limit`` internal user ids spread over all users (1..n_users-1; 0 is padding)."""
    return np.unique(np.linspace(1, n_users - 1, num=min(limit, n_users - 1)).round().astype(np.int64))


def compare_topk(eng: tuple[np.ndarray, np.ndarray], exp: tuple[np.ndarray, np.ndarray],
                 atol: float = SCORE_ATOL) -> dict[str, Any]:
    """The exported top-k against the engine's top-(k + a few): same ids at every rank, scores within
    ``atol``. Where the ids differ, the exported item must be in the engine's longer list with a score
    within ``TIE_ATOL`` of the engine's item at that rank: sums in another order may swap ties, no more."""
    (es, ei), (xs, xi) = eng, exp
    k = xs.shape[1]
    finite = np.isfinite(es[:, :k])
    # Subtract where the engine's score is finite only: -inf - -inf (a user who has seen every item)
    # is NaN plus a RuntimeWarning; an exported -inf against a finite score stays an inf difference.
    diff = np.abs(np.where(finite, es[:, :k], 0.0) - np.where(finite, xs, 0.0))
    same_inf = np.array_equal(finite, np.isfinite(xs))
    swapped = (ei[:, :k] != xi) & finite
    ties = True
    for row, rank in zip(*np.nonzero(swapped)):
        where = np.nonzero(ei[row] == xi[row, rank])[0]
        ties = ties and len(where) > 0 and abs(es[row, where[0]] - es[row, rank]) <= TIE_ATOL
    return {"users": int(xs.shape[0]), "k": int(k), "max_abs_score_diff": float(diff.max(initial=0.0)),
            "identical_ids": not swapped.any(), "tie_swaps": int(swapped.sum()),
            "ok": bool(same_inf and diff.max(initial=0.0) <= atol and ties)}


def engine_topk(rec: Recommender, histories: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    values, indices = rec.recommend_ids([h.tolist() for h in histories], k, exclude_seen=True)
    return values.float().cpu().numpy(), indices.cpu().numpy()


def _exported_runner(root: Path, fmt: str) -> Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    return (Scorer(root / ONNX_MODEL) if fmt == "onnx" else TorchProgram(root / TORCH_MODEL)).topk


def verify(rec: Recommender, root: Path, fmt: str, users: np.ndarray) -> dict[str, Any]:
    """The exported program against the engine, read back from ``root`` as a consumer reads it."""
    # No card yet (it will record this result). ONNX graphs take any length up to max_len: check them
    # the way they are fed, trimmed to each chunk's longest history (see pad_batch).
    bundle = Bundle(root, {"max_len": rec.max_len, "dynamic_length": fmt == "onnx",
                           "length_slot": rec.model.length_slot})
    run = _exported_runner(root, fmt)
    histories = sorted((bundle.history(int(u)) for u in users), key=len)  # chunks of every trimmed width
    k = min(VERIFY_K, len(bundle.item_ids) - 1)
    # ONNX bundles also carry predict's path (encoder.onnx + numpy scoring, topk.py): checked the same way.
    fast = EncoderTopK(root, len(bundle.item_ids), threads=1).topk if fmt == "onnx" else None
    parts: list[tuple[np.ndarray, ...]] = []
    for lo in range(0, len(histories), 256):
        chunk = histories[lo: lo + 256]
        items, seen = pad_batch(chunk, bundle.max_len, trim=bundle.trim, slot=bundle.slot)
        parts.append((*engine_topk(rec, chunk, min(k + 5, len(bundle.item_ids) - 1)), *run(items, seen, k),
                      *(fast(items, seen, k) if fast else ())))
    es, ei, xs, xi, *fs = (np.concatenate([p[n] for p in parts]) for n in range(len(parts[0])))
    result = compare_topk((es, ei), (xs, xi))
    if fs:
        result["predict_path"] = compare_topk((es, ei), (fs[0], fs[1]))
        result["ok"] = result["ok"] and result["predict_path"]["ok"]
    return result


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def build_card(rec: Recommender, fmt: str, verification: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    meta = read_json(rec.paths.meta, {}) or {}
    return {"format_version": FORMAT_VERSION, "format": fmt, "model_file": ONNX_MODEL if fmt == "onnx" else TORCH_MODEL,
            "experiment": rec.paths.name, "model": rec.info["model"], "dataset": rec.info["dataset"],
            "n_items": rec.info["n_items"], "n_users": len(rec.user_ids) - 1, "max_len": rec.max_len,
            "dynamic_length": fmt == "onnx", "length_slot": rec.model.length_slot,
            "created": rec.info["created"], "metrics": rec.info["metrics"], "config": dict(rec.cfg.items()),
            "mlconnect_version": __version__, "git_commit": meta.get("git_commit") or _git_commit(),
            "torch_version": torch.__version__, "inputs": list(INPUTS), "outputs": list(OUTPUTS), "opset": OPSET,
            "verification": verification, "files": files}


def export_bundle(experiment_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, fmt: str = "onnx",
                  docker: bool = False, log: Log = lambda _m: None) -> dict[str, Any]:
    """Write a verified bundle to ``out`` (which must not exist) and return its card."""
    if fmt not in ("onnx", "torch"):
        raise UsageError(f"unknown format {fmt!r}", "use --format onnx or --format torch")
    if docker and fmt != "onnx":
        raise UsageError("--docker serves the ONNX model", "drop --format torch")
    out = Path(out)
    try:
        check_out(out)
    except OSError as exc:  # a name too long, a folder we may not look into
        raise _out_error(out, exc) from None
    src = Path(experiment_dir)
    if not (src / "config.yaml").is_file():
        raise ExperimentError(f"no experiment at {src}", "check the name (ls experiments/)")
    tmp, made = _make_temp(out)  # before any slow work: an unwritable --out fails in a second
    try:
        rec = Recommender.load(src)
        log(f"exporting {rec.info['model']} of {rec.paths.name} as {fmt}")
        (export_onnx if fmt == "onnx" else export_torch)(rec, tmp / (ONNX_MODEL if fmt == "onnx" else TORCH_MODEL))
        if fmt == "onnx":
            export_encoder(rec, tmp)
        shutil.copyfile(rec.paths.vocab, tmp / VOCAB)
        shutil.copyfile(rec.paths.checkpoints / HISTORIES, tmp / HISTORIES)
        atomic_write_json(tmp / ITEMS, rec.items_meta)
        if docker:
            from mlconnect.deploy.docker import write_docker_files

            write_docker_files(tmp, log)
        users = verify_users(len(rec.user_ids))
        log(f"verifying the exported top-{VERIFY_K} against the engine's for {len(users)} users")
        with torch.no_grad():
            result = verify(rec, tmp, fmt, users)
        if not result["ok"]:
            worst = max(result["max_abs_score_diff"], result.get("predict_path", {}).get("max_abs_score_diff", 0.0))
            raise BundleError(f"the exported model does not reproduce the engine's top-{VERIFY_K} (largest score "
                              f"difference {worst:.3g}, tolerance {SCORE_ATOL}); no bundle "
                              f"written", "report this with the model's config; try --format torch")
        for p in tmp.rglob("*"):  # atomic writes make 0600 files; the image's non-root user must read them
            p.chmod(0o755 if p.is_dir() else 0o644)
        card = seal_card(build_card(rec, fmt, result, file_digests(tmp)))
        atomic_write_json(tmp / CARD, card)
        (tmp / CARD).chmod(0o644)
        Bundle.load(tmp)  # read back exactly as a server would, digests included
        try:
            os.rename(tmp, out)  # fails, rather than merging, if someone created `out` meanwhile
        except OSError as exc:
            raise _out_error(out, exc) from None
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        raise
    if rec.cfg.get("mlflow_tracking_uri"):
        card["mlflow"] = _register(rec, out, card, log)
    return card


def check_out(out: Path) -> None:
    """``--out`` must be a new folder whose nearest existing parent is a folder: one line otherwise."""
    if out.is_dir():
        raise ExperimentError(f"{out} already exists", "choose another --out, or remove that folder first")
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out} is an existing file; a bundle is a new folder", "choose another --out")
    for parent in out.parents:
        if parent.is_dir():
            return
        if parent.exists() or parent.is_symlink():
            raise UsageError(f"cannot create {out}: {parent} is a file, not a folder",
                             "choose an --out under a folder")


def _make_temp(out: Path) -> tuple[Path, list[Path]]:
    """The hidden folder the bundle is built in, next to ``out``, and the parents created for it."""
    made = [p for p in reversed(out.parents) if not p.exists()]
    tmp = out.parent / f".{out.name[:200]}.partial-{os.getpid()}"  # a name `out` may have must fit here too
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        _remove_empty(made)
        raise _out_error(out, exc) from None
    return tmp, made


def _remove_empty(made: list[Path]) -> None:
    """The parent folders an export created for ``--out``, deepest first, while they are still empty."""
    for folder in reversed(made):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _out_error(out: Path, exc: OSError) -> MlconnectError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return write_failed(out, exc)  # names the free space
    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
        return ExperimentError(f"{out} already exists", "choose another --out, or remove that folder first")
    return UsageError(f"cannot create {out}: {exc.strerror or exc}",
                      "choose an --out in a folder you can write to")


def _register(rec: Recommender, out: Path, card: dict[str, Any], log: Log) -> dict[str, Any]:
    """The bundle is complete and stays whatever MLflow answers: a failure here is reported, not fatal."""
    from mlconnect.deploy.registry import register_bundle

    try:
        res = register_bundle(str(rec.cfg["mlflow_tracking_uri"]), out, card, rec.cfg.get("mlflow_experiment"))
    except Exception as exc:  # an unreachable server, a refused write: the bundle is still good
        log(f"warning: the bundle is written, but registering it in MLflow failed: {exc}")
        return {"error": str(exc)}
    log(f"registered in MLflow as {res['registered_model']} version {res['version']}")
    return res
