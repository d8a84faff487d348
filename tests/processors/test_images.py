"""image_resize on real images: made with Pillow, served over real HTTP, read back with Pillow."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import ExifTags, Image

from task_queue._clock import ManualClock
from task_queue.backends.memory import MemoryBackend
from task_queue.config import Settings
from task_queue.errors import PayloadError, PermanentError, Retry
from task_queue.logs import get_logger
from task_queue.processors.images import MAX_PIXELS, resize_image
from task_queue.processors.urls import UnsafeURL
from task_queue.registry import TaskContext, default_registry
from task_queue.task import Task, TaskStatus
from task_queue.worker.pool import WorkerPool
from tests.processors.http_peer import HttpPeer, Reply, serving
from tests.worker.conftest import eventually

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, format: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def stripes(size: tuple[int, int], *colours: tuple[int, int, int]) -> Image.Image:
    """Vertical bands of equal width, one per colour, left to right."""
    image = Image.new("RGB", size)
    band = size[0] // len(colours)
    for index, colour in enumerate(colours):
        image.paste(colour, (index * band, 0, (index + 1) * band, size[1]))
    return image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A 1-bit grey PNG header declaring width x height, and pixel data that is not zlib at all.

    Only a decoder that never touches the pixels can report its size: loading it
    would fail as corrupt, so a refusal that names the size came from the header.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"not zlib data")
        + png_chunk(b"IEND", b"")
    )


def near(actual: Any, expected: tuple[int, ...], tolerance: int = 24) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(
        environ={}, overrides={"allow_private_urls": True, "data_dir": tmp_path, "log_file": ""}
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=False) as client:
        yield client


def context(task: Task, settings: Settings, http: httpx.AsyncClient) -> TaskContext:
    return TaskContext(
        task=task,
        settings=settings,
        logger=get_logger("test"),
        http=http,
        report_progress=lambda progress: None,
    )


async def run(payload: dict[str, Any], settings: Settings, http: httpx.AsyncClient) -> Any:
    """The handler's result, called the way the pool calls it: validated payload, real context."""
    kind = default_registry.get("image_resize")
    task = Task.new("image_resize", payload, now=0.0)
    return await resize_image(kind.validate(payload), context(task, settings, http))


def output(settings: Settings, result: dict[str, Any]) -> Image.Image:
    image = Image.open(settings.data_dir / result["output"])
    image.load()
    return image


@pytest.fixture
def peer() -> Iterator[HttpPeer]:
    with serving() as server:
        yield server


# --- modes ---------------------------------------------------------------------------


async def test_fit_keeps_the_aspect_ratio_inside_the_box(
    static_server: tuple[str, Path], settings: Settings, http: httpx.AsyncClient
) -> None:
    base_url, served = static_server
    (served / "wide.png").write_bytes(encode(stripes((400, 200), RED, GREEN), "PNG"))

    result = await run(
        {"image_url": f"{base_url}/wide.png", "width": 100, "height": 100}, settings, http
    )

    image = output(settings, result)
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (100, 50))
    assert (result["width"], result["height"]) == (100, 50)
    assert (result["source_width"], result["source_height"]) == (400, 200)
    assert near(image.getpixel((10, 25)), RED)
    assert near(image.getpixel((90, 25)), GREEN)


async def test_fit_never_enlarges_a_smaller_image_unless_upscale_is_set(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    small = b64(encode(stripes((40, 20), BLUE), "PNG"))
    box = {"image_base64": small, "width": 100, "height": 100}

    kept = await run(box, settings, http)
    enlarged = await run({**box, "upscale": True}, settings, http)

    assert output(settings, kept).size == (40, 20)
    assert output(settings, enlarged).size == (100, 50)


async def test_fill_covers_the_box_and_crops_the_centre(
    static_server: tuple[str, Path], settings: Settings, http: httpx.AsyncClient
) -> None:
    base_url, served = static_server
    # Only the green middle half of this 2:1 image survives a square crop.
    (served / "bands.png").write_bytes(encode(stripes((400, 200), RED, GREEN, GREEN, BLUE), "PNG"))

    result = await run(
        {"image_url": f"{base_url}/bands.png", "width": 60, "height": 60, "mode": "fill"},
        settings,
        http,
    )

    image = output(settings, result)
    assert image.size == (60, 60)
    for corner in [(0, 0), (59, 0), (0, 59), (59, 59)]:
        assert near(image.getpixel(corner), GREEN)


async def test_fill_and_exact_enlarge_a_small_source_to_the_box(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    small = b64(encode(stripes((40, 20), BLUE), "PNG"))

    for mode in ["fill", "exact"]:
        result = await run(
            {"image_base64": small, "width": 90, "height": 120, "mode": mode}, settings, http
        )
        assert output(settings, result).size == (90, 120)


async def test_exact_stretches_to_the_box(
    static_server: tuple[str, Path], settings: Settings, http: httpx.AsyncClient
) -> None:
    base_url, served = static_server
    (served / "wide.png").write_bytes(encode(stripes((400, 200), RED, BLUE), "PNG"))

    result = await run(
        {"image_url": f"{base_url}/wide.png", "width": 50, "height": 300, "mode": "exact"},
        settings,
        http,
    )

    image = output(settings, result)
    assert image.size == (50, 300)
    assert near(image.getpixel((5, 150)), RED)
    assert near(image.getpixel((45, 150)), BLUE)


# --- formats and modes ------------------------------------------------------------------


async def test_jpeg_exif_orientation_is_applied(
    static_server: tuple[str, Path], settings: Settings, http: httpx.AsyncClient
) -> None:
    base_url, served = static_server
    # Stored 300x100, red on the left; orientation 6 means "turn 90 degrees clockwise
    # to display", so it shows 100x300 with red at the top.
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    stored = stripes((300, 100), RED, GREEN, BLUE)
    (served / "phone.jpg").write_bytes(encode(stored, "JPEG", exif=exif, quality=95))

    result = await run(
        {"image_url": f"{base_url}/phone.jpg", "width": 1000, "height": 1000}, settings, http
    )

    image = output(settings, result)
    assert (image.format, image.size) == ("JPEG", (100, 300))
    assert (result["source_width"], result["source_height"]) == (100, 300)
    assert near(image.getpixel((50, 20)), RED, tolerance=40)
    assert near(image.getpixel((50, 280)), BLUE, tolerance=40)
    assert ExifTags.Base.Orientation not in image.getexif()


async def test_large_jpeg_is_reduced_to_the_box(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    # Big enough that the JPEG decoder's draft mode scales it down while decoding.
    photo = encode(stripes((3000, 1500), RED, GREEN), "JPEG")

    result = await run({"image_base64": b64(photo), "width": 200, "height": 200}, settings, http)

    image = output(settings, result)
    assert (image.format, image.size) == ("JPEG", (200, 100))
    assert (result["source_width"], result["source_height"]) == (3000, 1500)
    assert near(image.getpixel((20, 50)), RED, tolerance=40)
    assert near(image.getpixel((180, 50)), GREEN, tolerance=40)


async def test_transparent_png_stays_rgba_as_png(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    image = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (100, 0, 200, 100))

    result = await run(
        {"image_base64": b64(encode(image, "PNG")), "width": 100, "height": 100}, settings, http
    )

    resized = output(settings, result)
    assert (resized.format, resized.mode, resized.size) == ("PNG", "RGBA", (100, 50))
    assert resized.getchannel("A").getpixel((10, 25)) == 0
    assert resized.getpixel((90, 25)) == (0, 0, 255, 255)


async def test_transparent_png_becomes_jpeg_flattened_on_white(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    image = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    image.paste((0, 0, 255, 255), (100, 0, 200, 100))

    result = await run(
        {
            "image_base64": b64(encode(image, "PNG")),
            "width": 100,
            "height": 100,
            "format": "jpg",
            "quality": 90,
        },
        settings,
        http,
    )

    resized = output(settings, result)
    assert (resized.format, resized.mode, resized.size) == ("JPEG", "RGB", (100, 50))
    assert (result["format"], result["content_type"]) == ("jpeg", "image/jpeg")
    assert result["output"].endswith(".jpg")
    assert near(resized.getpixel((10, 25)), WHITE)
    assert near(resized.getpixel((90, 25)), BLUE)


@pytest.mark.parametrize(
    ("source", "requested", "expected_format", "expected_mode"),
    [
        (("JPEG", "RGB"), None, "JPEG", "RGB"),
        (("PNG", "L"), None, "PNG", "L"),
        (("WEBP", "RGB"), None, "WEBP", "RGB"),
        (("GIF", "P"), None, "PNG", "RGB"),
        (("BMP", "RGB"), None, "PNG", "RGB"),
        (("TIFF", "RGB"), None, "PNG", "RGB"),
        (("PNG", "RGB"), "webp", "WEBP", "RGB"),
        (("PNG", "L"), "webp", "WEBP", "RGB"),
        (("JPEG", "CMYK"), None, "JPEG", "RGB"),
        (("PNG", "1"), "png", "PNG", "L"),
    ],
)
async def test_output_format_is_the_requested_one_or_the_source_kept_or_png(
    settings: Settings,
    http: httpx.AsyncClient,
    source: tuple[str, str],
    requested: str | None,
    expected_format: str,
    expected_mode: str,
) -> None:
    source_format, source_mode = source
    image = Image.new(source_mode, (80, 40), "white")
    payload: dict[str, Any] = {
        "image_base64": b64(encode(image, source_format)),
        "width": 40,
        "height": 40,
    }
    if requested is not None:
        payload["format"] = requested

    result = await run(payload, settings, http)

    resized = output(settings, result)
    assert (resized.format, resized.mode, resized.size) == (
        expected_format,
        expected_mode,
        (40, 20),
    )
    assert result["format"] == expected_format.lower()
    assert result["bytes"] == (settings.data_dir / result["output"]).stat().st_size


async def test_sixteen_bit_grey_is_scaled_to_eight_bits_not_clipped(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    deep = Image.new("I;16", (40, 20), 40000)

    result = await run(
        {"image_base64": b64(encode(deep, "PNG")), "width": 20, "height": 20}, settings, http
    )

    resized = output(settings, result)
    assert resized.mode == "L"
    assert resized.getpixel((5, 5)) == 40000 // 256


async def test_result_names_the_output_for_the_download_endpoint(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    source = b64(encode(stripes((64, 32), RED), "PNG"))
    kind = default_registry.get("image_resize")
    task = Task.new("image_resize", {}, now=0.0)
    payload = kind.validate({"image_base64": source, "width": 16, "height": 16})

    result = await resize_image(payload, context(task, settings, http))

    assert result == {
        "output": f"images/{task.id}.png",
        "output_url": f"/api/v1/tasks/{task.id}/output",
        "content_type": "image/png",
        "width": 16,
        "height": 8,
        "format": "png",
        "bytes": (settings.data_dir / "images" / f"{task.id}.png").stat().st_size,
        "source_width": 64,
        "source_height": 32,
    }
    # Written through a temporary file renamed into place: nothing else is left behind.
    assert [p.name for p in (settings.data_dir / "images").iterdir()] == [f"{task.id}.png"]


async def test_base64_may_come_as_a_data_url_wrapped_over_lines(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    encoded = b64(encode(stripes((64, 32), RED), "PNG"))
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))

    result = await run(
        {"image_base64": f"data:image/png;base64,{wrapped}", "width": 32, "height": 32},
        settings,
        http,
    )

    assert output(settings, result).size == (32, 16)


# --- sources ----------------------------------------------------------------------------


async def test_file_url_under_data_dir_is_read(settings: Settings, http: httpx.AsyncClient) -> None:
    uploads = settings.data_dir / "uploads"
    uploads.mkdir()
    (uploads / "cat.png").write_bytes(encode(stripes((64, 32), RED), "PNG"))

    relative = await run(
        {"image_url": "file:uploads/cat.png", "width": 32, "height": 32}, settings, http
    )
    absolute = await run(
        {"image_url": (uploads / "cat.png").as_uri(), "width": 16, "height": 16}, settings, http
    )

    assert output(settings, relative).size == (32, 16)
    assert output(settings, absolute).size == (16, 8)


async def test_file_url_outside_data_dir_is_refused(
    settings: Settings, http: httpx.AsyncClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "secret.png"
    elsewhere.write_bytes(encode(stripes((64, 32), RED), "PNG"))
    (settings.data_dir / "link.png").symlink_to(elsewhere)

    for url in [elsewhere.as_uri(), f"file:../{elsewhere.parent.name}/secret.png", "file:link.png"]:
        with pytest.raises(PermanentError, match="outside DATA_DIR"):
            await run({"image_url": url, "width": 10, "height": 10}, settings, http)


async def test_url_on_loopback_is_refused_without_allow_private_urls(
    static_server: tuple[str, Path], tmp_path: Path, http: httpx.AsyncClient
) -> None:
    base_url, served = static_server
    (served / "cat.png").write_bytes(encode(stripes((64, 32), RED), "PNG"))
    strict = Settings.load(environ={}, overrides={"data_dir": tmp_path, "log_file": ""})

    with pytest.raises(UnsafeURL):
        await run({"image_url": f"{base_url}/cat.png", "width": 10, "height": 10}, strict, http)

    assert not (tmp_path / "images").exists()


async def test_client_errors_fail_permanently_and_redirects_are_not_followed(
    static_server: tuple[str, Path], settings: Settings, http: httpx.AsyncClient
) -> None:
    base_url, served = static_server
    (served / "folder").mkdir()  # served without its trailing slash: a 301

    with pytest.raises(PermanentError, match="404"):
        await run(
            {"image_url": f"{base_url}/missing.png", "width": 10, "height": 10}, settings, http
        )
    with pytest.raises(PermanentError, match="redirects are not followed"):
        await run({"image_url": f"{base_url}/folder", "width": 10, "height": 10}, settings, http)


async def test_server_errors_and_refused_connections_are_worth_a_retry(
    peer: HttpPeer, settings: Settings, http: httpx.AsyncClient
) -> None:
    peer.script("/busy.png", Reply(status=503, body=b"busy"))
    peer.script("/slow-down.png", Reply(status=429, body=b"later"))
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]

    for url in [
        f"{peer.url}/busy.png",
        f"{peer.url}/slow-down.png",
        f"http://127.0.0.1:{closed_port}/gone.png",
    ]:
        with pytest.raises((httpx.HTTPError, Retry)) as raised:
            await run({"image_url": url, "width": 10, "height": 10}, settings, http)
        assert not isinstance(raised.value, PermanentError)


async def test_download_over_image_max_bytes_is_refused(
    static_server: tuple[str, Path], tmp_path: Path, http: httpx.AsyncClient
) -> None:
    base_url, served = static_server
    noise = Image.effect_noise((200, 200), 64).convert("RGB")
    (served / "noise.png").write_bytes(encode(noise, "PNG"))
    small_cap = Settings.load(
        environ={},
        overrides={
            "allow_private_urls": True,
            "data_dir": tmp_path,
            "log_file": "",
            "image_max_bytes": 10_000,
        },
    )

    with pytest.raises(PermanentError):
        await run(
            {"image_url": f"{base_url}/noise.png", "width": 10, "height": 10}, small_cap, http
        )


async def test_base64_and_file_over_image_max_bytes_are_refused(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    big = encode(Image.effect_noise((200, 200), 64).convert("RGB"), "PNG")
    (tmp_path / "big.png").write_bytes(big)
    small_cap = Settings.load(
        environ={}, overrides={"data_dir": tmp_path, "log_file": "", "image_max_bytes": 10_000}
    )

    with pytest.raises(PermanentError, match="IMAGE_MAX_BYTES"):
        await run({"image_base64": b64(big), "width": 10, "height": 10}, small_cap, http)
    with pytest.raises(PermanentError, match="IMAGE_MAX_BYTES"):
        await run({"image_url": "file:big.png", "width": 10, "height": 10}, small_cap, http)


# --- hostile and broken input -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, this is plain text and not a picture\n", "not an image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00garbage", "corrupt or truncated"),
        (b"", "not an image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image"),
    ],
    ids=["text", "png-signature-then-garbage", "empty", "eps-not-decoded"],
)
async def test_non_image_fails_permanently_with_a_clear_error(
    static_server: tuple[str, Path],
    settings: Settings,
    http: httpx.AsyncClient,
    data: bytes,
    message: str,
) -> None:
    base_url, served = static_server
    (served / "file.bin").write_bytes(data)

    with pytest.raises(PermanentError, match=message):
        await run({"image_url": f"{base_url}/file.bin", "width": 10, "height": 10}, settings, http)


async def test_truncated_image_fails_permanently_as_corrupt(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    whole = encode(Image.effect_noise((200, 200), 64).convert("RGB"), "PNG")

    with pytest.raises(PermanentError, match="corrupt or truncated"):
        await run(
            {"image_base64": b64(whole[: len(whole) // 2]), "width": 10, "height": 10},
            settings,
            http,
        )


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (8_000, 8_000),  # 64 MP: over MAX_PIXELS, under Pillow's own warning threshold
        (10_000, 10_000),  # 100 MP: Pillow warns (an error under this suite's filterwarnings)
        (15_000, 15_000),  # 225 MP: Pillow's DecompressionBombError
        (7_072, 7_072),  # the 50 MP bomb of the bar
    ],
)
async def test_decompression_bomb_is_refused_from_its_header(
    static_server: tuple[str, Path],
    settings: Settings,
    http: httpx.AsyncClient,
    width: int,
    height: int,
) -> None:
    base_url, served = static_server
    (served / "bomb.png").write_bytes(png_declaring(width, height))
    assert width * height > MAX_PIXELS

    with pytest.raises(PermanentError, match="refused as a decompression bomb"):
        await run({"image_url": f"{base_url}/bomb.png", "width": 10, "height": 10}, settings, http)

    assert not (settings.data_dir / "images").exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"width": 10, "height": 10}, "payload"),
        (
            {"image_url": "http://x/a.png", "image_base64": "AAAA", "width": 1, "height": 1},
            "payload",
        ),
        ({"image_url": "ftp://example.com/a.png", "width": 10, "height": 10}, "payload.image_url"),
        ({"image_url": "http:///a.png", "width": 10, "height": 10}, "payload.image_url"),
        ({"image_base64": "not base64!", "width": 10, "height": 10}, "payload.image_base64"),
        ({"image_base64": "data:image/png,AAAA", "width": 1, "height": 1}, "payload.image_base64"),
        ({"image_base64": "AAAA", "width": 0, "height": 10}, "payload.width"),
        ({"image_base64": "AAAA", "width": 10, "height": 10_001}, "payload.height"),
        ({"image_base64": "AAAA", "width": 10, "height": 10, "mode": "stretch"}, "payload.mode"),
        ({"image_base64": "AAAA", "width": 10, "height": 10, "format": "gif"}, "payload.format"),
        ({"image_base64": "AAAA", "width": 10, "height": 10, "quality": 96}, "payload.quality"),
        ({"image_base64": "AAAA", "width": 10, "height": 10, "colour": "red"}, "payload.colour"),
    ],
)
def test_bad_payload_is_refused_at_submit_naming_the_field(
    payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(PayloadError) as raised:
        default_registry.get("image_resize").validate(payload)

    assert [detail["field"] for detail in raised.value.details] == [field]


# --- in the worker --------------------------------------------------------------------


@pytest.fixture
async def pool(
    clock: ManualClock, settings: Settings
) -> AsyncIterator[tuple[WorkerPool, MemoryBackend]]:
    """A real worker pool over the memory backend, running the default registry."""
    store = MemoryBackend(clock=clock)
    await store.open()
    workers = WorkerPool(store, default_registry, settings, worker_id="images", queues=[])
    running = asyncio.create_task(workers.run())
    yield workers, store
    workers.stop()
    await running
    await workers.abort()
    await workers.close()
    await store.close()


async def test_worker_pool_completes_a_resize_from_a_url(
    pool: tuple[WorkerPool, MemoryBackend],
    static_server: tuple[str, Path],
    settings: Settings,
    clock: ManualClock,
) -> None:
    _, store = pool
    base_url, served = static_server
    (served / "wide.png").write_bytes(encode(stripes((400, 200), RED, GREEN), "PNG"))
    task = Task.new(
        "image_resize",
        {"image_url": f"{base_url}/wide.png", "width": 80, "height": 80, "format": "webp"},
        now=clock.now(),
    )
    await store.enqueue([task])

    done = await eventually(store, task.id, lambda t: t.status.is_final)

    assert done.status is TaskStatus.COMPLETED, done.error
    assert done.result["output"] == f"images/{task.id}.webp"
    image = output(settings, done.result)
    assert (image.format, image.size) == ("WEBP", (80, 40))


async def test_worker_pool_fails_a_non_image_after_one_attempt(
    pool: tuple[WorkerPool, MemoryBackend], clock: ManualClock
) -> None:
    _, store = pool
    text = base64.b64encode(b"just some text").decode()
    task = Task.new(
        "image_resize", {"image_base64": text, "width": 10, "height": 10}, now=clock.now()
    )
    await store.enqueue([task])

    done = await eventually(store, task.id, lambda t: t.status.is_final)

    assert done.status is TaskStatus.FAILED
    assert done.attempts == 1
    assert "not an image" in (done.error or "")


async def test_worker_pool_retries_a_source_answering_503(
    pool: tuple[WorkerPool, MemoryBackend], peer: HttpPeer, clock: ManualClock
) -> None:
    _, store = pool
    peer.script("/busy.png", Reply(status=503, body=b"busy"))
    task = Task.new(
        "image_resize",
        {"image_url": f"{peer.url}/busy.png", "width": 10, "height": 10},
        now=clock.now(),
    )
    await store.enqueue([task])

    retrying = await eventually(store, task.id, lambda t: t.status is TaskStatus.RETRYING)

    assert "503" in (retrying.error or "")


async def test_ten_concurrent_resizes_leave_the_event_loop_free(
    settings: Settings, http: httpx.AsyncClient
) -> None:
    # Big enough that each decode and resize is real work (tens of milliseconds).
    picture = Image.effect_mandelbrot((2400, 1600), (-2.0, -1.0, 1.0, 1.0), 64).convert("RGB")
    source = b64(encode(picture, "PNG"))
    ticks = 0
    finished = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not finished.is_set():
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    results = await asyncio.gather(
        *(
            run({"image_base64": source, "width": 300, "height": 300}, settings, http)
            for _ in range(10)
        )
    )
    finished.set()
    await ticking

    assert len({r["output"] for r in results}) == 10
    assert all(output(settings, r).size == (300, 200) for r in results)
    # Handlers that decoded on the loop would run back to back and let the ticker in
    # a couple of times at most; off the loop it turns throughout.
    assert ticks >= 100
