"""The projections of a measurement's photos, kept in a temporary file rather than in the process.

At a million members (two million photos) the float32 projections take 2 GB: more than a process may
hold (1.5 GB), TensorFlow's 750 MB aside. Each row is written once, as the scan's column layout
[projection, -|p|^2 / 2, 1, zero padding] in float32, and read back by row range with pread into the
scan's own buffers: a block holds only the rows it multiplies, the file sits in the OS page cache
(never mapped, so never counted in the process's resident memory), and the values are exactly the
float32 projections the engine computes (nothing rounded to a smaller type).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np


def scan_width(dim: int) -> int:
    """Columns of a scan row: the projection, two for the squared norm, padded to a multiple of 8
    (the BLAS kernels run a third faster on such widths)."""
    return (dim + 2 + 7) // 8 * 8


def augment(rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[:, :] = [rows, -|row|^2 / 2, 1, 0...] (float32; the norms summed in float64)."""
    d = rows.shape[1]
    out[:, :d] = rows
    out[:, d] = -0.5 * np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
    out[:, d + 1] = 1.0
    out[:, d + 2 :] = 0.0
    return out


class ProjectionFile:
    """N x dim float32 projections in an unnamed temporary file (gone when closed or collected),
    stored in scan rows (see augment) and read by row range with pread. Thread-safe for reads."""

    def __init__(self, rows: int, dim: int, directory: str | None = None):
        self.shape = (int(rows), int(dim))
        self.dtype = np.dtype(np.float32)
        self.width = scan_width(dim)
        self._row_bytes = self.width * 4
        self._directory = directory
        self._file = tempfile.TemporaryFile(prefix="self-measure-", dir=directory)
        self._file.truncate(self.shape[0] * self._row_bytes)

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        self._file.close()

    def write_rows(self, targets: np.ndarray, values: np.ndarray) -> None:
        """Rows targets[k] = values[k] (any order; runs of consecutive targets go in one write)."""
        if not len(targets):
            return
        order = np.argsort(targets, kind="stable")
        targets = np.asarray(targets)[order]
        block = augment(
            np.asarray(values, np.float32)[order], np.empty((len(targets), self.width), np.float32)
        )
        # Split where the target rows stop being consecutive: one pwrite per run.
        breaks = np.flatnonzero(np.diff(targets) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [len(targets)]))
        for s, e in zip(starts, ends, strict=True):
            self._write_scan_rows(int(targets[s]), block[s:e])

    def read_into(self, start: int, out: np.ndarray) -> np.ndarray:
        """Scan rows start .. start + len(out) into out (C-contiguous, width columns, float32)."""
        view = memoryview(out).cast("B")
        offset, fd = start * self._row_bytes, self._file.fileno()
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise OSError(f"projection file ended at byte {offset + done}")
            done += n
        return out

    def take(self, keep: np.ndarray, chunk: int = 65536) -> ProjectionFile:
        """A new file with the rows where keep is true, copied chunk by chunk."""
        out = ProjectionFile(int(keep.sum()), self.shape[1], self._directory)
        written = 0
        buffer = np.empty((chunk, self.width), np.float32)
        for start in range(0, len(self), chunk):
            part = self.read_into(start, buffer[: min(chunk, len(self) - start)])[keep[start : start + chunk]]
            out._write_scan_rows(written, part)
            written += len(part)
        return out

    def _write_scan_rows(self, start: int, rows: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(rows, np.float32)).cast("B")
        offset = start * self._row_bytes
        while len(data):
            n = os.pwrite(self._file.fileno(), data, offset)
            data, offset = data[n:], offset + n

    def projections(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start..stop as a plain (stop - start) x dim float32 array (tests, small sets)."""
        stop = len(self) if stop is None else stop
        rows = self.read_into(start, np.empty((stop - start, self.width), np.float32))
        return np.ascontiguousarray(rows[:, : self.shape[1]])


def read_scan_rows(projections, start: int, out: np.ndarray) -> np.ndarray:
    """Scan rows start .. start + len(out) of an in-memory matrix or a ProjectionFile, into out."""
    if isinstance(projections, ProjectionFile):
        return projections.read_into(start, out)
    return augment(projections[start : start + len(out)], out)
