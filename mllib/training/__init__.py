"""Stage 6, training: networks that prove the data.

    train.py    the PyTorch training loop behind networks/network2d.py (TrainConfig, fit)
    unet.py     a compact PyTorch UNet
    metrics.py  confusion matrix, IoU, mIoU
    tfseg.py    a Keras UNet trained and tested from the TFRecord set (segment/)
"""
