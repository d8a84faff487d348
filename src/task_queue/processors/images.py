"""The `image_resize` task type.

The source is downloaded through the shared SSRF guard (or read from DATA_DIR,
or decoded from base64), refused before any pixel is decoded when its header
declares more than MAX_PIXELS, then decoded, oriented, resized and encoded in a
worker thread (Pillow releases the GIL there, so the event loop keeps serving
other tasks and HTTP). The output lands atomically in DATA_DIR/images/ under
the task id, so a retried task overwrites its own output and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from task_queue.errors import PermanentError
from task_queue.processors.urls import (
    UnsafeURL,
    check_download,
    guarded_request,
    parse_http_url,
    read_limited,
)
from task_queue.registry import TaskContext, default_registry

MAX_PIXELS = 40_000_000
"""Largest source accepted, in pixels (width x height as the header declares them).

40 megapixels takes an 8K frame (33 MP) or a 36 MP camera, and bounds one decode
at 160 MB even as RGBA; a 50-megapixel decompression bomb is refused from its
header alone, before a byte of pixels is allocated.
"""

MAX_SIDE = 10_000
"""Largest output width or height: a 10000x10000 RGBA output is already 400 MB."""

DEFAULT_QUALITY = 85
DOWNLOAD_TIMEOUT_SECONDS = 30.0

# Only these decoders run on untrusted bytes: Pillow can open dozens of formats,
# and some (EPS) hand the file to external programs.
INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

OutputFormat = Literal["jpeg", "png", "webp"]

# MPO is how Pillow names a JPEG carrying several pictures (many phone cameras).
_KEPT_FORMATS: dict[str, OutputFormat] = {
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "PNG": "png",
    "WEBP": "webp",
}
_EXTENSIONS: dict[OutputFormat, str] = {"jpeg": "jpg", "png": "png", "webp": "webp"}
# Orientations 5 to 8 turn the picture a quarter: the displayed width is the stored height.
_QUARTER_TURNS = {5, 6, 7, 8}


def _decode_base64(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise ValueError("a data: URL must be base64-encoded (data:image/png;base64,...)")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not valid base64: {exc}") from None


class ImagePayload(BaseModel):
    """One source (`image_url` or `image_base64`), a box, and how to fit the image to it."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(None, max_length=8192)
    image_base64: bytes | None = None
    width: int = Field(ge=1, le=MAX_SIDE)
    height: int = Field(ge=1, le=MAX_SIDE)
    mode: Literal["fit", "fill", "exact"] = "fit"
    format: OutputFormat | None = None
    quality: int | None = Field(None, ge=1, le=95)
    upscale: bool = False

    _decode = field_validator("image_base64", mode="before")(_decode_base64)

    @field_validator("format", mode="before")
    @classmethod
    def _jpg_is_jpeg(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.lower()
            return "jpeg" if value == "jpg" else value
        return value

    @field_validator("image_url")
    @classmethod
    def _supported_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if urlsplit(value).scheme == "file":
            return value
        try:
            parse_http_url(value)
        except UnsafeURL as exc:
            raise ValueError(f"{exc} (or a file: URL under DATA_DIR)") from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ImagePayload:
        if (self.image_url is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of `image_url` or `image_base64`")
        return self


@dataclass(frozen=True, slots=True)
class Rendered:
    """What was written: the output's size, format and length, and the source's size."""

    width: int
    height: int
    format: OutputFormat
    bytes: int
    source_width: int
    source_height: int


@default_registry.task("image_resize", payload=ImagePayload)
async def resize_image(payload: ImagePayload, ctx: TaskContext) -> dict[str, Any]:
    """Resize one image into DATA_DIR/images/<task id>.<ext> and describe the output.

    The `output` (relative to DATA_DIR) and `output_url` keys are what the API's
    download endpoint serves the file by.
    """
    data = await _fetch(payload, ctx)
    images = ctx.data_dir / "images"
    rendered = await asyncio.to_thread(_render, data, payload, images, ctx.task.id)
    name = f"{ctx.task.id}.{_EXTENSIONS[rendered.format]}"
    ctx.logger.info(
        "image resized",
        output=name,
        size=f"{rendered.width}x{rendered.height}",
        source_size=f"{rendered.source_width}x{rendered.source_height}",
        bytes=rendered.bytes,
    )
    return {
        "output": f"images/{name}",
        "output_url": f"/api/v1/tasks/{ctx.task.id}/output",
        "content_type": f"image/{rendered.format}",
        "width": rendered.width,
        "height": rendered.height,
        "format": rendered.format,
        "bytes": rendered.bytes,
        "source_width": rendered.source_width,
        "source_height": rendered.source_height,
    }


async def _fetch(payload: ImagePayload, ctx: TaskContext) -> bytes:
    """The source's bytes, never more than IMAGE_MAX_BYTES of them."""
    limit = ctx.settings.image_max_bytes
    if payload.image_base64 is not None:
        if len(payload.image_base64) > limit:
            raise PermanentError(
                f"image_base64 decodes to {len(payload.image_base64)} bytes,"
                f" over IMAGE_MAX_BYTES={limit}"
            )
        return payload.image_base64
    url = payload.image_url or ""
    if urlsplit(url).scheme == "file":
        return await asyncio.to_thread(_read_local, _local_path(url, ctx.data_dir), limit)
    return await _download(url, ctx, limit)


async def _download(url: str, ctx: TaskContext, limit: int) -> bytes:
    """GET through the SSRF guard: 4xx fails the task, 408/429/5xx and network errors retry."""
    async with guarded_request(
        ctx.http,
        "GET",
        url,
        allow_private=ctx.settings.allow_private_urls,
        timeout=DOWNLOAD_TIMEOUT_SECONDS,
        headers={"Accept": "image/*"},
    ) as response:
        check_download(response, "image_url")
        return await read_limited(response, limit)


def _local_path(url: str, data_dir: Path) -> Path:
    """The file a `file:` URL names, which must lie inside DATA_DIR once links are resolved.

    A relative path (`file:uploads/cat.png`) is taken from DATA_DIR, so one task's
    output (`file:images/<id>.png`) can be another's input.
    """
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise PermanentError(f"file: URLs name a local file, not host {parts.netloc!r}")
    root = data_dir.resolve()
    path = (root / unquote(parts.path)).resolve()
    if not path.is_relative_to(root):
        raise PermanentError(f"{url!r} is outside DATA_DIR: only files under {root} are read")
    return path


def _read_local(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as source:
            data = source.read(limit + 1)
    except FileNotFoundError:
        raise PermanentError(f"no such file under DATA_DIR: {path}") from None
    except IsADirectoryError:
        raise PermanentError(f"a directory, not an image: {path}") from None
    if len(data) > limit:
        raise PermanentError(f"{path} is larger than IMAGE_MAX_BYTES={limit}")
    return data


def _render(data: bytes, payload: ImagePayload, directory: Path, name: str) -> Rendered:
    """Decode, orient, resize and encode `data` into directory/<name>.<ext>; CPU-bound."""
    image, source_format, (source_width, source_height) = _decode(data, payload)
    target: OutputFormat = payload.format or _KEPT_FORMATS.get(source_format, "png")
    profile = image.info.get("icc_profile")
    source_base = Image.getmodebase(image.mode)
    image = _resize(_workable(image), payload)
    image = _encodable(image, target)
    options: dict[str, Any] = {}
    if profile and Image.getmodebase(image.mode) == source_base:
        options["icc_profile"] = profile  # a CMYK or grey profile would misdescribe RGB pixels
    if target != "png":
        options["quality"] = payload.quality or DEFAULT_QUALITY
    path = directory / f"{name}.{_EXTENSIONS[target]}"
    size = _write_atomically(image, path, target, options)
    return Rendered(
        width=image.width,
        height=image.height,
        format=target,
        bytes=size,
        source_width=source_width,
        source_height=source_height,
    )


def _decode(data: bytes, payload: ImagePayload) -> tuple[Image.Image, str, tuple[int, int]]:
    """The image upright, its format and its upright size; bombs refused from the header."""
    try:
        image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
        # Image.open has read the header only: check the size before any pixel is allocated.
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise PermanentError(
                f"refused as a decompression bomb: {width}x{height} is"
                f" {width * height / 1e6:.1f} megapixels, over the limit of {MAX_PIXELS / 1e6:g}"
            )
        box = (payload.width, payload.height)
        if image.getexif().get(ExifTags.Base.Orientation, 1) in _QUARTER_TURNS:
            width, height, box = height, width, (payload.height, payload.width)
        # JPEG only: decode straight at 1/2, 1/4 or 1/8 scale, still covering the box.
        image.draft(image.mode, box)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except UnidentifiedImageError:
        raise PermanentError(
            "not an image, or not one Pillow may decode here"
            f" (accepted: {', '.join(INPUT_FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard, in Image.open; the warning arrives as an error where
        # warnings are errors (the test suite), else MAX_PIXELS above refuses it.
        raise PermanentError(f"refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise PermanentError(f"the image data is corrupt or truncated: {exc}") from None
    return image, image.format or "", (width, height)


def _workable(image: Image.Image) -> Image.Image:
    """The image in L, LA, RGB or RGBA: what LANCZOS resamples and every encoder takes."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        # 16-bit grey: scaled to 8 bits, where a plain convert would clip all over 255.
        return image.convert("I").point(lambda value: value / 256).convert("L")
    grey = Image.getmodebase(image.mode) == "L"
    wanted = ("L" if grey else "RGB") + ("A" if image.has_transparency_data else "")
    return image if image.mode == wanted else image.convert(wanted)


def _resize(image: Image.Image, payload: ImagePayload) -> Image.Image:
    box = (payload.width, payload.height)
    if payload.mode == "exact":
        return image.resize(box, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if payload.mode == "fill":
        return image.resize(
            box, Image.Resampling.LANCZOS, box=_centred_crop(image.size, box), reducing_gap=3.0
        )
    scale = min(payload.width / image.width, payload.height / image.height)
    if not payload.upscale:
        scale = min(scale, 1.0)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _centred_crop(size: tuple[int, int], box: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred region of `size` with the aspect ratio of `box`: what fill keeps."""
    scale = max(box[0] / size[0], box[1] / size[1])
    width, height = box[0] / scale, box[1] / scale
    left, top = (size[0] - width) / 2, (size[1] - height) / 2
    return (left, top, left + width, top + height)


def _encodable(image: Image.Image, target: OutputFormat) -> Image.Image:
    """The image in a mode `target` stores: JPEG has no alpha (flattened on white), WebP no grey."""
    if target == "jpeg" and image.mode in ("LA", "RGBA"):
        flat = Image.new(image.mode[:-1], image.size, "white")
        flat.paste(image, mask=image.getchannel("A"))
        return flat
    if target == "webp" and image.mode in ("L", "LA"):
        return image.convert("RGBA" if image.mode == "LA" else "RGB")
    return image


def _write_atomically(
    image: Image.Image, path: Path, target: OutputFormat, options: dict[str, Any]
) -> int:
    """Write through a temporary file renamed into place: readers never see half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False
    ) as output:
        try:
            image.save(output, format=target.upper(), **options)
            output.flush()
            os.fsync(output.fileno())  # the rename must not land before the bytes
            size = output.tell()
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(output.name)
            raise
    os.replace(output.name, path)
    return size
