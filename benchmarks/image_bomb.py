"""Peak memory of the image_resize handler given a 50-megapixel PNG decompression bomb.

    .venv/bin/python benchmarks/image_bomb.py

Backs the bar "a 50-megapixel PNG bomb is refused without the worker's memory
growing past 200 MB". The bomb is written row by row, never whole in memory:
7072x7072 RGBA, all zeros, 200 MB of pixels in a few hundred KB of PNG. The
handler runs on it in this process, as a worker runs it, and the peak RSS
(ru_maxrss) is printed before and after. A child process then decodes the same
file with Pillow's guards off, to show the memory the refusal saved.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import httpx
from PIL import Image

from task_queue.config import Settings
from task_queue.errors import PermanentError
from task_queue.logs import get_logger
from task_queue.processors.images import ImagePayload, resize_image
from task_queue.registry import TaskContext
from task_queue.task import Task

SIDE = 7072  # 7072 x 7072 = 50.01 megapixels
BAR_MB = 200.0


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes there, KiB here


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb(path: Path, side: int) -> None:
    """An 8-bit RGBA PNG of side x side black, transparent pixels, compressed one row at a time."""
    row = b"\x00" * (1 + 4 * side)  # filter byte "none", then the pixels
    packer = zlib.compressobj(9)
    with path.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)))
        for _ in range(side):
            compressed = packer.compress(row)
            if compressed:
                out.write(_chunk(b"IDAT", compressed))
        out.write(_chunk(b"IDAT", packer.flush()))
        out.write(_chunk(b"IEND", b""))


async def run_handler(data_dir: Path, name: str) -> str:
    """What the handler answered: its refusal, or (a failed bar) the result it returned."""
    settings = Settings.load(environ={}, overrides={"data_dir": data_dir, "log_file": ""})
    request = {"image_url": f"file:{name}", "width": 100, "height": 100}
    payload = ImagePayload.model_validate(request)
    task = Task.new("image_resize", request, now=0.0)
    async with httpx.AsyncClient() as http:
        context = TaskContext(
            task=task,
            settings=settings,
            logger=get_logger("image_bomb"),
            http=http,
            report_progress=lambda progress: None,
        )
        try:
            return f"handler returned (NOT refused): {await resize_image(payload, context)}"
        except PermanentError as exc:
            return f"handler raised PermanentError: {exc}"


def decode_unguarded(path: Path) -> None:
    """Child-process mode: decode the bomb with Pillow's own limit off, print the peak RSS."""
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as image:
        image.load()
    print(f"{peak_rss_mb():.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode-unguarded", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decode_unguarded:
        decode_unguarded(args.decode_unguarded)
        return
    with tempfile.TemporaryDirectory() as directory:
        data_dir = Path(directory)
        bomb = data_dir / "bomb.png"
        write_bomb(bomb, SIDE)
        pixels = SIDE * SIDE
        print(
            f"bomb: {SIDE}x{SIDE} RGBA PNG, {pixels / 1e6:.2f} megapixels,"
            f" {bomb.stat().st_size / 1024:.0f} KiB on disk, {pixels * 4 / 1e6:.0f} MB decoded"
        )
        before = peak_rss_mb()
        print(f"peak RSS before the handler: {before:.1f} MB")
        print(asyncio.run(run_handler(data_dir, bomb.name)))
        after = peak_rss_mb()
        print(f"peak RSS after the handler:  {after:.1f} MB (grew {after - before:.1f} MB)")
        child = subprocess.run(
            [sys.executable, __file__, "--decode-unguarded", str(bomb)],
            check=True,
            capture_output=True,
            text=True,
        )
        print(f"the same file decoded with the guards off: peak RSS {child.stdout.strip()} MB")
    verdict = "met" if after < BAR_MB else "MISSED"
    print(f"bar: peak RSS under {BAR_MB:.0f} MB with the bomb refused: {verdict}")


if __name__ == "__main__":
    main()
