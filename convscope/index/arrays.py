"""The index's arrays on disk: .npy files memory-mapped to read, and files that grow by rows
while a build appends to them (:class:`RowFile`), whose first rows a snapshot of the build reads
(:func:`head_rows`) while later rows are still being written.

>>> f = RowFile("embedding.npy", np.float16, (1280,))
>>> f.append(rows); f.commit()
>>> load_rows(Path("embedding.npy")).shape            # (len(rows), 1280)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

_HEADER = 128  # bytes reserved for an .npy header, so a growing array is rewritten in place


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """An .npy 1.0 header padded to exactly :data:`_HEADER` bytes (NumPy reads the padding)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)})
    body = text.encode("latin1")
    pad = _HEADER - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"array shape {shape} does not fit an .npy header of {_HEADER} bytes")
    return b"\x93NUMPY\x01\x00" + (_HEADER - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"


class RowFile:
    """An .npy file that grows by rows: ``append`` writes rows at the end, ``commit`` rewrites the
    header for the rows so far and fsyncs, ``truncate`` cuts it back to a committed row count (to
    resume). Between commits the file reads as the last committed array.

    >>> f = RowFile("probs.npy", np.float16, (32,))
    >>> f.append(np.zeros((8, 32), np.float16)); f.commit(); f.rows      # 8
    """

    def __init__(self, path: str | os.PathLike, dtype, row_shape: Sequence[int]):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        new = not self.path.exists()
        self._f = open(self.path, "w+b" if new else "r+b")
        if new:
            self._f.write(_header(self.dtype, (0, *self.row_shape)))
            self._f.flush()
        self.rows = (os.fstat(self._f.fileno()).st_size - _HEADER) // self.row_bytes

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape[1:]} where {self.row_shape} was expected")
        self._f.seek(_HEADER + self.rows * self.row_bytes)
        self._f.write(rows.tobytes())
        self.rows += len(rows)

    def truncate(self, rows: int) -> None:
        self._f.truncate(_HEADER + rows * self.row_bytes)
        self.rows = rows
        self.commit()

    def commit(self) -> None:
        self._f.seek(0)
        self._f.write(_header(self.dtype, (self.rows, *self.row_shape)))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def load_rows(path: Path) -> np.ndarray:
    """An .npy array memory-mapped read-only (an empty one read into memory: mmap cannot map
    0 bytes)."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
    if 0 in shape:
        return np.load(path)
    return np.load(path, mmap_mode="r")


def head_rows(path: Path, rows: int) -> np.ndarray:
    """The first ``rows`` rows of an .npy file that a build is still growing (a
    :class:`RowFile`), memory-mapped read-only: a snapshot's view of what was committed when it
    was taken, whatever rows the file holds by now (rows are only ever appended after them;
    a resumed build cuts the file back to its last commit, never below a snapshot's rows)."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
    # (the rows there by the file's size: the header's count is rewritten at each commit)
    row_bytes = np.dtype(dtype).itemsize * int(np.prod(shape[1:], dtype=np.int64))
    if fortran or (row_bytes and (size - offset) // row_bytes < rows):
        raise ValueError(f"{path.name} holds fewer rows than the {rows} its snapshot counts")
    if rows == 0 or 0 in shape[1:]:
        return np.zeros((rows, *shape[1:]), dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(rows, *shape[1:]))


__all__ = ["RowFile", "head_rows", "load_rows"]
