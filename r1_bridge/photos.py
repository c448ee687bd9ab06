"""Photos the R1 sends with a question, made small enough to travel to the ai agent.

A photo rides in the prompt's ``metadata.image`` and then in the ``ai ask`` task's
``args.image``, as a JPEG data URL: one MQTT message each, so it must fit the bus's payload
limit (64 KiB by default) with room for the rest of the message. A phone-camera photo is
scaled down (longest side 1024 px at most, less while it does not fit) and re-encoded; that is
plenty for a vision model to say what is in it, and far under the 4 MB Groq takes. Nothing is
written to disk here; the coordinator drops the photo from its journal once the prompt is
answered.
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_SIDE = 1024
SMALLEST_SIDE = 160
QUALITIES = (85, 70, 55, 40)
MAX_PIXELS = 33_000_000  # Groq's limit for one image; larger ones are refused before decoding
DATA_URL = "data:image/jpeg;base64,"


class PhotoError(ValueError):
    """An attachment that is not a usable photo; the message says why, for the R1 to speak."""


def attachment_bytes(attachment: object) -> bytes | None:
    """The image bytes of one ``chat.send`` attachment, None when it is not an image.

    The R1 sends ``{type: "image", mimeType, fileName, content}`` with Base64 content (some
    clients send a ``data:`` URL instead).
    """
    if not isinstance(attachment, dict):
        raise PhotoError("an attachment must be a JSON object")
    mime = attachment.get("mimeType") or ""
    if attachment.get("type") != "image" and not (isinstance(mime, str) and mime.startswith("image/")):
        return None
    content = attachment.get("content")
    if not isinstance(content, str) or not content:
        raise PhotoError("an image attachment needs its content as Base64 text")
    if content.startswith("data:"):
        content = content.partition(",")[2]
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise PhotoError("the image attachment is not valid Base64") from None


def fit(photo: bytes, budget: int) -> str:
    """``photo`` as a JPEG data URL of at most ``budget`` characters."""
    try:
        with Image.open(io.BytesIO(photo)) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise PhotoError("that photo has too many pixels")
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise PhotoError("I could not read that photo") from None
    side = MAX_SIDE
    while side >= SMALLEST_SIDE:
        scaled = image.copy()
        scaled.thumbnail((side, side))
        for quality in QUALITIES:
            encoded = io.BytesIO()
            scaled.save(encoded, "JPEG", quality=quality, optimize=True)
            url = DATA_URL + base64.b64encode(encoded.getvalue()).decode("ascii")
            if len(url) <= budget:
                return url
        side = side * 3 // 4
    raise PhotoError("that photo is too detailed to send to the ai agent")
