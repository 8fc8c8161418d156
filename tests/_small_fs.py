"""Helpers of the fault tests: a small real filesystem for disk-full tests (a tmpfs of a given
size: the tests run as root; a loop device would do the same, tmpfs needs no image file), and
the encoder workers of a server process."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil


@contextmanager
def small_filesystem(mount_point: Path, size_mb: int) -> Iterator[Path]:
    """``mount_point`` as a fresh tmpfs of ``size_mb`` MiB, unmounted afterwards."""
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path: Path, chunk: int = 1 << 20) -> int:
    """Write ``path`` until the disk is full (unbuffered: nothing is left to flush); returns
    the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        block = b"\0" * chunk
        while True:
            try:
                written += os.write(fd, block)
            except OSError:
                if chunk <= 4096:
                    return written
                chunk //= 16
                block = block[:chunk]
    finally:
        os.close(fd)


def encoder_workers(pid: int) -> list[psutil.Process]:
    """The encoder worker processes of server ``pid`` (multiprocessing's resource tracker, which
    outlives its parent for a moment, is not one)."""
    return [
        child
        for child in psutil.Process(pid).children(recursive=True)
        if "resource_tracker" not in " ".join(child.cmdline())
    ]
