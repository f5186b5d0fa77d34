"""The "AI生成" label drawn on generated videos (the ``watermark`` parameter).

Shared by the engines that render frames themselves (``motion``, ``wan``): it works on the
YUV 4:2:0 planes that :mod:`stillmotion.media.encode` writes.
"""

from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont

from stillmotion.media.encode import yuv420p_planes

WATERMARK_TEXT = "AI生成"
WATERMARK_FALLBACK = "AI Generated"
#: CJK-capable fonts tried before Pillow's default font (which has no CJK glyphs).
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class Watermark:
    """A small semi-transparent label in the bottom-right corner, drawn once.

    Kept as a luma patch with its alpha (full and half size); pasting it also pulls the
    chroma under the label towards grey, as a white/black label does.
    """

    def __init__(self, width: int, height: int) -> None:
        size = max(10, round(min(width, height) * 0.04))
        font, text = watermark_font(size)
        left, top, right, bottom = (int(v) for v in font.getbbox(text))
        pad = max(2, size // 12)
        pw, ph = right - left + 2 * pad, bottom - top + 2 * pad
        patch = Image.new("RGBA", (pw + pw % 2, ph + ph % 2), (0, 0, 0, 0))
        draw = ImageDraw.Draw(patch)
        draw.text((pad - left + 1, pad - top + 1), text, font=font, fill=(0, 0, 0, 90))
        draw.text((pad - left, pad - top), text, font=font, fill=(255, 255, 255, 170))
        self.luma = yuv420p_planes(patch)[0]
        self.alpha = patch.getchannel("A")
        self.alpha_half = self.alpha.reduce(2)
        margin = max(4, round(min(width, height) * 0.025))
        x, y = width - patch.width - margin, height - patch.height - margin
        self.position = (x - x % 2, y - y % 2)

    def apply(self, y: Image.Image, u: Image.Image, v: Image.Image) -> None:
        x0, y0 = self.position
        y.paste(self.luma, (x0, y0), self.alpha)
        hw, hh = self.alpha_half.size
        for plane in (u, v):
            plane.paste(128, (x0 // 2, y0 // 2, x0 // 2 + hw, y0 // 2 + hh), self.alpha_half)


def watermark_font(size: int) -> tuple[Font, str]:
    """A CJK font with "AI生成" when one is installed, else Pillow's default font.

    When the default font lacks the CJK glyphs (it does today), the label is "AI Generated".
    """
    for candidate in CJK_FONTS:
        if os.path.exists(candidate):
            try:
                return ImageFont.truetype(candidate, size), WATERMARK_TEXT
            except OSError:
                continue
    font = ImageFont.load_default(size=size)
    if has_glyphs(font, WATERMARK_TEXT):
        return font, WATERMARK_TEXT
    return font, WATERMARK_FALLBACK


def has_glyphs(font: Font, text: str) -> bool:
    """Whether ``font`` draws every character of ``text`` (not its "missing" box)."""

    def ink(ch: str) -> bytes:
        img = Image.new("L", (64, 64))
        ImageDraw.Draw(img).text((8, 8), ch, font=font, fill=255)
        return img.tobytes()

    missing = ink("\uffff")
    return all(ch.isascii() or ink(ch) != missing for ch in text)
