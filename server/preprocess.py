"""Image bytes → model input: safe decoding, then resize, channels and normalisation."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own bomb check is replaced by our configurable pixel cap (checked before decoding).
Image.MAX_IMAGE_PIXELS = None


class ImageError(Exception):
    """An image the server will not run; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Preprocessor:
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_pixels: int

    def __call__(self, data: bytes) -> torch.Tensor:  # -> (C, H, W) float32
        im = self.decode(data)
        im = im.convert("L" if self.channels == 1 else "RGB").resize(
            (self.width, self.height), Image.Resampling.BILINEAR
        )
        x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()) / 255
        x = x.view(self.height, self.width, self.channels).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (x - mean) / std

    def decode(self, data: bytes) -> Image.Image:
        """Any common format and mode to an 8-bit image, EXIF orientation applied."""
        if not data:
            raise ImageError("the image is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im: Image.Image = Image.open(io.BytesIO(data))
                w, h = im.size
                if w * h > self.max_pixels:
                    raise ImageError(
                        f"image is {w}×{h} = {w * h} pixels; the limit is {self.max_pixels}", 413
                    )
                im.seek(0)  # first frame of an animation
                im.load()
                im = ImageOps.exif_transpose(im) or im
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError("cannot decode the image: not a JPEG, PNG, WebP, BMP or GIF") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"cannot decode the image: {e}") from None
        return to_8bit(im)


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float modes scaled to 8 bits; transparency flattened onto black."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        back = Image.new("RGBA", rgba.size, (0, 0, 0, 255))  # digits are light on black
        return Image.alpha_composite(back, rgba).convert("RGB")
    if im.mode not in ("L", "RGB"):
        return im.convert("RGB")  # CMYK, YCbCr, 1, LAB, HSV
    return im
