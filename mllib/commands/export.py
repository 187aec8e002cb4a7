"""Export a network2d checkpoint to ONNX (dynamic batch, height and width), checked with onnxruntime against the
PyTorch model on a real image.

    python3 networks/export.py --store s3://coco --model_name unet2d --out unet2d.onnx
    python3 networks/export.py --store s3://coco --checkpoint models/unet2d/checkpoint.pt --out m.onnx --image a.jpg

The graph takes "image", float32 N x C x H x W (any N, H and W), normalized as the model was trained (the metadata says how:
normalize, mean, std on the 0..1 scale), and gives "logits", N x classes x H x W; argmax over dim 1 is the trainId
map. The file's metadata also holds the class names and colours, the ignore value and pad_to. The check runs both on
the image (--image FILE, else the first image of the checkpoint's validation data), padded to a multiple of pad_to,
and prints the largest absolute difference of the logits; above --tolerance the export is refused (exit 1, no file).
"""

from __future__ import annotations

import sys

from mllib import UsageError, checks, cli


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_store_args(p)
    p.add_argument("--model_name", type=checks.NAME, default=None,
                   help="models/<model_name>/checkpoint.pt in the store (default: unet2d)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint's key in the store (instead of --model_name)")
    p.add_argument("--out", required=True, help="the ONNX file to write")
    p.add_argument("--opset", type=checks.Range(17, 23), default=18, help="ONNX opset (17 or newer)")
    p.add_argument("--image", default=None, help="a local JPEG/PNG to check the export on")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |onnxruntime - PyTorch| logit")
    cli.add_log_args(p)
    return p.parse_args(argv)


def _check_image(args, store, ck):
    """(uint8 C x H x W image, where it came from)."""
    from mllib import MllibError, images
    from mllib.augment import chw_uint8
    from mllib.training import evaluate as ev

    cfg, _ = ev.checkpoint_settings(ck)
    if args.image:
        try:
            with open(args.image, "rb") as f:
                data = f.read()
        except OSError as e:
            raise MllibError(f"--image {args.image}: {e.strerror or e}") from None
        return chw_uint8(images.decode(data, flags=cfg.imflags)), args.image
    data = ev.eval_data(cfg, store, cfg.class_dictionary)
    if data is None:
        raise UsageError("the checkpoint's configuration has no validation images: give --image FILE")
    image, _, _, name = next(iter(data)) if not hasattr(data, "__getitem__") else data[0]
    return image.numpy(), f"validation image {name}"


def run(args) -> int:
    import contextlib
    import io
    import json
    import logging
    import os
    import warnings
    from pathlib import Path

    import numpy as np
    import torch

    from mllib import MllibError, UsageError, layout
    from mllib.loaders.gpu import IMAGENET_MEAN, IMAGENET_STD, BatchPrep
    from mllib.training import evaluate as ev

    if args.model_name and args.checkpoint:
        raise UsageError("give --model_name or --checkpoint, not both")
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        raise MllibError(f"export needs onnx, onnxscript and onnxruntime ({e}): pip install onnx onnxscript "
                         f"onnxruntime") from None
    store = cli.open_store(args)
    key = args.checkpoint or layout.checkpoint(args.model_name or "unet2d")
    model, ck = ev.load_model(store, key, torch.device("cpu"))
    _, class_dict = ev.checkpoint_settings(ck)
    normalize = (ck.get("config") or {}).get("normalize", "imagenet")
    image, where = _check_image(args, store, ck)
    x = BatchPrep("cpu", normalize, channels_last=False).images(torch.from_numpy(np.ascontiguousarray(image))[None])
    m = int(getattr(model, "pad_to", 32))
    h, w = x.shape[-2:]
    x = torch.nn.functional.pad(x, (0, (-w) % m, 0, (-h) % m)).contiguous()

    class Named(torch.nn.Module):
        """The model with its graph input named "image" (the exporter names inputs after forward's arguments)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, image):
            return self.model(image)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        dims = {0: torch.export.Dim("batch", min=1, max=4096), 2: torch.export.Dim("height", min=m, max=16384),
                3: torch.export.Dim("width", min=m, max=16384)}
        for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch._dynamo", "torch.export"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        chatter = io.StringIO()  # the exporter's progress lines, shown only when it fails
        try:
            with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(Named(model), (torch.cat([x, x]),), str(tmp),  # a batch of 2: 1 would be fixed
                                  opset_version=args.opset, input_names=["image"], output_names=["logits"],
                                  dynamic_shapes={"image": dims}, dynamo=True, external_data=False, verbose=False)
        except Exception:
            sys.stderr.write(chatter.getvalue())
            raise
        proto = onnx.load(str(tmp))
        meta = {"classes": json.dumps(class_dict.names), "colors": json.dumps(class_dict.colors.tolist()),
                "ignore": str(class_dict.ignore), "normalize": normalize, "pad_to": str(m),
                "model_config": json.dumps(ck["model_config"]), "checkpoint": store.url_for(key),
                "step": str(ck.get("step"))}
        if normalize == "imagenet":
            meta.update(mean=json.dumps(IMAGENET_MEAN), std=json.dumps(IMAGENET_STD))
        for k, v in meta.items():
            onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, k: v})
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        diff = float(np.abs(got - ref).max())
        same = float((got.argmax(1) == ref.argmax(1)).mean())
        if not diff <= args.tolerance:
            raise MllibError(f"onnxruntime's logits differ from PyTorch's by up to {diff:.3g} on {where} "
                             f"(--tolerance {args.tolerance:g}): not written")
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"{store.url_for(key)} -> {out} (opset {args.opset}, {out.stat().st_size / 1e6:.1f} MB): on {where} "
          f"({h}x{w}, padded to {x.shape[-2]}x{x.shape[-1]}) max |onnxruntime - PyTorch| = {diff:.3g}, "
          f"argmax agrees on {100 * same:.3f}% of pixels")
    return 0


def main(argv=None) -> int:
    return cli.main(parse_args, run, argv, "mllib-export")


if __name__ == "__main__":
    sys.exit(main())
