"""Reading a checkpoint's archive without trusting it: its ``.npy`` members by name, what each
member's ``.npy`` header declares (read before any data is decompressed, so a small archive
declaring a huge array is refused having read almost nothing), and then each member's data,
into a buffer of exactly its declared size. :mod:`bevialm.checkpoint` checks the declarations
against its JSON header; every problem is one line in a :class:`CheckpointError`.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from bevialm.types import Array

_CHUNK = 1 << 24  # arrays are read 16 MiB at a time into their own buffer


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, truncated or mismatched (one line)."""


def members(name: str, zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's ``.npy`` members by array name; anything else in it is refused."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        key = info.filename.removesuffix(".npy")
        if key == info.filename:
            raise CheckpointError(f"checkpoint '{name}' holds an unexpected file '{info.filename}'")
        if key in members:
            raise CheckpointError(f"checkpoint '{name}' holds the array '{key}' twice")
        members[key] = info
    return members


@dataclass(frozen=True)
class Layout:
    """What a member's ``.npy`` header declares, read before any of its data is decompressed."""

    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype[Any]
    offset: int  # where the data starts in the member

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def describe(self) -> str:
        return f"{self.dtype.str}{self.shape}"


def layout(name: str, zf: zipfile.ZipFile, key: str, info: zipfile.ZipInfo) -> Layout:
    """Read only the ``.npy`` header of member ``key`` (a few hundred bytes to decompress) and
    check that the member holds exactly that much data, of a plain numeric dtype."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise CheckpointError(f"checkpoint '{name}': array '{key}' has .npy format version {version}")
        layout = Layout(tuple(shape), bool(fortran), dtype, f.tell())
    if dtype.hasobject or dtype.kind not in "biuf":
        raise CheckpointError(f"checkpoint '{name}': array '{key}' has dtype {dtype}, not plain numbers")
    if info.file_size != layout.offset + layout.nbytes:
        raise CheckpointError(
            f"checkpoint '{name}' is corrupt: array '{key}' declares {layout.describe()} "
            f"({layout.nbytes:,} bytes) but holds {info.file_size - layout.offset:,} bytes"
        )
    return layout


def read_data(zf: zipfile.ZipFile, info: zipfile.ZipInfo, layout: Layout) -> Array:
    """The member's array, read into one buffer of its declared size; zipfile checks the CRC-32
    once the last byte is read, so flipped bits anywhere fail here."""
    buffer = bytearray(layout.nbytes)
    view = memoryview(buffer)
    with zf.open(info) as f:
        f.read(layout.offset)
        done = 0
        while done < layout.nbytes:
            chunk = f.read(min(_CHUNK, layout.nbytes - done))
            if not chunk:
                raise EOFError("array data ends early")
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
        if f.read(1):
            raise ValueError("data after the array")
    flat = np.frombuffer(buffer, dtype=layout.dtype)
    return flat.reshape(layout.shape[::-1]).T if layout.fortran else flat.reshape(layout.shape)
