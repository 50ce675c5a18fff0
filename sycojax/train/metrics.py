"""Where the numbers of a run go: JSONL (always), TensorBoard, W&B (when asked), a PNG at the end.

One record per optimizer step, `{"step": s, "loss": ..., "grad_norm": ..., "lr": ..., <loss_fn metrics>}`;
the record of a logging step also carries `time/steps_per_s`, `time/examples_per_s` and, when the
batch says how many tokens it holds, `time/tokens_per_s`. Evaluation records are
`{"step": s, "eval/<name>": ...}`. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from absl import logging

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tensorboard"
LOSS_PNG = "loss_curve.png"


def read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_jsonl(path: str, last_step: int) -> None:
    """Drop records after `last_step` (written by a run that died before its next checkpoint)."""
    records = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


class MetricsWriter:
    """Appends records to `<workdir>/metrics.jsonl` and mirrors them to TensorBoard / W&B."""

    def __init__(self, workdir: str, logging_cfg: Mapping[str, Any], config_dict: dict, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self.tb_dir = os.path.join(workdir, TB_DIR)
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 - held open for the run, closed in close()
        if logging_cfg.get("tensorboard", True):
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=self.tb_dir)
        if logging_cfg.get("wandb", False):
            try:
                import wandb
            except ImportError as e:
                raise ImportError(
                    "logging.wandb=True needs the `wandb` package: `pip install wandb`, "
                    "or run with --config.logging.wandb=False"
                ) from e
            self._wandb = wandb.init(
                project=logging_cfg.get("wandb_project", "sycojax"),
                dir=workdir,
                mode=logging_cfg.get("wandb_mode", "offline"),
                config=config_dict,
                name=os.path.basename(os.path.abspath(workdir)),
            )

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        if not self.enabled:
            return
        for r in records:
            self._file.write(json.dumps(r) + "\n")
            step = int(r["step"])
            scalars = {k: v for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
            if self._tb is not None:
                for k, v in scalars.items():
                    self._tb.add_scalar(k if "/" in k else f"train/{k}", v, step)
            if self._wandb is not None:
                self._wandb.log(scalars, step=step)
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def plot_loss_curves(jsonl_path: str, png_path: str) -> str | None:
    """Plot every metric whose name contains "loss" against step (one panel each); returns the PNG path."""
    records = read_jsonl(jsonl_path)
    keys = sorted({k for r in records for k in r if "loss" in k and isinstance(r[k], (int, float))})
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        pts = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
        steps, values = zip(*pts) if pts else ((), ())
        ax.plot(steps, values, marker="." if len(pts) < 50 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    logging.info("loss curves: %s", png_path)
    return png_path
