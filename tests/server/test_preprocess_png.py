"""The PNG fast path (libspng) gives the very tensor Pillow's path gives, and only takes the
PNGs it can decode alone: anything that needs a conversion, a resize or EXIF goes to Pillow."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pyspng
import pytest
from PIL import Image, PngImagePlugin

from server.preprocess import ImageError, Preprocessor

GREY = Preprocessor(1, 28, 28, (0.1307,), (0.3081,), 40_000_000)
COLOUR = Preprocessor(3, 28, 28, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 40_000_000)
RNG = np.random.default_rng(7)


def png(arr: np.ndarray, mode: str | None = None, **save) -> bytes:
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, "PNG", **save)
    return buf.getvalue()


def texts() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "a digit")
    info.add_text("Software", "x" * 300, zip=True)
    info.add_itxt("Title", "ünïcode", lang="en")
    info.add(b"gAMA", (45455).to_bytes(4, "big"))
    return info


def pillow_only(p: Preprocessor, data: bytes, monkeypatch: pytest.MonkeyPatch):
    with monkeypatch.context() as m:
        m.setattr(Preprocessor, "_png_pixels", lambda self, ins: None)
        return p(data)


def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = pyspng.load

    def spy(data, fmt=None):
        calls.append(len(data))
        return real(data, fmt)

    monkeypatch.setattr(pyspng, "load", spy)
    return calls


GREY_28 = RNG.integers(0, 256, (28, 28), dtype=np.uint8)
RGB_28 = RNG.integers(0, 256, (28, 28, 3), dtype=np.uint8)
FAST = {
    "grey": (GREY, png(GREY_28)),
    "grey, best compression": (GREY, png(GREY_28, compress_level=9)),
    "grey, no compression": (GREY, png(GREY_28, compress_level=0)),
    "grey, optimised": (GREY, png(GREY_28, optimize=True)),
    "grey, text, iTXt and gAMA chunks": (GREY, png(GREY_28, pnginfo=texts())),
    "grey, flat": (GREY, png(np.full((28, 28), 200, np.uint8))),
    "rgb": (COLOUR, png(RGB_28)),
    "rgb, text chunks": (COLOUR, png(RGB_28, pnginfo=texts())),
}
exif = Image.Exif()
exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
SLOW = {
    "grey for a colour model": (COLOUR, png(GREY_28)),
    "rgb for a grey model": (GREY, png(RGB_28)),
    "another size": (GREY, png(RNG.integers(0, 256, (30, 28), dtype=np.uint8))),
    "16-bit grey": (GREY, png(GREY_28.astype(np.uint16) * 257, "I;16")),
    "1-bit": (GREY, png(GREY_28, "1")),
    "palette": (GREY, png(RGB_28, "P")),
    "grey with alpha": (GREY, png(GREY_28, "LA")),
    "rgba": (COLOUR, png(RGB_28, "RGBA")),
    "grey with a tRNS colour": (GREY, png(GREY_28, transparency=5)),
    "eXIf orientation": (GREY, png(GREY_28, exif=exif.tobytes())),
}


@pytest.mark.parametrize("case", sorted(FAST))
def test_the_fast_path_gives_pillows_tensor(case, monkeypatch):
    p, data = FAST[case]
    expected = pillow_only(p, data, monkeypatch)
    calls = counted(monkeypatch)
    got = p(data)
    assert calls == [len(data)]  # libspng decoded it
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got.numpy(), expected.numpy())


@pytest.mark.parametrize("case", sorted(SLOW))
def test_pngs_needing_more_than_a_decode_go_to_pillow(case, monkeypatch):
    p, data = SLOW[case]
    calls = counted(monkeypatch)
    got = p(data)
    assert calls == []
    assert np.array_equal(got.numpy(), pillow_only(p, data, monkeypatch).numpy())


def test_the_exif_orientation_is_still_applied():
    data = SLOW["eXIf orientation"][1]
    rotated = GREY(data).numpy()[0]
    upright = GREY(png(GREY_28)).numpy()[0]
    assert np.array_equal(rotated, np.rot90(upright, -1))


def test_a_corrupt_image_stream_gets_pillows_error(monkeypatch):
    data = bytearray(png(GREY_28, compress_level=0))
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4 : idat], "big")
    body = bytes(data[idat + 4 : idat + 4 + length // 2])  # the stream cut in half
    chunk = b"IDAT" + body
    broken = (
        bytes(data[: idat - 4])
        + len(body).to_bytes(4, "big")
        + chunk
        + zlib.crc32(chunk).to_bytes(4, "big")
        + b"\0\0\0\0IEND\xae\x42\x60\x82"
    )
    with pytest.raises(RuntimeError):
        pyspng.load(broken, "L")  # libspng refuses it: the fast path hands it to Pillow
    calls = counted(monkeypatch)
    with pytest.raises(ImageError) as fast:
        GREY(broken)
    assert calls == [len(broken)]
    with pytest.raises(ImageError) as slow:
        pillow_only(GREY, broken, monkeypatch)
    assert fast.value.status == slow.value.status == 400
    assert str(fast.value) == str(slow.value)
