"""Dashboard rendering: snapshot dicts in, text out (pure functions)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rich.console import Console

from mlconnect.watch.render import render_frame, sparkline, view

NOW = datetime(2026, 11, 28, 18, 0, 0, tzinfo=timezone.utc)


def _text(renderable) -> str:
    c = Console(width=120, record=True, color_system=None)
    c.print(renderable)
    return c.export_text()


def _snap(**kw):
    progress = {"state": "running", "model": "SASRec", "dataset": "ml-100k", "epoch": 3, "epochs": 50,
                "step": 12, "steps_per_epoch": 40, "loss": 7.12, "loss_history": [8.1, 7.6, 7.3],
                "valid_metric": "ndcg@10", "valid": {"ndcg@10": 0.051}, "best_valid": 0.051, "best_epoch": 3,
                "throughput_tokens_per_s": 51234.0, "elapsed_s": 31.2, "eta_s": 410.0,
                "updated": (NOW - timedelta(seconds=10)).isoformat()}
    snap = {"experiment": "exp_001", "exists": True, "progress": progress, "status": None,
            "results": None, "gpu": None, "log_tail": ["epoch 3 done"], "problems": []}
    snap.update(kw)
    return snap


def test_running_frame_shows_epoch_eta_gpu_and_log():
    gpu = {"timestamp": "t", "note": None, "gpus": [{"gpu": "0", "name": "RTX 4090", "utilization_gpu_pct": 97.0,
           "memory_used_mib": 8000.0, "memory_total_mib": 24564.0, "temperature_c": 71.0, "power_w": None}]}
    v = view(_snap(gpu=gpu), NOW)
    assert v["state"] == "running" and v["epoch"] == 3 and v["eta_s"] == 400.0
    out = _text(render_frame(v))
    assert "3/50" in out and "12/40" in out and "ETA 6:40" in out
    assert "util 97%" in out and "temp 71°C" in out and "epoch 3 done" in out
    assert "ndcg@10 0.0510 at epoch 3" in out


def test_status_json_wins_and_stale_heartbeat_is_flagged():
    status = {"state": "running", "heartbeat": (NOW - timedelta(minutes=5)).isoformat()}
    v = view(_snap(status=status), NOW)
    assert v["state_source"] == "status.json" and v["stale_s"] == 300.0
    assert "no update for 5:00" in _text(render_frame(v))
    v = view(_snap(status={"state": "failed", "exit_code": 1}), NOW)
    assert v["state"] == "failed" and "exit code 1" in _text(render_frame(v))


def test_no_gpu_and_reconnecting():
    v = view(_snap(gpu={"timestamp": None, "gpus": [], "note": "no GPU: nvidia-smi not found"}), NOW)
    out = _text(render_frame(v, reconnecting="ssh: connection refused"))
    assert "nvidia-smi not found" in out and "reconnecting" in out


def test_sparkline():
    assert sparkline([8.0, 7.0, 6.0]) == "█▅▁"
    assert sparkline([]) == ""


def test_finished_run_shows_its_wall_clock_time():
    """Issue 10: a finished run read "elapsed 0:00" (the trainer's own sub-second total)."""
    t0 = NOW - timedelta(minutes=10)
    done = {"state": "finished", "epoch": 2, "epochs": 2, "elapsed_s": 0.4, "started": t0.isoformat(),
            "updated": (t0 + timedelta(seconds=95)).isoformat()}
    v = view(_snap(progress=done), NOW)
    assert v["state"] == "succeeded" and v["elapsed_s"] == 95.0
    assert "elapsed 1:35" in _text(render_frame(v))
    status = {"state": "succeeded", "started": t0.isoformat(), "ended": (t0 + timedelta(seconds=130)).isoformat()}
    assert view(_snap(progress=done, status=status), NOW)["elapsed_s"] == 130.0
    running = {**done, "state": "running"}
    assert view(_snap(progress=running), NOW)["elapsed_s"] == 600.0
