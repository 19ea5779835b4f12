"""The pretrained teacher kind (resemblyzer's GE2E speaker encoder), offline.

The weights come from the installed ``resemblyzer`` wheel (``make test``'s set-up installs it with
``--no-deps``); these tests fail, not skip, without it. The package's own code is the reference
for the front end and the encoder: it is imported with a stand-in for ``webrtcvad`` (used only by
its silence trimming, which this project leaves out; see :mod:`mmdistill.data.ge2e`).
"""
import csv
import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from conftest import run_cli, write

torch.set_num_threads(1)
SPEAKERS = ("george", "jackson", "theo")


@pytest.fixture(scope="module")
def package(data_root):
    """resemblyzer's ``VoiceEncoder`` and audio functions, imported with a stand-in webrtcvad."""
    saved = {k: v for k, v in sys.modules.items() if k == "webrtcvad" or k.startswith("resemblyzer")}
    sys.modules.setdefault("webrtcvad", types.ModuleType("webrtcvad"))
    try:
        import resemblyzer
        from resemblyzer import audio, voice_encoder

        yield types.SimpleNamespace(encoder=voice_encoder.VoiceEncoder("cpu", verbose=False), audio=audio,
                                    VoiceEncoder=voice_encoder.VoiceEncoder, module=resemblyzer)
    finally:
        for k in [k for k in sys.modules if k == "webrtcvad" or k.startswith("resemblyzer")]:
            sys.modules.pop(k)
        sys.modules.update(saved)


def _clips(data_root, n=3):
    import librosa
    import soundfile

    paths = [data_root / "fsdd" / "recordings" / f"{d}_{s}_7.wav" for d, s in zip((0, 4, 9), SPEAKERS)][:n]
    out = []
    for p in paths:
        wave, rate = soundfile.read(p, dtype="float32")
        out.append(librosa.resample(wave, orig_sr=rate, target_sr=16000))
    return out


def test_weights_are_found_without_importing_the_package():
    """The weights file is read through the distribution's metadata: neither resemblyzer nor
    webrtcvad (not installed) is imported; the provenance names package, version, hash, licence."""
    code = ("import sys; from mmdistill.models.pretrained import load_resemblyzer; state, p = load_resemblyzer(); "
            "import json; print(json.dumps([p, sorted(k for k in sys.modules if k.startswith(('resemblyzer', "
            "'webrtcvad'))), sum(v.numel() for v in state.values())]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    provenance, imported, params = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == []
    assert params == 1_423_616
    assert provenance["package"] == "resemblyzer" and provenance["version"] == "0.1.4"
    assert provenance["sha256"] == "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
    assert provenance["known_file"] and "Apache" in provenance["licence"]


def test_front_end_and_embedding_equal_the_package(package, data_root):
    """On FSDD clips (shorter than the 1.6 s window) our mel frames are the package's
    ``wav_to_mel_spectrogram`` of the padded clip and our embedding its ``embed_utterance``
    (without its webrtcvad silence trimming), to float precision."""
    from mmdistill.data.ge2e import ge2e_mel
    from mmdistill.models.pretrained import GE2EEncoder, load_resemblyzer

    state, _ = load_resemblyzer()
    ours = GE2EEncoder()
    ours.load_state_dict(state)
    for wave in _clips(data_root):
        assert len(wave) < 25600
        normalised = package.audio.normalize_volume(wave, -30, increase_only=True)
        reference_mel = package.audio.wav_to_mel_spectrogram(np.pad(normalised, (0, 25600 - len(wave))))  # [T, 40]
        mel = ge2e_mel(wave)
        assert mel.shape == (40, 161)
        np.testing.assert_allclose(mel, reference_mel.T, rtol=1e-5, atol=1e-7)
        reference = package.encoder.embed_utterance(normalised)
        with torch.no_grad():
            embedding = ours(torch.from_numpy(mel)[None])[0].numpy()
        np.testing.assert_allclose(embedding, reference, atol=1e-5)
        assert float(embedding @ reference) > 0.99999


@pytest.mark.parametrize("frames", [50, 161, 201, 241, 301, 401, 1001])
def test_partial_windows_are_the_packages(package, frames):
    from mmdistill.models.pretrained import partial_windows

    _, mel_slices = package.VoiceEncoder.compute_partial_slices((frames - 1) * 160, 1.3, 0.75)
    assert partial_windows(frames) == [s.start for s in mel_slices]


def test_a_long_utterance_is_the_normalised_mean_of_its_windows(data_root):
    """Several windows: each embedded alone, their mean L2-normalised, as ``embed_utterance``."""
    from mmdistill.models.pretrained import GE2EEncoder, load_resemblyzer, partial_windows

    encoder = GE2EEncoder()
    encoder.load_state_dict(load_resemblyzer()[0])
    x = torch.rand(2, 40, 301)
    starts = partial_windows(301)
    assert len(starts) == 3  # 0, 77, 154: the package's slices of 3 s (tested above)
    with torch.no_grad():
        padded = torch.nn.functional.pad(x, (0, starts[-1] + 160 - 301))  # the last window reaches past the end
        each = [encoder.embed_windows(padded[:, :, s:s + 160].transpose(1, 2)) for s in starts]
        mean = torch.stack(each).mean(0)
        torch.testing.assert_close(encoder(x), mean / mean.norm(dim=1, keepdim=True))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, data_root):
    """24 FSDD clips of 3 speakers (digits 0 and 1, takes 0-3), take 0 the test split, labels = speakers."""
    folder = tmp_path_factory.mktemp("pretrained")
    rows = [{"wav": str(data_root / "fsdd" / "recordings" / f"{d}_{s}_{i}.wav"), "label": s,
             "split": "test" if i == 0 else "train"} for s in SPEAKERS for d in (0, 1) for i in range(4)]
    with open(folder / "m.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["wav", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "m.csv"


def _data(manifest):
    return {"name": "manifest", "path": str(manifest), "audio": {"sample_rate": 8000, "n_mels": 16, "frames": 16},
            "modalities": {"audio": {"column": "wav"}, "ge2e": {"column": "wav", "transform": "ge2e"}}}


TRAIN = {"batch_size": 8, "progress": False, "val_fraction": 0.25, "optimizer": {"lr": 0.01}}
STUDENT = {"encoders": {"audio": {"type": "conv", "channels": [4, 8]}}}


def test_whole_path_offline(manifest, tmp_path):
    """Teacher probe (CLI, YAML) -> checkpoint and export with provenance -> label-free embedding
    distillation (CLI, gamma 0, cosine; best epoch by the validation loss) -> fine-tuning with KD from
    the teacher's probe (API), at a tiny size."""
    from mmdistill import api
    from mmdistill.checkpoint import load_checkpoint, read_checkpoint
    from mmdistill.config import DataConfig, TrainConfig
    from mmdistill.data import build_data
    from mmdistill.models.pretrained import load_resemblyzer

    # the teacher's linear probe: only the head trains
    teacher_cfg = {"data": _data(manifest), "model": {"pretrained": "resemblyzer"}, "train": dict(TRAIN, epochs=3)}
    assert run_cli("train", write(tmp_path, "t.yaml", teacher_cfg), "--out", tmp_path / "t") == 0
    payload = read_checkpoint(tmp_path / "t" / "best.pt")
    assert payload["provenance"]["sha256"] == load_resemblyzer()[1]["sha256"]
    original, _ = load_resemblyzer()
    for k, v in original.items():
        assert torch.equal(payload["state_dict"][f"encoder.{k}"], v), f"encoder weight {k} changed while probing"
    teacher, _ = load_checkpoint(tmp_path / "t" / "best.pt")
    assert teacher.provenance["package"] == "resemblyzer"
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["accuracy"] >= 0.5  # 3 speakers, 6 test clips

    assert run_cli("export", tmp_path / "t" / "best.pt", "--out", tmp_path / "t-export") == 0
    model_json = json.loads((tmp_path / "t-export" / "model.json").read_text())
    assert model_json["provenance"]["sha256"] == payload["provenance"]["sha256"]
    assert model_json["provenance"]["licence"] == payload["provenance"]["licence"]
    assert "resemblyzer GE2E front end" in model_json["preprocessing"]["modalities"]["ge2e"]["description"]

    # embedding distillation, labels unused: gamma 0, cosine on the fused embedding (adapter 8 -> 256)
    student_cfg = {"data": _data(manifest), "model": STUDENT, "train": dict(TRAIN, epochs=4),
                   "distill": {"teacher": {"checkpoint": str(tmp_path / "t" / "best.pt")}, "gamma": 0.0,
                               "terms": [{"name": "cosine"}]}}
    assert run_cli("distill", write(tmp_path, "s.yaml", student_cfg), "--out", tmp_path / "s") == 0
    history = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert all("val_loss" in h and "val_accuracy" not in h for h in history)
    losses = [h["val_loss"] for h in history]
    best = json.loads((tmp_path / "s" / "summary.json").read_text())
    student, _ = load_checkpoint(tmp_path / "s" / "best.pt")
    best_epoch = read_checkpoint(tmp_path / "s" / "best.pt")["meta"]["epoch"]
    assert losses[best_epoch - 1] == min(losses) and best["student"]  # the best epoch is the lowest validation loss

    # fine-tuning with labels: CE + KD from the teacher's probe, through the API
    data = build_data(DataConfig.model_validate(_data(manifest)), val_fraction=0.25)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    fit = api.distill(student.train(), teacher, data, terms=[{"name": "kd", "temperature": 4.0}], gamma=1.0,
                      cfg=TrainConfig(**dict(TRAIN, epochs=2)), device="cpu")
    assert fit.best_epoch >= 1 and fit.best_val_accuracy is not None
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_label_free_selection_reads_the_validation_loss():
    """Unit: gamma 0 with feature terms only is label-free; any logit term or cross-entropy is not."""
    from mmdistill import api
    from mmdistill.distill.tasks import DistillationTask
    from mmdistill.models import build_model
    from mmdistill.data.dataset import ModalitySpec

    specs = {"x": ModalitySpec("x", "vector", (6,))}
    student = build_model({"encoders": {"x": {"type": "mlp", "hidden": [4]}}}, specs, 3, seed=0)
    teacher = build_model({"encoders": {"x": {"type": "mlp", "hidden": [8]}}}, specs, 3, seed=1)
    terms = lambda names: api.make_terms(names, student=student, teachers=[teacher])  # noqa: E731
    assert DistillationTask(student, teacher, terms(["cosine"]), gamma=0.0).label_free
    assert not DistillationTask(student, teacher, terms(["cosine"]), gamma=1.0).label_free
    assert not DistillationTask(student, teacher, terms(["cosine", "kd"]), gamma=0.0).label_free


def test_config_errors_name_the_key(manifest):
    from mmdistill.config import DataConfig
    from mmdistill.data import build_data
    from mmdistill.errors import ConfigError
    from mmdistill.models import build_model

    data = build_data(DataConfig.model_validate(_data(manifest)))
    with pytest.raises(ConfigError, match=r"^model\.pretrained: "):
        build_model({"pretrained": "wav2vec"}, data.specs, 3)
    with pytest.raises(ConfigError, match=r"^model\.modality: the data has no modality 'speech'"):
        build_model({"pretrained": "resemblyzer", "modality": "speech"}, data.specs, 3)
    with pytest.raises(ConfigError, match=r"^model\.modality: 'audio' has shape \[1, 16, 16\]"):
        build_model({"pretrained": "resemblyzer", "modality": "audio"}, data.specs, 3)
    with pytest.raises(ConfigError, match=r"^model\.rate: "):
        build_model({"pretrained": "resemblyzer", "rate": 0.1}, data.specs, 3)
    assert data.specs["ge2e"].shape == (40, 161) and data.specs["ge2e"].kind == "sequence"


def test_fsdd_speaker_labels(data_root):
    """``label: speaker``: 6 classes (speakers sorted by name), the same official split; a held-out
    speaker cannot be a class."""
    from mmdistill.data.fsdd import FSDDOptions, build_fsdd
    from mmdistill.data.fsdd import list_recordings
    from mmdistill.errors import DataError

    with pytest.raises(DataError, match="unseen-speaker"):
        build_fsdd(data_root, FSDDOptions(label="speaker", split="unseen-speaker"), 0)
    train, test, info = build_fsdd(data_root, FSDDOptions(label="speaker"), 0)
    assert info["classes"] == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    assert train.num_classes == 6 and (len(train), len(test)) == (2700, 300)
    recordings = [r for r in list_recordings(data_root) if r.index > 4]
    assert [info["classes"][int(y)] for y in train.labels[:5]] == [r.speaker for r in recordings[:5]]
