"""networks/network2d.py as a test runs it in a process of its own, with what a test needs to see and to break:

    python tests/trainer.py [--digests FILE] [--kill_after_save K] [--kill_in_save K] -- NETWORK2D FLAGS...

--digests FILE      append one line per training step (this rank's): the step and the sha256 of each sample the step
                    trained on (FILE.rank<N> under torchrun)
--kill_after_save K SIGKILL this process right after its K-th checkpoint write (a checkpoint.pt put) is whole
--kill_in_save K    SIGKILL this process in the middle of its K-th checkpoint write (half of it written)
--status FILE       write network2d's exit status to FILE (FILE.rank<N> under torchrun)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser()
    p.add_argument("--digests")
    p.add_argument("--kill_after_save", type=int, default=0)
    p.add_argument("--kill_in_save", type=int, default=0)
    p.add_argument("--status")
    args = p.parse_args(argv[:cut])
    net_argv = argv[cut + 1:]

    from mllib.store.base import Store
    from mllib.training import train

    rank = os.environ.get("RANK")
    suffix = f".rank{rank}" if rank is not None else ""
    saves = [0]
    real_save = train.save_checkpoint

    def save(store: Store, model_name: str, state: dict) -> None:
        saves[0] += 1
        if args.kill_in_save and saves[0] == args.kill_in_save:
            buf = io.BytesIO()
            import torch

            torch.save(state, buf)
            data = buf.getvalue()

            class Half(io.BytesIO):  # the store reads the checkpoint from this; half-way it is killed
                def read(self, n=-1):
                    if self.tell() >= len(data) // 2:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return super().read(min(n, 4096) if n and n > 0 else 4096)

            store.put_stream(train.checkpoint_key(model_name), Half(data), size=len(data))
            raise AssertionError("not killed")
        real_save(store, model_name, state)
        if args.kill_after_save and saves[0] == args.kill_after_save:
            os.kill(os.getpid(), signal.SIGKILL)

    train.save_checkpoint = save

    if args.digests:
        path = args.digests + suffix
        real_step = train.train_step

        def step(model, batch, *a, **kw):
            images, labels = batch[0], batch[1]
            with open(path, "a") as f:
                f.write(" ".join(hashlib.sha256(x.cpu().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest()
                                 for x, y in zip(images, labels, strict=True)) + "\n")
            return real_step(model, batch, *a, **kw)

        train.train_step = step

    import importlib.util

    spec = importlib.util.spec_from_file_location("network2d", ROOT / "networks" / "network2d.py")
    net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(net)
    status = net.main(net_argv)
    if args.status:
        Path(args.status + suffix).write_text(str(status))
    return status


if __name__ == "__main__":
    sys.exit(main())
