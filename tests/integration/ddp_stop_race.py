"""Run by test_ddp under real torchrun: rank 1 gets SIGTERM at the worst moment for a DDP stop.

The signal is raised on rank 1 right after a stop-flag all-reduce has returned, where a torchrun
SIGTERM lands whenever it arrives while the rank waits inside that collective (Python runs the
handler as soon as the C call returns). The ranks must still stop at one and the same step.
Each rank writes ``<out>/rank<N>.json``: how its training ended and at which step.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

from mlconnect.engine import distributed
from mlconnect.engine.config import load_config
from mlconnect.engine.trainer import TrainingInterrupted, train

config, exp_dir, out, at_call = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
rank = int(os.environ["RANK"])
_real_all_reduce = distributed.all_reduce
calls = 0


def all_reduce_then_signal(value, info, op="sum"):
    global calls
    result = _real_all_reduce(value, info, op)
    if rank == 1 and op == "max":  # the per-step stop-flag reduce (distributed.any_rank)
        calls += 1
        if calls == at_call:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, after the ranks agreed "go on"
    return result


distributed.all_reduce = all_reduce_then_signal
try:
    train(load_config(config, {}), exp_dir)
    ended, step = "finished", None
except TrainingInterrupted as exc:
    ended, step = "stopped", re.search(r"at (epoch \d+, step \d+)", str(exc)).group(1)
except BaseException as exc:  # what the race used to do to the other rank: a collective with a dead peer
    ended, step = f"failed: {type(exc).__name__}: {exc}"[:300], None
(out / f"rank{rank}.json").write_text(json.dumps({"ended": ended, "step": step, "calls": calls}))
