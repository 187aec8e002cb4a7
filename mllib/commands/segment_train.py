"""Train a Keras UNet from a TFRecord training set (made by datasets/cocorecord.py) and save it to the store.

    python3 segment/train.py --records coco --model_name unet --store s3://coco --epochs 10

reads trainingsets/coco/*.tfrecord with tf.data, trains, and writes models/unet/model.keras and
models/unet/training.json; prints "saved unet to s3://coco/models/unet (loss 0.41 after 10 epochs)".
"""

from __future__ import annotations

import sys

from mllib import checks, cli


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("--records", "--trainingset", "-trainingset", dest="records", metavar="NAME", type=checks.NAME, required=True,
                   help="the TFRecord training set (trainingsets/<name>; --trainingset, the seed's spelling, too)")
    p.add_argument("--model_name", "--savedmodelname", "-savedmodelname", dest="model_name", metavar="NAME", type=checks.NAME,
                   default="unet", help="models/<model_name>/ in the store (--savedmodelname, the seed's spelling, too)")
    p.add_argument("--set", default="train", help="which set to train on")
    p.add_argument("--epochs", "-epochs", type=checks.Range(1), default=10)
    p.add_argument("--batch_size", "-batch_size", type=checks.Range(1), default=8)
    p.add_argument("--max_steps", "-max_steps", type=checks.Range(0), default=0, help="train this many steps (0: --epochs)")
    p.add_argument("--height", type=checks.Range(16, 16384, step=16), default=256, help="crop height (a multiple of 16: the UNet halves it 4 times)")
    p.add_argument("--width", type=checks.Range(16, 16384, step=16), default=256, help="crop width (a multiple of 16)")
    p.add_argument("--learning_rate", "-learning_rate", type=checks.Range(0, lo_open=True, real=True), default=1e-3)
    p.add_argument("--model_width", type=checks.Range(1, 1024), default=16, help="channels of the first UNet level")
    p.add_argument("--seed", type=checks.SEED, default=0)
    p.add_argument("--quiet", action="store_true", help="no Keras progress bar")
    cli.add_log_args(p)
    return p.parse_args(argv)


def run(args) -> int:
    from mllib.training import tfseg

    store = cli.open_store(args)
    info = tfseg.train(store, args.records, args.model_name, epochs=args.epochs,
                       batch_size=args.batch_size, height=args.height, width=args.width,
                       learning_rate=args.learning_rate, max_steps=args.max_steps, base=args.model_width,
                       seed=args.seed, set_name=args.set, verbose=0 if args.quiet else 1)
    loss = info["loss"][-1] if info["loss"] else float("nan")
    print(f"saved {args.model_name} to {store.url_for(tfseg.model_prefix(args.model_name))} "
          f"(loss {loss:.4f})")
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "mllib-segment-train")


if __name__ == "__main__":
    sys.exit(main())
