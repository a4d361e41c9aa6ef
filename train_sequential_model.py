#!/usr/bin/env python3
"""The workflow's training script, kept as an entry point so existing habits keep working.

    python train_sequential_model.py --config configs/baseline.yaml --experiment exp_001

Takes every option of ``mlconnect train`` (``--set key=value``, ``--resume``, ``--data-path`` ...).
"""

import sys

from mlconnect.cli.main import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
