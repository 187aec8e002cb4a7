"""What a training run leaves to look at, in runs/<model_name>/ (rank 0 only):

    config.json      the run's full configuration (every setting, the model, the classes, the world size, versions)
    metrics.jsonl    one line per epoch (written by mllib.training.train)
    steps.jsonl      one line every --log_every steps: step, epoch, loss, learning rate, images/s, data wait
    events.out.tfevents.*   TensorBoard: train/loss, train/lr, train/images_per_s, train/data_wait every
                     --log_every steps; val/miou, val/macc, val/pixel_accuracy, val/iou/<class> and a picture of
                     image | label | prediction per evaluation
    curves.png       training loss and learning rate over the steps, validation mIoU over the epochs, redrawn at
                     the end of each epoch

    tensorboard --logdir runs
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

log = logging.getLogger(__name__)


class RunRecord:
    def __init__(self, folder: str | Path, tensorboard: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.steps_path = self.folder / "steps.jsonl"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("tensorboard is not installed: no event files (pip install tensorboard)")
            else:
                self.writer = SummaryWriter(log_dir=str(self.folder))

    def config(self, cfg: dict, **extra) -> None:
        import torch

        from mllib.atomic import atomic_write

        doc = {"config": cfg, **extra, "torch": torch.__version__, "python": platform.python_version()}
        with atomic_write(self.folder / "config.json", "w") as f:
            json.dump(doc, f, indent=1)
        if self.writer is not None:
            self.writer.add_text("config", "```\n" + json.dumps(doc, indent=1) + "\n```", 0)

    def step(self, step: int, epoch: int, loss: float, lr: float, images_per_s: float, data_wait: float) -> None:
        line = {"step": step, "epoch": epoch, "loss": round(loss, 6), "lr": lr, "images_per_s": round(images_per_s, 2),
                "data_wait": round(data_wait, 4)}
        with open(self.steps_path, "a") as f:
            f.write(json.dumps(line) + "\n")
        if self.writer is not None:
            for k in ("loss", "lr", "images_per_s", "data_wait"):
                self.writer.add_scalar(f"train/{k}", line[k], step)

    def epoch(self, metrics: dict, picture=None) -> None:
        step = metrics["step"]
        if self.writer is not None:
            if metrics.get("train_loss") is not None:
                self.writer.add_scalar("epoch/train_loss", metrics["train_loss"], step)
            val = metrics.get("val") or {}
            for k in ("miou", "macc", "pixel_accuracy"):
                if val.get(k) is not None:
                    self.writer.add_scalar(f"val/{k}", val[k], step)
            for name, v in (val.get("iou") or {}).items():
                if v is not None:
                    self.writer.add_scalar(f"val/iou/{name}", v, step)
            if picture is not None:
                self.writer.add_image("val/image_label_prediction", picture, step, dataformats="HWC")
            self.writer.flush()

    def curves(self, history: list[dict]) -> None:
        """curves.png from steps.jsonl and the epochs' metrics."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        from mllib.atomic import atomic_write

        steps = []
        if self.steps_path.exists():
            for line in self.steps_path.read_text().splitlines():
                try:
                    steps.append(json.loads(line))
                except ValueError:
                    continue
        steps = list({s["step"]: s for s in steps}.values())  # a resumed run logs some steps again: the last wins
        steps.sort(key=lambda s: s["step"])
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        if steps:
            axes[0].plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=1)
            axes[1].plot([s["step"] for s in steps], [s["lr"] for s in steps], lw=1, color="tab:orange")
        val = [(m["epoch"], m["val"]["miou"]) for m in history if m.get("val") and m["val"].get("miou") is not None]
        if val:
            axes[2].plot([e for e, _ in val], [v for _, v in val], marker="o", color="tab:green")
        from matplotlib.ticker import MaxNLocator

        axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax, title, xlabel in zip(axes, ("training loss", "learning rate", "validation mIoU"),
                                     ("step", "step", "epoch"), strict=True):
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_write(self.folder / "curves.png") as f:
            fig.savefig(f, format="png", dpi=90)
        plt.close(fig)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
