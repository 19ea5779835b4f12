"""Shared fixtures: the real data root (fails loudly when missing), a private cache, AV-Digits once."""
import os
from pathlib import Path

# One BLAS thread: the machines running the tests are small and shared, and OpenBLAS threads
# spinning next to torch's make an SVD 20x slower. Set before numpy/torch load their BLAS.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
try:  # numpy may already be imported (e.g. by a plugin): limit its pool at run time too
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
except ImportError:
    pass

REPO = Path(__file__).resolve().parents[1]


def synthetic_splits(train_size: int = 80, test_size: int = 20, val_fraction: float | None = 0.2):
    """The synthetic two-modality dataset as DataSplits, ``val_fraction`` of the training samples
    held out for validation (None: no validation split)."""
    from mmdistill.data import DATASETS, DataSplits, parse_options, split_validation

    options = parse_options("synthetic", {"train_size": train_size, "test_size": test_size})
    train_set, test_set, info = DATASETS.get("synthetic")(None, options, 0)
    val = None
    if val_fraction is not None:
        train_set, val = split_validation(train_set, val_fraction, seed=0)
    return DataSplits(train=train_set, val=val, test=test_set, info=info)


def write(tmp_path: Path, name: str, cfg: dict) -> Path:
    """``cfg`` as a YAML config file in ``tmp_path``."""
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args) -> int:
    """The ``mmdistill`` command line in-process; returns its exit code."""
    from mmdistill.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exit:
        return exit.code or 0
    return 0


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Derived features go to a session tmp dir unless MMDISTILL_CACHE is set (never the data root or ~)."""
    if os.environ.get("MMDISTILL_CACHE"):
        yield
        return
    os.environ["MMDISTILL_CACHE"] = str(tmp_path_factory.mktemp("mmdistill-cache"))
    yield
    os.environ.pop("MMDISTILL_CACHE", None)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """$MMDISTILL_DATA, else <repo>/../shared/data; a test that needs real data fails without it."""
    root = Path(os.environ.get("MMDISTILL_DATA") or REPO.parent / "shared" / "data").expanduser()
    missing = [p for p in ("fsdd/recordings", "mnist10k") if not (root / p).is_dir()]
    if missing:
        pytest.fail(f"real data missing: {', '.join(str(root / p) for p in missing)} not found. Point MMDISTILL_DATA "
                    f"at the folder holding fsdd/recordings/*.wav and mnist10k/{{0..9}}.json.gz", pytrace=False)
    return root


@pytest.fixture(scope="session")
def fifth_data_root(data_root, tmp_path_factory) -> Path:
    """A data root holding a fifth of the real FSDD (takes 0, 5, ..., 45 of every speaker and digit:
    60 test and 540 training recordings, every speaker) beside the whole mnist10k, as links into
    ``data_root``: for end-to-end protocol tests whose assertions do not depend on the data's
    size, at a fifth of the training cost."""
    from mmdistill.data.fsdd import list_recordings

    root = tmp_path_factory.mktemp("fifth-data")
    recordings = root / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for rec in list_recordings(data_root):  # the loader's own reading of {digit}_{speaker}_{index}.wav
        if rec.index % 5 == 0:
            (recordings / rec.path.name).symlink_to(rec.path.resolve())
    (root / "mnist10k").symlink_to((data_root / "mnist10k").resolve(), target_is_directory=True)
    assert len(list(recordings.iterdir())) == 600, "the FSDD release has 3,000 recordings, 50 takes each"
    return root


@pytest.fixture(scope="session")
def mnist10k(data_root):
    """(train_images, train_labels, test_images, test_labels) of the real 10k JSON subset."""
    from mmdistill.data.mnist import load_mnist

    *arrays, source = load_mnist(data_root, source="json10k")
    assert source == "json10k"
    return tuple(arrays)


@pytest.fixture(scope="session")
def av_clean(data_root):
    """AV-Digits, official split, clean level, pairing seed 0: (train, test, info). Built once."""
    from mmdistill.data.av_digits import load_av_digits

    return load_av_digits(data_root, split="official", level="clean", seed=0, mnist_source="json10k")
