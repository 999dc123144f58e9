"""The "annotate these first" page: the most uncertain photos, their uncertain areas highlighted.

One self-contained HTML file: every picture is a data: URI (JPEG), nothing else is referenced, so the page
can be mailed or opened from any folder. Each picture is the photo, greyed a little, with the model's
uncertainty as a red glaze (stronger where the model was less sure) and the drafted polygons on top:
regions in cyan, holes (``_background_`` polygons) in yellow.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from stages.data.labels import BACKGROUND_NAME
from stages.prediction.uncertainty import resize_map

THUMBNAIL_SIDE = 480  # longest side of each picture, pixels
HEAT = np.array([255, 32, 32], np.float32)
REGION_OUTLINE = (0, 255, 255)
HOLE_OUTLINE = (255, 230, 0)

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1500px; margin: 2em auto; padding: 0 1em; color: #222; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 1.2em; }
figure { margin: 0; } img { width: 100%; height: auto; display: block; border-radius: 3px; }
figcaption { font-size: 0.9em; margin-top: 0.3em; } code { background: #f3f3f3; padding: 0 0.2em; }
.legend span { display: inline-block; width: 1em; height: 0.8em; margin: 0 0.3em 0 1em; vertical-align: middle; }
"""


@dataclass(frozen=True)
class Card:
    picture: bytes  # JPEG
    title: str  # e.g. "1. birds/dove_007.jpg"
    lines: tuple[str, ...]  # caption lines under it


def highlight(rgb: np.ndarray, uncertainty: np.ndarray, shapes: list[dict]) -> bytes:
    """JPEG of the photo (at most THUMBNAIL_SIDE px) with the uncertainty glazed on and the shapes outlined."""
    height, width = rgb.shape[:2]
    scale = min(1.0, THUMBNAIL_SIDE / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    photo = np.asarray(Image.fromarray(rgb).resize(size[::-1], Image.BILINEAR), np.float32)
    grey = photo.mean(axis=2, keepdims=True)
    photo = 0.6 * photo + 0.4 * grey
    alpha = np.clip(resize_map(uncertainty, size), 0.0, 1.0)[..., None] * 0.75
    picture = Image.fromarray(np.clip(photo * (1 - alpha) + HEAT * alpha, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for shape in shapes:
        points = [(x * scale, y * scale) for x, y in shape.get("points") or []]
        if len(points) >= 2:
            colour = HOLE_OUTLINE if shape.get("label") == BACKGROUND_NAME else REGION_OUTLINE
            draw.line(points + points[:1], fill=colour, width=2)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def page_html(title: str, paragraphs: list[str], cards: list[Card]) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    body += [f"<p>{esc(text)}</p>" for text in paragraphs]
    body.append(
        '<p class="legend">Uncertain areas:<span style="background:#ff2020"></span>red (stronger = less '
        'sure); drafted regions:<span style="background:#00ffff"></span>cyan; holes:'
        '<span style="background:#ffe600"></span>yellow</p>'
    )
    body.append('<div class="grid">')
    for card in cards:
        data = base64.b64encode(card.picture).decode("ascii")
        caption = "<br>".join([f"<b>{esc(card.title)}</b>", *(esc(line) for line in card.lines)])
        body.append(
            f'<figure><img alt="{esc(card.title)}" src="data:image/jpeg;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    body.append("</div>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
