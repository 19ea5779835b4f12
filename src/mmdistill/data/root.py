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


# --- paths a data config names ---------------------------------------------------------------
def resolve(root: str | os.PathLike, path: str) -> Path:
    """``path`` itself when absolute (or ``~``), else ``path`` under the data root ``root``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(root) / p


def candidates(path: str, root: str | os.PathLike, config_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """Where a path a data config names may live, in the order searched, each with where that is:
    itself when absolute (or ``~``); a relative one beside the config file (when the config came
    from a file), then under the data root."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return [(p, "as given")]
    beside = [(Path(os.path.abspath(Path(config_dir) / p)), "beside the config")] if config_dir is not None else []
    return beside + [(Path(os.path.abspath(Path(root).expanduser() / p)), "under the data root")]


def find_path(path: str, root: str | os.PathLike, config_dir: str | os.PathLike | None = None, *,
              folder: bool = False, what: str = "data path") -> Path:
    """The first of :func:`candidates` that exists (a folder when ``folder``, else a file); a
    :class:`DataError` naming every absolute path tried when none does."""
    tried = candidates(path, root, config_dir)
    for candidate, _ in tried:
        if candidate.is_dir() if folder else candidate.is_file():
            return candidate
    places = ", ".join(f"{c} ({where})" for c, where in tried)
    raise DataError(f"{path}: no such {'folder' if folder else 'file'} ({what}; looked at {places})")


def path_options(options: dict, patterns) -> list[tuple[tuple[str, ...], str]]:
    """``(keys, value)`` of every string in ``options`` (a dataset's raw options) at one of
    ``patterns``, dotted keys where ``*`` matches any key (``"text.*.tokenizer"``)."""
    found = []

    def walk(node, parts, keys):
        if not parts:
            if isinstance(node, str):
                found.append((keys, node))
            return
        if not isinstance(node, dict):
            return
        head, rest = parts[0], parts[1:]
        for key in (node if head == "*" else [head] if head in node else []):
            walk(node[key], rest, (*keys, key))

    for pattern in patterns:
        walk(options, pattern.split("."), ())
    return found


def replace_paths(options: dict, new: dict[tuple[str, ...], str]) -> dict:
    """A copy of ``options`` with the value at each key path of ``new`` replaced."""
    import copy

    out = copy.deepcopy(options)
    for keys, value in new.items():
        node = out
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return out
