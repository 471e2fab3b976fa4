"""Image bytes → model input: an allowlisted header read first, then decode, resize, normalise."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyspng
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

# The formats the API documents. Pillow opens 40+ more; some (ICO, ICNS, …) decode the whole
# embedded image while *opening*, before any size check could run, so the format is decided
# from the magic bytes and Image.open is told to try that one plugin only.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
ALLOWED_TEXT = "JPEG, PNG, WebP, BMP or GIF"
# Pillow's bomb check is a second line of defence behind our header check: Preprocessor raises
# MAX_IMAGE_PIXELS to its cap, and the warning Pillow gives between 1× and 2× of it is an error
# (a process-wide filter: catch_warnings() is not thread-safe and decoding runs in a pool).
warnings.simplefilter("error", Image.DecompressionBombWarning)
# PNG text and ICC chunks are inflated while the header is read: a zTXt chunk of 1 KB inflates
# to 1 MB, and Pillow allows 64 MB in all. Bounded so reading a header stays cheap (we never use
# the text); an ICC profile over 256 KB or more text than 1 MB is a 400.
PngImagePlugin.MAX_TEXT_CHUNK = 256 * 1024
PngImagePlugin.MAX_TEXT_MEMORY = 1024 * 1024

# Bytes per pixel of Pillow's storage for a mode (RGB is stored in 4 bytes, like RGBA).
_STORAGE = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "LA": 4, "PA": 4}


class ImageError(Exception):
    """An image the server will not run; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> str | None:
    """The allowlisted format these bytes start with, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def recognise(data: bytes) -> str | None:
    """The name of the other format Pillow would take these bytes for, from its signature
    check alone: never Image.open (ICO's opener decodes the embedded image at once)."""
    Image.init()
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return name
        except Exception:
            continue
    return None


@dataclass
class Inspected:
    """What the header says, and what decoding it will cost, before any pixel is decoded."""

    format: str
    width: int  # after JPEG draft scaling, i.e. what will be decoded
    height: int
    mode: str
    frames: int  # frames kept: always 1 (the first frame of an animation)
    cost_bytes: int  # peak bytes the decode and conversions hold at once
    image: Image.Image | None = field(repr=False)  # None once handed to the decoder
    data: bytes = field(default=b"", repr=False)  # the encoded bytes (PNG's fast path)


# Anything naming EXIF (an eXIf chunk, a "Raw profile type exif" text) may carry an orientation
# Pillow would apply: such PNGs take Pillow's path.
_EXIF = re.compile(rb"(?i)exif")


@dataclass(frozen=True)
class Preprocessor:
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_pixels: int

    # Memory a decoder holds beyond the image itself (measured): WebP's decoder fills its own
    # RGBA canvas and hands Pillow a bytes copy of it, 12 B/px in all; libjpeg's buffers, ~6 MB.
    _DECODER_PER_PX: ClassVar[dict[str, int]] = {"WEBP": 12}
    _DECODER_FIXED: ClassVar[dict[str, int]] = {"JPEG": 8 << 20}

    def __post_init__(self) -> None:
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, self.max_pixels)

    def __call__(self, data: bytes) -> torch.Tensor:  # -> (C, H, W) float32
        return self.decode_inspected(self.inspect(data))

    def inspect(self, data: bytes) -> Inspected:
        """Header only (cheap enough for the event loop): format, size, mode and cost, or
        ImageError 400 (not an image), 413 (over the pixel cap), 415 (not an allowed format)."""
        if not data:
            raise ImageError("the image is empty (0 bytes)")
        fmt = sniff(data)
        if fmt is None:
            other = recognise(data)
            if other is None:
                raise ImageError(f"cannot decode the image: not a {ALLOWED_TEXT}")
            raise ImageError(f"unsupported image format {other}: send {ALLOWED_TEXT}", 415)
        try:
            im = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = im.size
            if w * h > self.max_pixels:
                raise ImageError(
                    f"image is {w}×{h} = {w * h} pixels; the limit is {self.max_pixels}", 413
                )
            if fmt == "JPEG":  # decode at up to 1/8 scale when the target is that much smaller
                im.draft("L" if self.channels == 1 else "RGB", (self.width, self.height))
                w, h = im.size
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"image too large: {e}", 413) from None
        except UnidentifiedImageError:
            raise ImageError(f"cannot decode the image: not a valid {fmt}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"cannot decode the image: {e}") from None
        transparent = "transparency" in im.info
        cost = self.cost(fmt, im.mode, w, h, transparent)
        return Inspected(fmt, w, h, im.mode, 1, cost, im, data)

    def cost(self, fmt: str, mode: str, w: int, h: int, transparent: bool = False) -> int:
        """Peak bytes decoding one w×h image holds at once: the decoded image plus the full-size
        copies `to_8bit` makes, plus the decoder's own buffers. Checked against ru_maxrss for
        every format and mode (tests/server/test_attacks.py, test_decode_cost_*)."""
        want = 1 if self.channels == 1 else 4  # stored bytes of the L or RGB result
        stored = _STORAGE.get(mode, 4)
        if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            per_px = 2 * stored + 6 + (want if want > 1 else 0)  # bytes, float32, 8-bit arrays
        elif mode in ("RGBA", "LA", "PA") or (mode == "P" and transparent):
            to_rgba = 0 if mode == "RGBA" else 4
            per_px = stored + to_rgba + 4 + (1 if want == 1 else 0)  # RGBA, flattened RGB
        else:
            per_px = stored + (
                0 if (mode == "L" and want == 1) or (mode == "RGB" and want == 4) else want
            )
        per_px += self._DECODER_PER_PX.get(fmt, 0)
        return w * h * per_px + self._DECODER_FIXED.get(fmt, 1 << 20)

    def decode_inspected(self, ins: Inspected) -> torch.Tensor:
        """The pixel work (run it in the decode pool): first frame → 8 bit → resize → tensor."""
        pixels = self._png_pixels(ins)
        if pixels is None:
            pixels = np.asarray(self.resized(ins))
        # In numpy, float32 throughout: the same IEEE operations as torch's (x / 255 - mean) /
        # std, bit for bit, without a dispatch per operation (a third of this call's CPU).
        px = pixels.astype(np.float32).reshape(self.height, self.width, self.channels)
        x = (px / np.float32(255) - np.asarray(self.mean, np.float32)) / np.asarray(
            self.std, np.float32
        )
        return torch.from_numpy(x.transpose(2, 0, 1))

    def _png_pixels(self, ins: Inspected) -> np.ndarray | None:
        """The pixels of a PNG that needs nothing but decoding (8-bit grey or RGB as the model
        wants, at its size, not interlaced, no transparency, nothing naming EXIF), decoded by
        libspng: the same bytes Pillow would give (tests/server/test_preprocess_png.py).
        None for any other image, or one libspng refuses: Pillow decodes it, or says why not."""
        im, want = ins.image, "L" if self.channels == 1 else "RGB"
        tile: list[Any] = getattr(im, "tile", [])  # (codec, extents, offset, raw mode)
        if (
            im is None
            or ins.format != "PNG"
            or (ins.width, ins.height) != (self.width, self.height)
            or ins.mode != want
            or len(tile) != 1
            or tile[0].args != want  # the stored depth: 8 bits a sample
            or im.info.get("interlace")
            or "transparency" in im.info
            or _EXIF.search(ins.data)
        ):
            return None
        try:
            pixels = pyspng.load(ins.data, want)
        except RuntimeError:
            return None
        ins.image = None
        im.close()
        return pixels

    def resized(self, ins: Inspected) -> Image.Image:
        im = ins.image
        if im is None:
            raise ValueError("this image was decoded already")
        ins.image = None  # ours is now the one reference: freed when we return
        try:
            im.seek(0)  # first frame of an animation
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # not in place: a copy even when upright
            im = to_8bit(im, "L" if self.channels == 1 else "RGB")
            return im.resize((self.width, self.height), Image.Resampling.BILINEAR)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"image too large: {e}", 413) from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"cannot decode the image: {e}") from None
        finally:
            im.close()

    def decode(self, data: bytes) -> Image.Image:
        """Any allowed format and mode to an 8-bit L or RGB image, EXIF orientation applied."""
        im = self.inspect(data).image
        assert im is not None
        im.seek(0)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        return to_8bit(im, "L" if self.channels == 1 else "RGB")


def to_8bit(im: Image.Image, want: str) -> Image.Image:
    """`want` ("L" or "RGB") from any mode: 16-bit and float scaled to 8 bits, transparency
    flattened onto black. Written for peak memory: no same-mode copies, intermediates dropped."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr *= 255 / top
        np.clip(arr, 0, 255, out=arr)
        grey = Image.fromarray(arr.astype(np.uint8), "L")
        del arr
        return grey if want == "L" else grey.convert(want)
    if (im.mode == "P" and "transparency" in im.info) or im.mode in ("LA", "PA"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        flat = Image.new("RGB", im.size, (0, 0, 0))  # digits are light on black
        flat.paste(im, (0, 0), im)  # RGB weighted by alpha: alpha-compositing onto black
        return flat if want == "RGB" else flat.convert(want)
    return im if im.mode == want else im.convert(want)  # P, 1, CMYK, YCbCr, LAB, HSV too
