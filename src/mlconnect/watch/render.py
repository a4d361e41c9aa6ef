"""From a snapshot (see :mod:`mlconnect.expstate`) to what a person sees: pure functions.

:func:`view` derives the numbers (state, epoch, ETA, best metric, GPU line...) once; the frame,
the final summary and ``monitor --json`` all use that one dict, so the table and the JSON never
disagree. Nothing here reads a file, sleeps or talks to a host: tests feed dicts in and look at
the rendered text.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mlconnect.expstate import TERMINAL as TERMINAL_STATES
from mlconnect.expstate import parse_iso, state_of

TERMINAL = frozenset(TERMINAL_STATES)  # nothing will change any more
STATE_STYLE = {"running": "bold cyan", "queued": "yellow", "succeeded": "bold green",
               "stopped": "yellow", "failed": "bold red", "lost": "bold red"}
# A running run whose progress.json / heartbeat is older than this is shown as possibly gone.
STALE_AFTER_S = 120.0
SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[Any], width: int = 40) -> str:
    """``[8.1, 7.6, 7.3]`` -> ``█▄▁``; the last ``width`` values, scaled between their min and max."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and v == v][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        return SPARK[3] * len(vals)
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / (hi - lo) * len(SPARK)))] for v in vals)


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds != seconds:
        return "-"
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1000:
        return f"{int(v):,}"
    return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:,.0f}"


def _metric_lookup(metrics: Any, name: str | None) -> Any:
    """``metrics[name]`` ignoring case (configs say ``MRR@10``, files may say ``mrr@10``)."""
    if not isinstance(metrics, dict) or not name:
        return None
    if name in metrics:
        return metrics[name]
    low = name.lower()
    for k, v in metrics.items():
        if str(k).lower() == low:
            return v
    return None


def view(snap: dict, now: datetime | None = None) -> dict:
    """Every number the dashboard shows, as plain JSON-able values."""
    now = now or datetime.now(timezone.utc)
    progress, status, results = snap.get("progress") or {}, snap.get("status") or {}, snap.get("results") or {}
    # Decided where the folder is (expstate.snapshot, on the host for --host); a bare dict
    # (tests, an old snapshot) gets the same rule here.
    verdict = snap.get("state") or state_of(status, progress, results, bool(snap.get("has_config")))
    state, source = verdict["state"], verdict["source"]
    metric = progress.get("valid_metric") or results.get("valid_metric")
    updated = parse_iso(progress.get("updated"))
    age = (now - updated).total_seconds() if updated else None
    beat = parse_iso(status.get("heartbeat"))
    beat_age = (now - beat).total_seconds() if beat else None
    stale = None
    if state == "running":
        # Prefer the heartbeat (written every few seconds by the supervisor) over progress.json
        # (written every progress_interval_s, which a long epoch can stretch).
        ref = beat_age if beat_age is not None else age
        if ref is not None and ref > STALE_AFTER_S:
            stale = ref
    eta = progress.get("eta_s")
    if isinstance(eta, (int, float)) and state == "running" and age is not None:
        eta = max(0.0, eta - age)  # progress.json is a few seconds old; the ETA moved on
    elif state in TERMINAL:
        eta = 0.0 if state == "succeeded" else None
    best_valid = progress.get("best_valid")
    if best_valid is None:
        best_valid = _metric_lookup(results.get("best_valid"), metric)
    gpu = snap.get("gpu")
    return {
        "experiment": snap.get("experiment"),
        "path": snap.get("path"),
        "state": state,
        "state_source": source,
        "model": progress.get("model") or results.get("model"),
        "dataset": progress.get("dataset") or results.get("dataset"),
        "epoch": progress.get("epoch", results.get("epochs")),
        "epochs": progress.get("epochs"),
        "step": progress.get("step"),
        "steps_per_epoch": progress.get("steps_per_epoch"),
        "global_step": progress.get("global_step"),
        "loss": progress.get("loss"),
        "loss_history": list(progress.get("loss_history") or []),
        "valid_metric": metric,
        "valid": progress.get("valid") or {},
        "best_valid": best_valid,
        "best_epoch": progress.get("best_epoch", results.get("best_epoch")),
        "test": results.get("test") or {},
        "throughput_tokens_per_s": progress.get("throughput_tokens_per_s",
                                                results.get("throughput_tokens_per_s")),
        "elapsed_s": _elapsed(state, status, progress, results, now),
        "eta_s": eta,
        "updated_age_s": None if age is None else round(age, 1),
        "stale_s": None if stale is None else round(stale, 1),
        "gpu": gpu,
        "log_tail": snap.get("log_tail") or [],
        "problems": list(snap.get("problems") or []),
        "exit_code": status.get("exit_code"),
        "host": status.get("host"),
        "reason": verdict.get("reason"),
    }


def _elapsed(state: str, status: dict, progress: dict, results: dict, now: datetime) -> Any:
    """Wall-clock time of the run: start to end (or to now while it runs), from status.json for a
    detached run, progress.json for a foreground one; the trainer's own seconds otherwise."""
    src = status if status.get("started") else progress
    started = parse_iso(src.get("started"))
    ended = now if state in ("running", "queued") else parse_iso(
        src.get("ended") if src is status else progress.get("updated"))
    if started and ended and ended >= started:
        return round((ended - started).total_seconds(), 1)
    return progress.get("elapsed_s", results.get("wall_time_s"))


def _state_text(v: dict) -> Text:
    t = Text(v["state"], style=STATE_STYLE.get(v["state"], "bold"))
    if v.get("stale_s") is not None:
        t.append(f"  (no update for {fmt_duration(v['stale_s'])} — process gone?)", style="red")
    if v["state"] in ("failed", "stopped", "lost") and v.get("exit_code") is not None:
        t.append(f"  exit code {v['exit_code']}", style="dim")
    return t


def _bar(done: Any, total: Any) -> RenderableType:
    if not isinstance(done, (int, float)) or not isinstance(total, (int, float)) or total <= 0:
        return Text("-")
    bar = ProgressBar(total=float(total), completed=float(min(done, total)), width=30)
    grid = Table.grid(padding=(0, 1))
    grid.add_row(bar, Text(f"{int(done)}/{int(total)}  {100.0 * done / total:.0f}%"))
    return grid


def gpu_text(gpu: dict | None) -> Text:
    """One line per GPU: utilisation, memory, temperature; or why there is no GPU."""
    if gpu is None:
        return Text("no GPU (no gpu_usage.csv: a foreground run, or the sampler has not run yet)",
                    style="dim")
    if not gpu.get("gpus"):
        return Text(f"no GPU ({gpu['note']})" if gpu.get("note") else "no GPU", style="dim")
    t = Text()
    for i, g in enumerate(gpu["gpus"]):
        if i:
            t.append("\n")
        used, total = g.get("memory_used_mib"), g.get("memory_total_mib")
        mem = f"{fmt_num(used, 0)}/{fmt_num(total, 0)} MiB" if used is not None else "mem -"
        t.append(f"GPU {g.get('gpu')} {g.get('name') or ''}: ", style="bold")
        t.append(f"util {fmt_num(g.get('utilization_gpu_pct'), 0)}%  {mem}  "
                 f"temp {fmt_num(g.get('temperature_c'), 0)}°C")
        if g.get("power_w") is not None:
            t.append(f"  {fmt_num(g['power_w'], 0)} W")
    return t


def _metrics_text(metrics: dict) -> str:
    return "  ".join(f"{k} {fmt_num(v)}" for k, v in metrics.items()) or "-"


def render_frame(v: dict, *, reconnecting: str | None = None, log_lines: int = 8) -> RenderableType:
    """The dashboard: state, bars with ETA, loss + sparkline, metrics, throughput, GPU, log tail."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column()
    head.add_row("state", _state_text(v))
    head.add_row("model", f"{v['model'] or '-'} on {v['dataset'] or '-'}")
    head.add_row("epoch", _bar(v["epoch"], v["epochs"]))
    head.add_row("step", _bar(v["step"], v["steps_per_epoch"]) if v["state"] == "running" else Text("-"))
    head.add_row("time", f"elapsed {fmt_duration(v['elapsed_s'])}   ETA {fmt_duration(v['eta_s'])}")
    loss = Text(fmt_num(v["loss"]))
    spark = sparkline(v["loss_history"])
    if spark:
        loss.append(f"   {spark}", style="cyan")
    head.add_row("train loss", loss)
    metric = v["valid_metric"] or "valid"
    head.add_row("valid (latest)", _metrics_text(v["valid"]))
    best = f"{metric} {fmt_num(v['best_valid'])}"
    if v.get("best_epoch") is not None:
        best += f" at epoch {v['best_epoch']}"
    head.add_row("valid (best)", best)
    if v["test"]:
        head.add_row("test", _metrics_text(v["test"]))
    head.add_row("throughput", f"{fmt_num(v['throughput_tokens_per_s'], 0)} tokens/s")
    head.add_row("GPU", gpu_text(v["gpu"]))
    parts: list[RenderableType] = [head]
    for p in v["problems"]:
        parts.append(Text(f"warning: {p}", style="yellow"))
    if reconnecting:
        parts.append(Text(f"reconnecting… ({reconnecting})", style="bold yellow"))
    title = f"mlconnect monitor · {v['experiment']}"
    if v.get("host"):
        title += f" · {v['host']}"
    body = Panel(Group(*parts), title=title, title_align="left", border_style="blue")
    tail = v["log_tail"][-log_lines:]
    log = Panel(Text("\n".join(tail) if tail else "(no training.log yet)", no_wrap=True,
                     overflow="ellipsis"), title="training.log", title_align="left",
                border_style="dim")
    return Group(body, log)


def render_summary(v: dict) -> RenderableType:
    """Printed once the run has ended: how it ended, best and test metrics, time, where to look."""
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    t.add_row("run", f"{v['experiment']} {_state_text(v).plain}")
    t.add_row("epochs", f"{v['epoch'] if v['epoch'] is not None else '-'}"
                        f"{'/' + str(v['epochs']) if v['epochs'] else ''}")
    best = f"{v['valid_metric'] or 'valid'} {fmt_num(v['best_valid'])}"
    if v.get("best_epoch") is not None:
        best += f" at epoch {v['best_epoch']}"
    t.add_row("best valid", best)
    t.add_row("test", _metrics_text(v["test"]))
    t.add_row("wall time", fmt_duration(v["elapsed_s"]))
    t.add_row("throughput", f"{fmt_num(v['throughput_tokens_per_s'], 0)} tokens/s")
    style = "green" if v["state"] == "succeeded" else "red"
    return Panel(t, title="summary", title_align="left", border_style=style)
