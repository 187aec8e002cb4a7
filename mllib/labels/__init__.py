"""Stage 3, labels: from annotations to label images of trainIds.

    classes.py    class dictionaries (mllib/datasets/*.json): id -> trainId lookup, names, colors (mllib.classes)
    cocoindex.py  a compact, cached index of a COCO annotation file, malformed entries flagged
    render.py     the renderer: trainIds from polygons / RLE, exactly pycocotools' masks
    display.py    colored labels, overlays, contact sheets
"""

from mllib.labels.render import LabelError, Renderer, pixel_counts, presence, rle_counts

__all__ = ["LabelError", "Renderer", "pixel_counts", "presence", "rle_counts"]
