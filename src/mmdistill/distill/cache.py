"""Storage of the in-run teacher-output cache (``train.cache_storage``, ``train.cache_dtype``).

One ``[N, ...]`` array per teacher and captured path (logits and the hooked features the terms
read), row ``i`` holding the outputs for sample ``i`` of the training set. ``memory`` keeps tensors
on the teachers' device; ``mmap`` keeps ``np.memmap`` files in a temporary folder (inside the run
directory when there is one) that :meth:`TeacherCache.close` deletes, so the cache can exceed
memory. ``float16`` halves either; reads come back as float32.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, RunDirError
from ..rundir import disk_message


class TeacherCache:
    def __init__(self, num_samples: int, *, storage: str = "memory", dtype: str = "float32",
                 folder: str | Path | None = None):
        self.num_samples, self.storage, self.dtype = num_samples, storage, dtype
        self.arrays: list[dict[str, torch.Tensor | np.memmap]] = []
        self.folder: Path | None = None
        if storage == "mmap":
            parent = Path(folder) if folder is not None and Path(folder).is_dir() else None
            try:
                self.folder = Path(tempfile.mkdtemp(prefix="teacher-cache-", dir=parent))
            except OSError as err:
                raise RunDirError(disk_message(err, parent)) from None

    def nbytes(self) -> int:
        return sum(a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size()
                   for store in self.arrays for a in store.values())

    def _allocate(self, teacher: int, path: str, value: torch.Tensor):
        shape = (self.num_samples, *value.shape[1:])
        if self.storage == "memory":
            dtype = torch.float16 if self.dtype == "float16" else value.dtype
            return torch.empty(shape, dtype=dtype, device=value.device)
        file = self.folder / f"{teacher}-{path.replace('/', '_')}.f{16 if self.dtype == 'float16' else 32}"
        try:
            return np.lib.format.open_memmap(file, mode="w+", dtype=np.dtype(self.dtype), shape=shape)
        except OSError as err:
            raise RunDirError(disk_message(err, file)) from None

    @torch.no_grad()
    def write(self, index: torch.Tensor, outputs: list[dict[str, torch.Tensor]]) -> None:
        """Store ``outputs`` (``[{path: [B, ...]}]`` per teacher) at rows ``index``."""
        while len(self.arrays) < len(outputs):
            self.arrays.append({})
        rows = index.cpu()
        for teacher, (store, out) in enumerate(zip(self.arrays, outputs)):
            for path, value in out.items():
                if path not in store:
                    store[path] = self._allocate(teacher, path, value)
                if self.dtype == "float16":
                    half = value.to(torch.float16)
                    if not torch.isfinite(half).all() and torch.isfinite(value).all():
                        raise ConfigError(f"train.cache_dtype: float16 overflows teacher {teacher}'s {path!r} "
                                          f"(largest magnitude {float(value.abs().max()):.3g}); use float32")
                    value = half
                target = store[path]
                if isinstance(target, torch.Tensor):
                    target[rows.to(target.device)] = value.to(target.dtype)
                else:
                    try:
                        target[rows.numpy()] = value.detach().to("cpu", torch.float16 if self.dtype == "float16"
                                                                  else torch.float32).numpy()  # bf16 has no numpy
                    except OSError as err:
                        raise RunDirError(disk_message(err, self.folder)) from None

    def read(self, index: torch.Tensor, device) -> list[dict[str, torch.Tensor]]:
        """``[{path: float32 [B, ...]}]`` per teacher for the samples ``index``."""
        if self.storage == "memory":
            out = []
            for store in self.arrays:
                if not store:
                    out.append({})
                    continue
                rows = index.to(next(iter(store.values())).device)
                out.append({p: a[rows] if a.dtype != torch.float16 else a[rows].float() for p, a in store.items()})
            return out
        rows = index.cpu().numpy()
        return [{p: torch.from_numpy(np.asarray(a[rows], dtype=np.float32)).to(device) for p, a in store.items()}
                for store in self.arrays]

    def close(self) -> None:
        """Drop the arrays and delete the memory-mapped files."""
        self.arrays = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
