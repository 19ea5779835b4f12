"""Ecosystem teachers and students (transformers, timm), derived modalities and text, offline.

The transformers models are tiny and randomly initialised, written with ``save_pretrained`` to a
temporary folder; the tokenizer is built from a generated vocabulary. Nothing is downloaded.
"""
import csv
import json

import numpy as np
import pytest
import torch

from conftest import run_cli, write

transformers = pytest.importorskip("transformers")

WORDS = ["zero", "one", "two", "the", "digit", "is", "said", "a"]
NAMES = ["zero", "one"]
RATE = 8000
AUDIO = {"sample_rate": RATE, "n_mels": 16, "frames": 16}


def _tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(folder)
    return len(vocab)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny BERT with its tokenizer, a tiny wav2vec2, and a text + audio manifest of 2 classes:
    a 300 Hz or 900 Hz tone in noise, with a sentence naming the class (one sample has no text)."""
    from transformers import BertConfig, BertModel, Wav2Vec2Config, Wav2Vec2Model

    root = tmp_path_factory.mktemp("eco")
    torch.manual_seed(0)
    vocab = _tokenizer(root / "bert")
    BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32)).save_pretrained(root / "bert")
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2),
                                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                                 vocab_size=8)).save_pretrained(root / "w2v")
    import soundfile

    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        y = i % 2
        t = np.arange(int(0.2 * RATE)) / RATE
        wave = 0.5 * np.sin(2 * np.pi * (300 if y == 0 else 900) * t) + 0.1 * rng.standard_normal(len(t))
        soundfile.write(root / f"s{i}.wav", wave.astype(np.float32), RATE)
        rows.append({"wav": f"s{i}.wav", "text": "" if i == 5 else f"the digit is {NAMES[y]}", "label": y,
                     "split": "test" if i >= 28 else "train"})
    with open(root / "m.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["wav", "text", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _data(root, **modalities):
    return {"name": "manifest", "path": str(root / "m.csv"), "audio": AUDIO, "modalities": modalities}


def _text(root, max_length=8):
    return {"column": "text", "transform": "text", "tokenizer": str(root / "bert"), "max_length": max_length}


TRAIN = {"epochs": 3, "batch_size": 8, "progress": False, "val_fraction": 0.0, "optimizer": {"lr": 0.01}}


def test_derived_modalities_from_one_column(assets):
    from mmdistill.config import DataConfig
    from mmdistill.data import build_data

    data = build_data(DataConfig.model_validate(_data(
        assets, audio={"column": "wav"}, waveform={"column": "wav", "transform": "waveform", "seconds": 0.25},
        text=_text(assets))))
    specs = data.specs
    assert (specs["audio"].kind, specs["audio"].shape) == ("audio", (1, 16, 16))
    assert (specs["waveform"].kind, specs["waveform"].shape) == ("waveform", (2000,))
    assert (specs["text"].kind, specs["text"].shape) == ("text", (2, 8))
    full = {m: torch.cat([data.train.modalities[m], data.test.modalities[m]]) for m in specs}
    # 0.2 s of audio in a 0.25 s window: zero-padded after 1600 samples, standardised before
    wave = full["waveform"][0]
    assert torch.all(wave[1600:] == wave[1600]) and abs(float(wave.mean())) < 1e-4
    assert float(wave.std()) == pytest.approx(1.0, abs=0.01)
    # "[CLS] the digit is zero [SEP]" then padding; the mask marks the six tokens
    first = data.train[0]["text"]
    assert first[1].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert first[0, 1:5].tolist() == [7, 8, 9, 4] and first[0, 6:].tolist() == [0, 0]
    # the sample with an empty text cell lacks the text modality only
    assert int((~data.train.present["text"]).sum()) == 1 and bool(data.train.present["audio"].all())
    assert data.info["modalities"]["waveform"]["column"] == "wav"


@pytest.mark.parametrize("modalities, message", [
    ({"w": {"column": "text", "transform": "waveform"}}, "column text: 'the digit is zero' is not a .wav"),
    ({"t": {"column": "text", "transform": "text"}}, "data.modalities.t.tokenizer: transform text needs"),
    ({"t": {"column": "nope"}}, "no column 'nope'"),
    ({"t": {"column": "wav", "tokenizer": "x"}}, "tokenizer: only used with transform: text"),
])
def test_derived_modality_errors(assets, tmp_path, capsys, modalities, message):
    cfg = {"data": _data(assets, **modalities), "model": {"encoders": {"a": {"type": "mlp"}}}}
    assert run_cli("train", write(tmp_path, "c.yaml", cfg), "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_text_encoder_ignores_padding():
    from mmdistill.models.encoders import TextEncoder

    torch.manual_seed(0)
    enc = TextEncoder((2, 6), buckets=16, dim=4, hidden=[3])
    x = torch.tensor([[[2, 5, 6, 3, 0, 0], [1, 1, 1, 1, 0, 0]]], dtype=torch.float32)
    other_padding = x.clone()
    other_padding[0, 0, 4:] = 9  # ids under a zero mask do not count
    assert torch.allclose(enc(x), enc(other_padding))
    changed = x.clone()
    changed[0, 0, 1] = 7
    assert not torch.allclose(enc(x), enc(changed))
    # the masked mean of the embeddings, by hand
    expected = enc.mlp(enc.embed.weight[[2, 5, 6, 3]].mean(0, keepdim=True))
    assert torch.allclose(enc(x), expected)


def test_hf_text_teacher_distilled_from_the_cli(assets, tmp_path):
    """A tiny BERT on the text modality as teacher; a conv + embedding-bag student on audio and text."""
    data = _data(assets, audio={"column": "wav"}, text=_text(assets))
    teacher = {"data": data, "model": {"hf": str(assets / "bert"), "modality": "text", "pooling": "mean"},
               "train": TRAIN}
    assert run_cli("train", write(tmp_path, "t.yaml", teacher), "--out", tmp_path / "t") == 0
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["model"]["accuracy"] == 1.0  # the sentence names the class

    student = {"data": data, "train": dict(TRAIN, epochs=2),
               "model": {"encoders": {"audio": {"type": "conv", "channels": [4]},
                                      "text": {"type": "text", "buckets": 16, "dim": 8}}},
               "distill": {"teacher": {"checkpoint": str(tmp_path / "t" / "best.pt")},
                           "terms": [{"name": "kd", "temperature": 2.0},
                                     {"name": "fitnet", "student": "encoders.text", "teacher": "pool",
                                      "weight": 0.1}]}}
    assert run_cli("distill", write(tmp_path, "s.yaml", student), "--out", tmp_path / "s") == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["student"]["params"] < summary["teacher"]["params"]
    assert summary["student"]["extra_params"] > 0  # the fitnet adapter 8 -> 32
    assert summary["student"]["accuracy"] >= 0.75

    # the teacher's checkpoint reloads weights-only and reproduces its accuracy
    assert run_cli("evaluate", tmp_path / "t" / "best.pt", "--out", tmp_path / "e", "--no-cost") == 0
    again = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert again["accuracy"] == pytest.approx(json.loads((tmp_path / "t" / "metrics.json").read_text())["accuracy"])


def test_wav2vec2_teacher_on_the_waveform_student_on_log_mel(assets, tmp_path):
    data = _data(assets, audio={"column": "wav"}, waveform={"column": "wav", "transform": "waveform",
                                                           "seconds": 0.25})
    teacher = {"data": data, "model": {"hf": str(assets / "w2v"), "modality": "waveform"},
               "train": dict(TRAIN, epochs=4, optimizer={"lr": 0.003})}
    assert run_cli("train", write(tmp_path, "t.yaml", teacher), "--out", tmp_path / "t") == 0
    student = {"data": data, "train": dict(TRAIN, epochs=6),
               "model": {"encoders": {"audio": {"type": "conv", "channels": [8, 8]}}},
               "distill": {"teacher": {"checkpoint": str(tmp_path / "t" / "best.pt")}}}
    assert run_cli("distill", write(tmp_path, "s.yaml", student), "--out", tmp_path / "s") == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["teacher"]["accuracy"] == 1.0 and summary["student"]["accuracy"] >= 0.75


def test_hf_feature_points_and_placements(assets):
    from mmdistill.config import DataConfig
    from mmdistill.data import build_data
    from mmdistill.distill.hooks import FeatureCapture
    from mmdistill.models import build_model, placements

    data = build_data(DataConfig.model_validate(_data(assets, audio={"column": "wav"}, text=_text(assets))))
    teacher = build_model({"hf": str(assets / "bert"), "modality": "text", "hidden_layers": [0, -1]}, data.specs, 2,
                          seed=0)
    points = [(p.path, p.kind, p.modality) for p in teacher.feature_points()]
    assert points == [("backbone.encoder.layer.0", "hidden", "text"), ("backbone.encoder.layer.1", "hidden", "text"),
                      ("pool", "embedding", "text")]
    student = build_model({"encoders": {"audio": {"type": "conv", "channels": [4]}, "text": {"type": "text"}}},
                          data.specs, 2, seed=0)
    assert placements("encoders", student, teacher) == [("encoders.text", "pool")]
    batch = data.train[list(range(4))]
    out = FeatureCapture(teacher, ["backbone.encoder.layer.1", "pool"]).run(teacher, batch)
    assert out["backbone.encoder.layer.1"].shape == (4, 8, 32) and out["pool"].shape == (4, 32)
    # mean pooling over the tokens the attention mask keeps: the pooled vector is ``pool``'s output
    teacher.eval()
    mean = build_model({"hf": str(assets / "bert"), "modality": "text", "pooling": "mean"}, data.specs, 2, seed=0).eval()
    with torch.no_grad():
        hidden = mean.backbone(input_ids=batch["text"][:, 0].long(),
                               attention_mask=batch["text"][:, 1].long()).last_hidden_state
        m = batch["text"][:, 1].unsqueeze(2)
        pooled = FeatureCapture(mean, ["pool"]).run(mean, batch)["pool"]
    assert torch.allclose(pooled, (hidden * m).sum(1) / m.sum(1), atol=1e-5)


def test_hf_config_errors(assets, tmp_path, capsys):
    data = _data(assets, audio={"column": "wav"}, text=_text(assets))
    cases = [({"hf": str(tmp_path / "nowhere"), "modality": "text"}, "model.hf: cannot load"),
             ({"hf": str(assets / "bert"), "modality": "audio"}, "declare a waveform modality"),
             ({"hf": str(assets / "bert"), "modality": "text", "pooling": "max"}, "model.pooling"),
             ({"hf": str(assets / "bert"), "modality": "txt"}, "model.modality: the data has no modality 'txt'"),
             ({"hf": str(assets / "bert"), "modality": "text", "hidden_layers": [5]}, "model.hidden_layers")]
    for model, message in cases:
        cfg = {"data": data, "model": model, "train": TRAIN}
        assert run_cli("train", write(tmp_path, "c.yaml", cfg), "--out", tmp_path / "run") == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (message, err)
    cfg = {"data": data, "model": {"encoders": {"text": {"type": "text"}}}, "train": dict(TRAIN, mixup=0.2)}
    assert run_cli("train", write(tmp_path, "c.yaml", cfg), "--out", tmp_path / "run") == 2
    assert "train.mixup: cannot mix the token ids of text modality 'text'" in capsys.readouterr().err


def test_npz_text_modality(assets, tmp_path):
    from mmdistill.config import DataConfig
    from mmdistill.data import build_data

    texts = np.array([f"the digit is {NAMES[i % 2]}" if i != 3 else "" for i in range(12)])
    np.savez(tmp_path / "d.npz", caption=texts, x=np.arange(12, dtype=np.float32)[:, None], label=np.arange(12) % 2)
    data = build_data(DataConfig.model_validate({
        "name": "npz", "path": str(tmp_path / "d.npz"),
        "text": {"caption": {"tokenizer": str(assets / "bert"), "max_length": 6}}}))
    assert data.specs["caption"].kind == "text" and data.specs["caption"].shape == (2, 6)
    full = torch.cat([data.train.present["caption"], data.test.present["caption"]])
    assert int((~full).sum()) == 1
    with pytest.raises(Exception, match="is named in text but is not strings"):
        build_data(DataConfig.model_validate({"name": "npz", "path": str(tmp_path / "d.npz"), "modalities": ["x"],
                                              "text": {"x": {"tokenizer": str(assets / "bert")}}}))


def test_fsdd_waveform_matches_the_recordings(data_root):
    """The derived waveform of FSDD is each recording, resampled, cut/padded and standardised."""
    import soundfile

    from mmdistill.config import DataConfig
    from mmdistill.data import build_data
    from mmdistill.data.fsdd import list_recordings

    data = build_data(DataConfig.model_validate({"name": "fsdd", "root": str(data_root),
                                                 "waveform": {"seconds": 0.5, "sample_rate": 8000}}))
    assert data.specs["waveform"].shape == (4000,) and data.specs["waveform"].kind == "waveform"
    assert data.specs["audio"].shape == (1, 32, 32)
    assert len(data.train) + len(data.test) == 3000
    recordings = [r for r in list_recordings(data_root) if r.index > 4]  # the official train split, in order
    wave, _ = soundfile.read(recordings[0].path, dtype="float32")
    wave = np.pad(wave, (0, max(0, 4000 - len(wave))))[:4000]
    expected = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
    assert np.allclose(data.train.modalities["waveform"][0].numpy(), expected, atol=1e-4)
    assert int(data.train.labels[0]) == recordings[0].digit


def _timm():
    try:
        import timm  # noqa: F401
    except Exception as err:  # ImportError, or a torchvision built for another torch
        pytest.skip(f"timm is not importable here ({type(err).__name__}: {(str(err).splitlines() or [''])[-1][:80]})")


@pytest.fixture
def mnist_npz(tmp_path, mnist10k):
    """400 real MNIST images (and 200 for test) as an .npz file."""
    x_train, y_train, x_test, y_test = mnist10k
    rng = np.random.default_rng(0)  # the files are sorted by class
    train, test = rng.permutation(len(y_train))[:400], rng.permutation(len(y_test))[:200]
    x = np.concatenate([x_train[train], x_test[test]]).reshape(-1, 1, 28, 28).astype(np.float32)
    y = np.concatenate([y_train[train], y_test[test]])
    split = np.array(["train"] * 400 + ["test"] * 200)
    np.savez(tmp_path / "mnist.npz", image=x, label=y, split=split)
    return tmp_path / "mnist.npz"


def test_timm_teacher_on_mnist(tmp_path, mnist_npz):
    """A timm test-size network as the image teacher, distilled into a small MLP student."""
    _timm()
    data = {"name": "npz", "path": str(mnist_npz), "kinds": {"image": "image"}}
    train = {"epochs": 3, "batch_size": 32, "progress": False, "val_fraction": 0.0, "optimizer": {"lr": 0.003}}
    teacher = {"data": data, "model": {"timm": "test_resnet"}, "train": train}
    assert run_cli("train", write(tmp_path, "t.yaml", teacher), "--out", tmp_path / "t") == 0
    t_summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert t_summary["model"]["accuracy"] > 0.3  # 10 classes, 200 test images: chance is 0.10 +- 0.02
    student = {"data": data, "train": dict(train, epochs=6),
               "model": {"encoders": {"image": {"type": "mlp", "hidden": [64]}}},
               "distill": {"teacher": {"checkpoint": str(tmp_path / "t" / "best.pt")},
                           "terms": [{"name": "kd"}, {"name": "fitnet", "student": "encoders.image",
                                                      "teacher": "embedding", "weight": 0.1}]}}
    assert run_cli("distill", write(tmp_path, "s.yaml", student), "--out", tmp_path / "s") == 0
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["student"]["accuracy"] > 0.3
    assert run_cli("evaluate", tmp_path / "t" / "best.pt", "--out", tmp_path / "e", "--no-cost") == 0
    again = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert again["accuracy"] == pytest.approx(json.loads((tmp_path / "t" / "metrics.json").read_text())["accuracy"])


def test_timm_points_and_local_checkpoint(tmp_path):
    _timm()
    import timm
    from safetensors.torch import save_file

    from mmdistill.data.dataset import ModalitySpec
    from mmdistill.errors import ConfigError
    from mmdistill.models import build_model

    specs = {"image": ModalitySpec("image", "image", (1, 28, 28))}
    model = build_model({"timm": "test_resnet"}, specs, 10, seed=0)
    kinds = {p.kind: p.path for p in model.feature_points()}
    assert kinds["map"].startswith("backbone.") and kinds["embedding"] == "embedding"
    batch = {"image": torch.randn(2, 1, 28, 28)}
    model.eval()
    assert torch.allclose(model(batch), model.backbone(batch["image"]), atol=1e-5)  # the split head is forward

    # a 1000-class checkpoint: every weight but the classifier is loaded
    source = timm.create_model("test_resnet", pretrained=False, num_classes=1000, in_chans=1)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = build_model({"timm": "test_resnet", "checkpoint": str(tmp_path / name)}, specs, 10, seed=1)
        own = loaded.backbone.state_dict()
        for key, value in source.state_dict().items():
            if own[key].shape == value.shape:
                assert torch.equal(own[key], value), key
    with pytest.raises(ConfigError, match="model.checkpoint: no such file"):
        build_model({"timm": "test_resnet", "checkpoint": str(tmp_path / "none.pt")}, specs, 10)
    with pytest.raises(ConfigError, match="model.timm: Unknown model"):
        build_model({"timm": "no_such_net"}, specs, 10)


def test_local_paths_are_recorded_absolute(assets, tmp_path, monkeypatch):
    """A relative model directory or checkpoint is stored absolute, so a checkpoint reloads from any folder."""
    from mmdistill.models.hf import HFModelConfig
    from mmdistill.models.timm import TimmModelConfig

    monkeypatch.chdir(assets)
    assert HFModelConfig(hf="bert", modality="text").hf == str((assets / "bert").resolve())
    assert HFModelConfig(hf="org/not-a-local-dir", modality="text").hf == "org/not-a-local-dir"  # a cache name
    (assets / "w.pt").write_bytes(b"")
    assert TimmModelConfig(timm="test_resnet", checkpoint="w.pt").checkpoint == str((assets / "w.pt").resolve())
