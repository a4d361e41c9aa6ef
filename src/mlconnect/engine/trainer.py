"""The training loop: windows of every user's history, loss at every position, full-ranking eval.

One pass over the data per epoch, early stopping on ``valid_metric``, atomic checkpoints that
carry everything a resumed run needs to end exactly where an uninterrupted one ends (model,
optimizer, RNG state, position inside the epoch, early-stopping state), and SIGTERM/SIGINT that
save before exiting.
"""

from __future__ import annotations

import contextlib
import math
import resource
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlconnect.engine import distributed
from mlconnect.engine.checkpoint import load_checkpoint, save_checkpoint
from mlconnect.engine.config import Config
from mlconnect.engine.data import load_dataset, split_leave_one_out, window_index
from mlconnect.engine.evaluation import evaluate
from mlconnect.engine.experiment import (
    ProgressFile,
    now_iso,
    prepare_experiment,
    record_failure,
    write_meta,
    write_vocab,
)
from mlconnect.engine.interrupts import TrainingInterrupted, install_signals, restore_signals
from mlconnect.engine.models import SequentialRecommender, build_model
from mlconnect.engine.progress import Reporter, eta_s, eta_total_s
from mlconnect.engine.runtime import amp_dtype, make_optimizer, select_device, sparse_rows
from mlconnect.errors import MlconnectError
from mlconnect.fileio import atomic_write_json, read_json
from mlconnect.layout import ExperimentPaths

CHECKPOINT_FORMAT = 1


def train(cfg: Config, experiment_dir: str | Path, *, resume: bool = False, force: bool = False,
          on_eval: Any = None) -> dict[str, Any]:
    """Train ``cfg`` into ``experiment_dir``; returns the results written to results/metrics.json.

    ``on_eval(epoch, value)`` is called after each validation (sweeps report it to Optuna's pruner;
    an exception it raises ends the run, recorded with the exception's ``run_state``).
    """
    info = distributed.env_info()  # DDP: rank 0 alone makes the folder; the others wait for it
    paths = (prepare_experiment(cfg, experiment_dir, resume=resume, force=force) if info.is_main
             else ExperimentPaths(Path(experiment_dir)))
    # --resume before the first checkpoint starts from scratch (prepare_experiment said so).
    return Trainer(cfg, paths, resume=resume and paths.checkpoint("last").is_file(), on_eval=on_eval).run()


class Trainer:
    def __init__(self, cfg: Config, paths: ExperimentPaths, resume: bool, on_eval: Any = None) -> None:
        self.cfg, self.paths, self.resume = cfg, paths, resume
        self.on_eval = on_eval  # hook: sweeps (per-epoch report for pruning)
        self.stop_signal: int | None = None
        self.tokens_per_s = 0.0  # a run resumed after its epoch's last step trains no step in that epoch
        self.started = now_iso()

    # --- setup ----------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        if cfg["num_threads"]:
            torch.set_num_threads(cfg["num_threads"])
        torch.manual_seed(cfg["seed"])
        np.random.seed(cfg["seed"] % 2**32)
        self.dist, rank_device = distributed.setup(cfg["device"])  # hook: ddp
        self.device = rank_device or select_device(cfg["device"])
        self.amp = amp_dtype(cfg, self.device)
        t0 = time.perf_counter()
        self.ds = load_dataset(cfg)
        self.split = split_leave_one_out(self.ds, cfg.max_len)
        # BERT4Rec reads whole windows both ways, so its windows never overlap.
        stride = cfg.max_len if cfg["model"] == "BERT4Rec" else cfg["window_stride"]
        self.windows = window_index(self.split.train, cfg.max_len, stride)  # gathered per batch
        if not len(self.windows) or not self.split.valid_target.any():
            # RecBole's split: 2 interactions give a training target, 4 a valid and a test one too.
            # Without a valid target there is no best epoch to keep (nor early stopping).
            what = "training interactions" if not len(self.windows) else "user with a valid target"
            raise MlconnectError(f"dataset {self.ds.name} has no {what}",
                                 "a user needs 4 interactions for train, valid and test targets (RecBole's split): "
                                 "add interactions, or import again with lower --min-*-inter filters")
        self.data_s = time.perf_counter() - t0
        self.window_tokens = self.windows.tokens()
        self.per_batch = max(1, cfg["train_batch_size"] // cfg.max_len)
        self.steps_per_epoch = math.ceil(len(self.windows) / self.per_batch)
        # hook: ddp (each rank takes 1/world of every global batch, of its 1/world of the windows)
        self.per_batch = distributed.per_rank_batch(self.per_batch, self.dist)
        self.steps_per_epoch = math.ceil(-(-len(self.windows) // self.dist.world_size) / self.per_batch)
        sparse = sparse_rows(cfg, self.ds.n_items, self.device, self.dist.world_size)  # large catalogs on CPU
        self.model = build_model(cfg, self.ds.n_items, sparse).to(self.device)
        # hook: ddp. compile: the training loss runs through the compiled graph (evaluation stays eager)
        self.forward_model = distributed.wrap(self.model, self.dist, self.device, compile=cfg["compile"])
        self.optimizer = make_optimizer(cfg, self.model)
        # An exponential moving average of the weights evaluates smoother than the raw weights.
        self.ema = (torch.optim.swa_utils.AveragedModel(
            self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg["ema_decay"]))
            if cfg["ema_decay"] else None)
        self.state: dict[str, Any] = {
            "best_valid": None, "best_epoch": 0, "bad_evals": 0, "history": [], "loss_history": [], "curve": [],
            "elapsed_s": 0.0, "tokens": 0, "time_to_best_s": None, "stopped_early": False}
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        if self.resume:
            self._restore(load_checkpoint(self.paths.checkpoint("last"), map_location=self.device))
        distributed.barrier(self.dist)  # hook: ddp (rank 0 has made the folder)
        if not self.dist.is_main:  # hook: ddp (only rank 0 writes files)
            self.progress = self.tb = distributed.Null()
            self.tracker = None
            return
        write_vocab(self.paths, self.ds)
        self.progress = ProgressFile(self.paths, cfg["progress_interval_s"])
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.paths.tensorboard), purge_step=self.global_step if self.resume else None)
        from mlconnect.engine.tracking import make_tracker  # imported here: MLflow only when the config asks

        self.tracker = make_tracker(cfg.to_dict(), self.paths.root)

    def _restore(self, ck: dict[str, Any]) -> None:
        if ck.get("format") != CHECKPOINT_FORMAT or ck.get("model_name") != self.cfg["model"]:
            raise MlconnectError(f"checkpoint in {self.paths.checkpoints} is for another model or format",
                                 "resume with the config the experiment was created with")
        if self.ema is not None:
            self.model.load_state_dict(ck["train_model"])
            self.ema.module.load_state_dict(ck["model"])
            self.ema.n_averaged.fill_(ck["ema_n_averaged"])
        else:
            self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.epoch, self.step_in_epoch, self.global_step = ck["epoch"], ck["step"], ck["global_step"]
        self.state.update(ck["trainer"])
        torch.set_rng_state(ck["rng_torch"].cpu())
        if self.device.type == "cuda" and ck.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all([t.cpu() for t in ck["rng_cuda"]])

    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "model_name": self.cfg["model"], "n_items": self.ds.n_items,
            # "model" holds the weights to evaluate and serve (the average, when ema_decay is set).
            "model": self.eval_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            **({"train_model": self.model.state_dict(), "ema_n_averaged": int(self.ema.n_averaged)}
               if self.ema is not None else {}),
            "epoch": self.epoch, "step": self.step_in_epoch, "global_step": self.global_step,
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "trainer": dict(self.state),
        }

    @property
    def eval_model(self) -> SequentialRecommender:
        return self.ema.module if self.ema is not None else self.model

    def _save(self, which: str) -> None:
        if not self.dist.is_main:  # hook: ddp
            return
        if not self.cfg["save_checkpoints"] and which == "last" and self.stop_signal is None:
            return
        save_checkpoint(self.paths.checkpoint(which), self._checkpoint_state())
        atomic_write_json(self.paths.checkpoint_meta(which), {
            "epoch": self.epoch, "step": self.step_in_epoch, "global_step": self.global_step,
            "best_valid": self.state["best_valid"], "valid": (self.state["history"] or [{}])[-1],
            "model": self.cfg["model"], "saved_at": now_iso()})

    # --- the loop -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            self._setup()
        except MlconnectError as exc:  # a full disk while writing the vocab, a bad checkpoint...
            if distributed.env_info().is_main:
                record_failure(self.paths, exc)
            raise
        if not self.dist.is_main:  # DDP: ranks above 0 train and stay silent
            return self._run_rank()
        self.reporter = Reporter(self.paths.log, self.cfg["epochs"])
        write_meta(self.paths, device=str(self.device), started=self.started)
        self.reporter.log(f"{'resuming' if self.resume else 'training'} {self.cfg['model']} on {self.ds.name}: "
                          f"{self.ds.n_users} users, {self.ds.n_items - 1} items, {self.ds.n_interactions} "
                          f"interactions (data ready in {self.data_s:.2f}s), device {self.device}"
                          + (f", amp {self.amp}" if self.amp else ""))
        if self.tracker:
            self.tracker.log_params(self.cfg.to_dict())
        previous = install_signals(self._note_signal)
        try:
            self._epochs(save=True)
            results = self._finish()
            distributed.barrier(self.dist)  # hook: ddp (the other ranks wait for the results file)
        except TrainingInterrupted:
            self._save("last")
            self._write_progress("stopped", force=True)
            write_meta(self.paths, device=str(self.device), started=self.started, ended=now_iso(), state="stopped")
            if self.tracker:
                self.tracker.finish("stopped")
            raise
        except BaseException as exc:
            state = getattr(exc, "run_state", "failed")  # a pruned sweep trial says "pruned"
            # Each record is best-effort: on a full disk the error itself must still reach the user.
            with contextlib.suppress(OSError):
                self._write_progress(state, force=True)
            record_failure(self.paths, exc, self.reporter.log, state=state)
            with contextlib.suppress(OSError):
                write_meta(self.paths, device=str(self.device), started=self.started, ended=now_iso(), state=state)
            if self.tracker:
                self.tracker.finish(state)
            raise
        finally:
            restore_signals(previous)
            with contextlib.suppress(OSError):  # a full disk: the error above is the one to show
                self.tb.close()
            self.reporter.close()
            distributed.teardown(self.dist)  # hook: ddp
        return results

    def _run_rank(self) -> dict[str, Any]:
        """A rank above 0 (hook: ddp): the same loop, no files; stops with rank 0."""
        self.reporter = distributed.Null()
        previous = install_signals(self._note_signal)
        try:
            self._epochs(save=False)
            distributed.barrier(self.dist)  # rank 0 has written the results: every rank returns them
            return read_json(self.paths.results) or {}
        finally:
            restore_signals(previous)
            distributed.teardown(self.dist)

    def _epochs(self, *, save: bool) -> None:
        """Train the remaining epochs, validating every eval_step; ``save``: rank 0 keeps last.pt."""
        while self.epoch < self.cfg["epochs"] and not self.state["stopped_early"]:
            self._train_epoch()
            self.epoch += 1
            self.step_in_epoch = 0
            if self.epoch % self.cfg["eval_step"] == 0 or self.epoch == self.cfg["epochs"]:
                self._validate()
            if save:
                self._save("last")
                self._write_progress("running", force=True)

    def _train_epoch(self) -> None:
        cfg, model = self.cfg, self.forward_model
        self.model.train()
        gen = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.windows), generator=gen)
        order = distributed.shard(order, self.dist)  # hook: ddp (this rank's windows)
        self.reporter.start_epoch(self.epoch + 1, self.steps_per_epoch, self.step_in_epoch)
        # A resumed epoch goes on from the loss of its steps before the interruption (checkpointed
        # below), so its loss_history entry equals the uninterrupted run's.
        loss_sum = torch.tensor(self.state.get("partial_loss_sum", 0.0), device=self.device)
        loss_n = self.state.get("partial_loss_n", 0)
        epoch_t0, epoch_tokens = time.perf_counter(), 0
        clip = cfg["clip_grad_norm"]
        for step in range(self.step_in_epoch, self.steps_per_epoch):
            step_t0 = time.perf_counter()
            idx = order[step * self.per_batch:(step + 1) * self.per_batch]
            x, y = (torch.from_numpy(a).to(self.device) for a in self.windows.batch(idx.numpy()))
            with torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext():
                loss = model.training_loss(x, y, cfg["loss_type"], cfg["sampled_negatives"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip["max_norm"], clip.get("norm_type", 2))
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            loss_sum += loss.detach()
            loss_n += 1
            tokens = int(self.window_tokens[idx.numpy()].sum())
            epoch_tokens += tokens
            self.state["tokens"] += tokens
            self.global_step += 1
            self.step_in_epoch = step + 1
            elapsed = time.perf_counter() - epoch_t0
            tps = epoch_tokens / elapsed if elapsed > 0 else 0.0
            self.tokens_per_s = tps
            if self.global_step % cfg["log_interval"] == 0 or step + 1 == self.steps_per_epoch:
                self.last_loss = float(loss_sum / loss_n)
                self.tb.add_scalar("train/loss", self.last_loss, self.global_step)
                eta = eta_s(elapsed, step + 1, self.steps_per_epoch, cfg["epochs"] - self.epoch - 1)
                self.reporter.step(self.epoch + 1, step + 1, self.last_loss, tps, eta)
            self.state["elapsed_s"] += time.perf_counter() - step_t0
            self._write_progress("running")
            # DDP: the all-reduced flag alone decides, so every rank stops at the same step (hook: ddp).
            if distributed.any_rank(self.stop_signal is not None, self.dist, self.device):
                self.state.update(partial_loss_sum=float(loss_sum), partial_loss_n=loss_n)
                signum = self.stop_signal or signal.SIGTERM  # another rank's signal: stop as if it were ours
                raise TrainingInterrupted(signum, self.paths, self.epoch, self.step_in_epoch)
        epoch_loss = float(distributed.all_reduce(loss_sum / max(loss_n, 1), self.dist, "mean"))  # hook: ddp
        if self.dist.enabled:  # hook: ddp (throughput and token count of all ranks together)
            tokens = distributed.all_reduce(torch.tensor([epoch_tokens, self.tokens_per_s], device=self.device),
                                            self.dist)
            self.state["tokens"] += int(tokens[0]) - epoch_tokens
            self.tokens_per_s = float(tokens[1])
        self.state.update(partial_loss_sum=0.0, partial_loss_n=0)
        self.last_loss = epoch_loss
        self.state["loss_history"].append(epoch_loss)
        self.tb.add_scalar("train/epoch_loss", epoch_loss, self.epoch + 1)
        self.tb.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.epoch + 1)
        self.tb.add_scalar("train/throughput_tokens_per_s", self.tokens_per_s, self.epoch + 1)
        self.epoch_seconds = time.perf_counter() - epoch_t0
        self.reporter.log(f"epoch {self.epoch + 1}/{cfg['epochs']}  loss {epoch_loss:.4f}  "
                          f"{self.tokens_per_s:,.0f} tok/s  {self.epoch_seconds:.2f}s")
        if self.tracker:
            self.tracker.log_metrics({"train_loss": epoch_loss, "throughput_tokens_per_s": self.tokens_per_s},
                                     self.epoch + 1)

    def _validate(self) -> None:
        t0 = time.perf_counter()
        valid = evaluate(self.eval_model, self.split, "valid", self.cfg, self.device, self.amp)
        self.state["elapsed_s"] += time.perf_counter() - t0
        key = self.cfg["valid_metric"].lower()
        value = valid[key]
        self.state["history"].append({"epoch": self.epoch, **valid})
        self.state["curve"].append({"epoch": self.epoch, "elapsed_s": round(self.state["elapsed_s"], 3),
                                    key: value})
        for k, v in valid.items():
            self.tb.add_scalar(f"valid/{k}", v, self.epoch)
        if self.tracker:
            self.tracker.log_metrics({f"valid_{k.replace('@', '_at_')}": v for k, v in valid.items()}, self.epoch)
        best = self.state["best_valid"]
        bigger = self.cfg["valid_metric_bigger"]
        # RecBole's early stopping: a tie counts as an improvement.
        improved = best is None or (value >= best if bigger else value <= best)
        if improved:
            self.state.update(best_valid=value, best_epoch=self.epoch, bad_evals=0,
                              time_to_best_s=self.state["elapsed_s"])
            self._save("best")
        else:
            self.state["bad_evals"] += 1
            if self.state["bad_evals"] > self.cfg["stopping_step"]:
                self.state["stopped_early"] = True
        note = "  early stop" if self.state["stopped_early"] else ""
        self.reporter.log(f"epoch {self.epoch} valid {key} {value:.4f} (best {self.state['best_valid']:.4f} "
                          f"at epoch {self.state['best_epoch']}){note}")
        if self.on_eval is not None:  # hook: sweeps (may raise to prune this run)
            self.on_eval(self.epoch, value)

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.paths.checkpoint("best").is_file():
            self.eval_model.load_state_dict(load_checkpoint(self.paths.checkpoint("best"), self.device)["model"])
        valid = evaluate(self.eval_model, self.split, "valid", cfg, self.device, self.amp)
        test = evaluate(self.eval_model, self.split, "test", cfg, self.device, self.amp)
        for k, v in test.items():
            self.tb.add_scalar(f"test/{k}", v, self.state["best_epoch"])
        epochs = self.epoch
        results = {
            "experiment": self.paths.name, "model": cfg["model"], "dataset": cfg["dataset"],
            "valid_metric": cfg["valid_metric"].lower(), "best_epoch": self.state["best_epoch"], "epochs": epochs,
            "stopped_early": self.state["stopped_early"], "best_valid": valid, "test": test,
            "wall_time_s": round(self.state["elapsed_s"], 3),
            "time_to_best_s": round(self.state["time_to_best_s"] or self.state["elapsed_s"], 3),
            "seconds_per_epoch": round(self.state["elapsed_s"] / max(epochs, 1), 3),
            "throughput_tokens_per_s": round(self.state["tokens"] / max(self.state["elapsed_s"], 1e-9), 1),
            "data_ready_s": round(self.data_s, 3),
            "valid_curve": self.state["curve"],  # valid metric against cumulative training seconds
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_gpu_mem_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                                if self.device.type == "cuda" else None),
            "device": str(self.device), "n_users": self.ds.n_users, "n_items": self.ds.n_items - 1,
            "n_interactions": self.ds.n_interactions,
            "world_size": self.dist.world_size,  # hook: ddp
        }
        atomic_write_json(self.paths.results, results)
        self._write_progress("finished", force=True)
        write_meta(self.paths, device=str(self.device), started=self.started, ended=now_iso(), state="finished")
        self.reporter.log("test " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()))
        self.reporter.log(f"results in {self.paths.results}; TensorBoard logs in {self.paths.tensorboard}")
        if self.tracker:
            self.tracker.log_metrics({f"test_{k.replace('@', '_at_')}": v for k, v in test.items()}, epochs)
            self.tracker.log_artifact(self.paths.results)
            self.tracker.finish("finished")
        return results

    # --- bookkeeping ----------------------------------------------------------------------------
    def _write_progress(self, state: str, force: bool = False) -> None:
        h = self.state["history"]
        self.progress.write({
            "state": state, "model": self.cfg["model"], "dataset": self.cfg["dataset"],
            "epoch": self.epoch, "epochs": self.cfg["epochs"], "step": self.step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch, "global_step": self.global_step,
            "loss": getattr(self, "last_loss", None), "loss_history": self.state["loss_history"],
            "valid_metric": self.cfg["valid_metric"].lower(),
            "valid": {k: v for k, v in h[-1].items() if k != "epoch"} if h else {},
            "valid_history": h, "best_valid": self.state["best_valid"], "best_epoch": self.state["best_epoch"],
            "throughput_tokens_per_s": round(getattr(self, "tokens_per_s", 0.0), 1),
            "elapsed_s": round(self.state["elapsed_s"], 2),
            "eta_s": eta_total_s(self.state["elapsed_s"], self.epoch * self.steps_per_epoch + self.step_in_epoch,
                                 self.cfg["epochs"] * self.steps_per_epoch),
            "world_size": self.dist.world_size,  # hook: ddp
        }, force=force)

    def _note_signal(self, signum: int) -> None:
        self.stop_signal = signum  # acted on at the end of the current step
