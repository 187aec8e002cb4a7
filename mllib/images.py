"""Image bytes: header inspection without decoding, decoding without EXIF rotation, uniform RGB.

COCO annotations are in stored pixel order, so nothing here applies EXIF orientation. Every decode first reads the
header's dimensions and refuses images over MAX_PIXELS (default 200 megapixels; `MLLIB_MAX_IMAGE_PIXELS` changes
it), so a decompression bomb is an ImageError (a bad sample), never gigabytes allocated or a cv2.error.
"""

from __future__ import annotations

import os
import struct
import zlib

import cv2
import numpy as np

from mllib import MllibError

cv2.setNumThreads(1)  # decoding runs in many processes / DataLoader workers; one thread each

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_DECODE_FLAGS = cv2.IMREAD_IGNORE_ORIENTATION


MAX_PIXELS = int(os.environ.get("MLLIB_MAX_IMAGE_PIXELS", 200_000_000))


class ImageError(MllibError):
    pass


def check_size(h: int, w: int) -> None:
    if h * w > MAX_PIXELS:
        raise ImageError(f"image of {w}x{h} pixels is over the limit of {MAX_PIXELS:,d} pixels "
                         "(a decompression bomb?); MLLIB_MAX_IMAGE_PIXELS raises the limit")


def info(data: bytes) -> tuple[str, int, int, int]:
    """(format, height, width, channels) from the header alone; ImageError if it is not a complete image.

    A JPEG must have a frame header and end with its EOI marker (a truncated download does not).
    """
    if data[:3] == b"\xff\xd8\xff":
        return ("jpeg", *_jpeg_header(data))
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise ImageError("truncated PNG header")
        w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
        channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(ctype, 0)
        if b"IEND" not in data[-16:]:
            raise ImageError("truncated PNG (no IEND chunk)")
        return ("png" if depth == 8 and ctype in (0, 2) else "png-other", h, w, channels)
    raise ImageError("not a JPEG or PNG file")


def dimensions(head: bytes) -> tuple[int, int] | None:
    """(height, width) from an image's first bytes (Store.get_head), or None when the frame header is not within
    them or the bytes are no JPEG or PNG. Unlike info(), it does not ask for the whole file."""
    try:
        if head[:3] == b"\xff\xd8\xff":
            return _jpeg_header(head, complete=False)[:2]
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24 and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return h, w
    except (ImageError, struct.error):
        return None
    return None


def _jpeg_header(data: bytes, complete: bool = True) -> tuple[int, int, int]:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ImageError(f"corrupt JPEG: bad marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            if i + 10 > n:
                break
            _, h, w, comps = struct.unpack(">BHHB", data[i + 4 : i + 10])
            tail = data[-64:].rstrip(b"\x00")
            if complete and not tail.endswith(b"\xff\xd9") and b"\xff\xd9" not in data[-1024:]:
                raise ImageError("truncated JPEG (no end-of-image marker)")
            if h == 0 or w == 0:
                raise ImageError("JPEG without a height or width in its frame header")
            return h, w, comps
        if marker == 0xDA:  # start of scan before a frame header
            break
        i += 2 + length
    raise ImageError("corrupt JPEG: no frame header")


def decode(data: bytes, flags: int = cv2.IMREAD_COLOR, rgba: bool = False) -> np.ndarray:
    """Decode to RGB (HxWx3) or grayscale (HxW) uint8, in stored pixel order (no EXIF rotation).

    rgba=True gives color as HxWx4 (RGB + a padding channel) in the same single conversion pass: OpenCV warps
    4-channel images faster than 3-channel ones, with bit-identical RGB values. The header's size is
    checked against MAX_PIXELS before anything is decoded.
    """
    _, h, w, _ = info(data)
    check_size(h, w)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags | _DECODE_FLAGS)
    except cv2.error as e:
        raise ImageError(f"cannot decode image ({str(e).strip().splitlines()[-1][:200]})") from None
    if img is None:
        raise ImageError("cannot decode image")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGBA if rgba else cv2.COLOR_BGR2RGB)
    return img


def verify(data: bytes) -> None:
    """ImageError unless the whole image decodes cleanly: a JPEG through libjpeg-turbo with its warnings as errors
    (corrupt entropy-coded data decodes to grey blocks otherwise; every coefficient of the scan is decoded, where
    such errors show, and the pixels only at 1/8 scale), a PNG by every chunk's CRC, then a decode."""
    fmt, h, w, channels = info(data)
    check_size(h, w)
    _verify_body(data, fmt, channels)


def _verify_body(data: bytes, fmt: str, channels: int) -> None:
    """verify() once the header is known to be sound and within MAX_PIXELS."""
    if fmt == "jpeg":
        import simplejpeg

        try:  # every coefficient is entropy-decoded, the pixels at 1/8 scale: the check at under half the cost
            simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB", strict=True, min_factor=8,
                                   min_height=1, min_width=1)
        except ValueError as e:
            raise ImageError(f"corrupt JPEG data ({str(e)[:200]})") from None
        return
    check_png_crcs(data)
    decode(data, cv2.IMREAD_UNCHANGED)


def check_png_crcs(data: bytes, critical_only: bool = False) -> None:
    """ImageError unless a PNG's chunks up to IEND are whole and each has the CRC-32 its trailer says; with
    critical_only, only the critical chunks' (IHDR, PLTE, IDAT, IEND: an upper-case first letter) are checked, as
    libpng checks them (a decoder that ignores CRCs, libspng, would read a flipped bit as other values)."""
    view, i, n = memoryview(data), 8, len(data)
    while i + 12 <= n:
        (length,) = struct.unpack(">I", data[i : i + 4])
        end = i + 12 + length
        if end > n:
            raise ImageError("truncated PNG chunk")
        kind = data[i + 4 : i + 8]
        if not (critical_only and kind[0] & 0x20) and \
                zlib.crc32(view[i + 4 : i + 8 + length]) != struct.unpack(">I", data[end - 4 : end])[0]:
            raise ImageError(f"corrupt PNG: CRC mismatch in a {kind.decode('latin-1')!r} chunk")
        if kind == b"IEND":
            return
        i = end
    raise ImageError("truncated PNG (its chunks end before IEND)")


def uniform_rgb(data: bytes, jpeg_quality: int = 95) -> tuple[bytes, str, int, int]:
    """(bytes, format, height, width) of a 3-channel RGB image.

    A 3-channel JPEG or 8-bit RGB/gray PNG is returned as it is (no decode, no quality loss) where it is
    already RGB; grayscale, CMYK or 4-channel sources are converted (JPEG stays JPEG at jpeg_quality, PNG
    stays lossless PNG).
    """
    fmt, h, w, channels = info(data)
    check_size(h, w)
    if fmt in ("jpeg", "png") and channels == 3:  # passed through byte for byte, once it is known to decode
        _verify_body(data, fmt, channels)
        return data, fmt, h, w
    rgb = decode(data, cv2.IMREAD_COLOR)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        fmt = "png"
    if not ok:
        raise ImageError("cannot re-encode image")
    return buf.tobytes(), fmt, h, w


def _deflate():
    """The zlib-format compressor for label PNGs: ISA-L's level 1 (python-isal; a standard zlib stream, 6-8x
    faster than zlib's level 1 on label images and a fifth smaller), else zlib's level 1 where isal is not
    installed."""
    if not _DEFLATE:
        try:
            from isal import isal_zlib

            _DEFLATE.append(lambda raw: isal_zlib.compress(raw, 1))
        except ImportError:
            _DEFLATE.append(lambda raw: zlib.compress(raw, 1))
    return _DEFLATE[0]


_DEFLATE: list = []


def encode_label_png(label: np.ndarray) -> bytes:
    """8-bit grayscale PNG of a label image.

    Written directly (filter "none" + one deflate pass, _deflate()): label images are long runs of a few values,
    and a general-purpose encoder's adaptive row filters take several times longer for about the same size.
    """
    a = np.asarray(label)
    if a.ndim != 2 or a.dtype != np.uint8:
        raise ImageError(f"a label must be a 2-D uint8 array, got {a.dtype} {a.shape}")
    h, w = a.shape
    raw = np.zeros((h, w + 1), np.uint8)
    raw[:, 1:] = a

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", _deflate()(raw.tobytes())) + chunk(b"IEND", b""))
