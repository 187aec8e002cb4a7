"""The commands (console entry points installed with the package; the seed's scripts in datasets/, networks/ and
segment/ call the same main):

    mllib-getcoco         getcoco.py        COCO 2017 into the store
    mllib-getcityscapes   getcityscapes.py  Cityscapes (login) into the store
    mllib-getdataset      getdataset.py     ADE20K, VOC + SBD, COCO-Stuff, Mapillary, BDD100K into the store
    mllib-checkdataset    checkdataset.py   a dataset's labels against its class dictionary
    mllib-cocorecord      cocorecord.py     datasets in the store -> a sharded TFRecord training set
    mllib-checkrecords    checkrecords.py   a training set against its description (sha256, CRCs)
    mllib-viewdataset     viewdataset.py    pictures of images and labels
    mllib-train           train.py          networks/network2d.py: train from the store (mllib[torch])
    mllib-evaluate        evaluate.py       networks/evaluate.py (mllib[torch])
    mllib-export          export.py         networks/export.py: ONNX (mllib[torch,export])
    mllib-segment-train   segment_train.py  segment/train.py: Keras (mllib[tf])
    mllib-segment-test    segment_test.py   segment/test.py: Keras (mllib[tf])
    mllib-store           ../storecli.py    the store: ls, cp, rm, ...
"""
