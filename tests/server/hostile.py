"""A corpus of hostile and unusual images, generated (nothing is downloaded or checked in)."""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
from PIL import Image

# (name, body, content type, expected: "ok" for a prediction or the 4xx status)
Case = tuple[str, bytes, str, str | int]


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 100_000) -> bytes:
    """A valid PNG header declaring side×side pixels, with a few bytes of data: a bomb."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def ico_wrapping(png: bytes) -> bytes:
    """An ICO whose one entry is `png`: Pillow's ICO opener decodes the PNG while opening."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def zeros_png(side: int = 40_000) -> bytes:
    """A complete, valid side×side greyscale PNG of zeros, ~1.5 MB at side 40 000 (1.6 Gpx),
    built in milliseconds: one deflate block of rows, flushed so it stands alone, repeated."""
    row = b"\x00" * (1 + side)  # filter byte + pixels
    rows_per_block = 400
    comp = zlib.compressobj(9)
    first = comp.compress(row * rows_per_block) + comp.flush(zlib.Z_FULL_FLUSH)  # + zlib header
    block = comp.compress(row * rows_per_block) + comp.flush(zlib.Z_FULL_FLUSH)
    n, rest = divmod(side, rows_per_block)
    tail = comp.compress(row * rest) + comp.flush()
    adler = (((1 + side) * side % 65521) << 16) | 1  # adler32 of zeros: a stays 1, b counts
    data = first + block * (n - 1) + tail[:-4] + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def corpus() -> list[Case]:
    rng = np.random.default_rng(0)
    digit = (rng.random((28, 28)) * 255).astype(np.uint8)
    grey = Image.fromarray(digit)
    png = _save(grey, "PNG")
    jpeg = _save(grey.convert("RGB"), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    frames = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (0, 128, 255)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    palette = grey.convert("P")
    palette.info["transparency"] = 0
    return [
        ("zero-bytes", b"", "image/png", 400),
        ("random-bytes", random.Random(0).randbytes(4096), "image/png", 400),
        ("truncated-png", png[: len(png) // 2], "image/png", 400),
        ("truncated-jpeg", jpeg[: len(jpeg) // 2], "image/jpeg", 400),
        ("bomb-png", bomb_png(), "image/png", 413),
        ("png-labelled-jpeg", png, "image/jpeg", "ok"),
        ("png-as-text", png, "text/plain", 415),
        ("one-pixel", _save(Image.new("L", (1, 1), 200), "PNG"), "image/png", "ok"),
        ("large-3000px", _save(Image.new("L", (3000, 3000), 30), "PNG"), "image/png", "ok"),
        (
            "png-16-bit",
            _save(Image.fromarray(digit.astype(np.uint16) * 257), "PNG"),
            "image/png",
            "ok",
        ),
        ("cmyk-jpeg", _save(grey.convert("CMYK"), "JPEG"), "image/jpeg", "ok"),
        ("palette-transparency", _save(palette, "PNG"), "image/png", "ok"),
        ("rgba-png", _save(grey.convert("RGBA"), "PNG"), "image/png", "ok"),
        ("animated-gif", gif.getvalue(), "image/gif", "ok"),
        ("exif-rotated-jpeg", _save(grey.convert("RGB"), "JPEG", exif=exif), "image/jpeg", "ok"),
        ("webp", _save(grey, "WEBP"), "image/webp", "ok"),
        ("bmp", _save(grey, "BMP"), "image/bmp", "ok"),
        ("polyglot-png-zip", png + b"PK\x03\x04" + b"\x00" * 64, "image/png", "ok"),
        ("html-as-image", b"<html><script>alert(1)</script></html>", "image/png", 400),
        ("tiff", _save(grey, "TIFF"), "image/tiff", 415),
        ("ico-wrapping-png-bomb", ico_wrapping(bomb_png(40_000)), "image/x-icon", 415),
    ]
