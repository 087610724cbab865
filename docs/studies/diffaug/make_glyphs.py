"""The small real data set of the diffaug study: every letter and digit in every TrueType font installed on
this machine (Debian's fonts-dejavu and fonts-liberation: 38 faces, 2,356 images), drawn black on white and
centred, as 32x32 PNGs in one flat folder (the study's models are unconditional).

    python docs/studies/diffaug/make_glyphs.py OUT_DIR [--fonts /usr/share/fonts/truetype]
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = 32
CHARACTERS = string.ascii_letters + string.digits


def glyph(font: ImageFont.FreeTypeFont, character: str) -> Image.Image:
    """The character drawn at 4x and scaled down (anti-aliased), its ink box centred."""
    big = SIZE * 4
    image = Image.new("L", (big, big), 255)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), character, font=font)
    draw.text(((big - (right - left)) / 2 - left, (big - (bottom - top)) / 2 - top), character, font=font,
              fill=0)
    return image.resize((SIZE, SIZE), Image.LANCZOS).convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--fonts", type=Path, default=Path("/usr/share/fonts/truetype"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    faces = sorted(args.fonts.rglob("*.ttf"))
    for face in faces:
        font = ImageFont.truetype(str(face), size=SIZE * 3)
        for index, character in enumerate(CHARACTERS):
            glyph(font, character).save(args.out / f"{face.stem}-{index:02d}.png")
    print(f"{len(faces) * len(CHARACTERS)} images from {len(faces)} fonts in {args.out}")


if __name__ == "__main__":
    main()
