"""Where data lives, where derived data is cached, and downloading with checksums."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DataError

DATA_ENV = "MMDISTILL_DATA"
CACHE_ENV = "MMDISTILL_CACHE"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$MMDISTILL_DATA``, else ``~/.mmdistill/data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".mmdistill" / "data"


def cache_dir() -> Path:
    """Where derived features (e.g. log-mel spectrograms) are cached: ``$MMDISTILL_CACHE``."""
    env = os.environ.get(CACHE_ENV)
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "mmdistill"
    if path.exists() and not path.is_dir():
        from ..errors import ConfigError

        raise ConfigError(f"{CACHE_ENV}={path}: is a file, not a folder for the feature cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(urls: list[str], dest: Path, *, md5: str | None = None, sha256: str | None = None,
             dataset: str, hint: str) -> Path:
    """Fetch the first URL of ``urls`` that answers into ``dest`` and verify its checksum.

    The file is written under a temporary name and renamed only once verified, so a broken
    download never leaves a file that looks complete. Offline, raises :class:`DataError` with
    ``hint`` (how to point at local data).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
                shutil.copyfileobj(response, out)
            for algorithm, expected in (("md5", md5), ("sha256", sha256)):
                if expected and file_digest(Path(tmp), algorithm) != expected:
                    raise DataError(f"{dataset}: {url} does not match its {algorithm} checksum {expected}")
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            errors.append(f"{url}: {getattr(err, 'reason', err)}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DataError(f"{dataset} is not under the data root and could not be downloaded "
                    f"({'; '.join(errors)}). {hint}")
