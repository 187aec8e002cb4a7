"""Stage 6, training: networks that prove the data.

    train.py    the PyTorch training loop behind networks/network2d.py (TrainConfig, fit, checkpoints, stops)
    data.py     its datasets and DataLoaders
    position.py the data position a checkpoint holds (EpochSampler, the trackers), so --resume is exact
    unet.py     a compact PyTorch UNet
    metrics.py  confusion matrix, IoU, mIoU
    tfseg.py    a Keras UNet trained and tested from the TFRecord set (segment/)
"""
