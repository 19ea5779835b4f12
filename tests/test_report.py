"""``mmdistill report``: sections from real run directories, one self-contained file, a page that
renders in a browser; confusion matrices in metrics.json; TensorBoard event files via train.log."""
import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch

from mmdistill.cli import main
from mmdistill.config import parse_config
from mmdistill.errors import ConfigError, MMDistillError
from mmdistill.evaluate.metrics import confusion_matrix, per_class_accuracy
from mmdistill.report import collect, write_report
from mmdistill.report import figures
from mmdistill.runs import run_distill, run_evaluate, run_train

torch.set_num_threads(1)

TEACHER = {
    "seed": 0, "device": "cpu",
    "data": {"name": "synthetic", "train_size": 240, "test_size": 80},
    "model": {"encoders": {"image": {"type": "conv", "channels": [8]}, "audio": {"type": "conv", "channels": [8]}},
              "fusion": {"type": "attention", "dim": 16}},
    "train": {"epochs": 2, "batch_size": 64, "progress": False, "val_fraction": 0.2, "optimizer": {"lr": 0.01},
              "log": ["tensorboard"]},
}


def student(checkpoint) -> dict:
    cfg = json.loads(json.dumps(TEACHER))
    cfg["model"] = {"encoders": {"image": {"type": "conv", "channels": [4]}, "audio": {"type": "conv", "channels": [4]}}}
    cfg["train"]["log"] = []
    cfg["distill"] = {"teacher": {"checkpoint": str(checkpoint)}, "gamma": 0.5,
                      "terms": [{"name": "kd", "weight": 1.0, "temperature": 4.0},
                                {"name": "fitnet", "weight": 0.1, "student": "encoders.audio", "teacher": "encoders.audio"}]}
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-epoch teacher (with TensorBoard), a distilled student, and an all-subsets evaluation."""
    root = tmp_path_factory.mktemp("runs")
    pytest.importorskip("tensorboard", reason="pip install 'mmdistill[tensorboard]' (part of the dev extra)")
    run_train(parse_config(TEACHER), root / "teacher", role="teacher")  # as the demo records its teacher
    run_distill(parse_config(student(root / "teacher" / "best.pt")), root / "student")
    run_evaluate(root / "student" / "best.pt", root / "eval", all_subsets=True)
    return root


@pytest.fixture(scope="module")
def report(runs):
    """The report of the three runs, rendered once."""
    return write_report([runs / "teacher", runs / "student", runs / "eval"], runs / "report.html")


class Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags, self.ids = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href", "srcset", "data", "action", "poster"):
                self.refs.append((tag, key, value))
            if key == "id":
                self.ids.append(value)


def parse(html: str) -> Refs:
    parser = Refs()
    parser.feed(html)
    return parser


def test_metrics_json_holds_a_confusion_matrix_consistent_with_accuracy(runs):
    metrics = json.loads((runs / "student" / "metrics.json").read_text())
    confusion = metrics["confusion"]
    assert len(confusion) == 10 and all(len(row) == 10 for row in confusion)
    assert sum(map(sum, confusion)) == metrics["samples"]
    assert sum(confusion[i][i] for i in range(10)) / metrics["samples"] == pytest.approx(metrics["accuracy"])
    assert metrics["per_class_accuracy"] == per_class_accuracy(confusion)


def test_confusion_matrix_by_hand():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]])
    labels = torch.tensor([0, 1, 1, 1])
    assert confusion_matrix(logits, labels) == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert per_class_accuracy(confusion_matrix(logits, labels)) == [1.0, pytest.approx(1 / 3), None]


def test_report_has_every_section_and_no_external_reference(runs, report):
    html = report.read_text()
    page = parse(html)
    assert {"cost", "curves", "confusion", "subsets"} <= set(page.ids)
    # one file: every src is an embedded PNG that decodes, every href an anchor in the page
    from PIL import Image

    srcs = [v for tag, key, v in page.refs if key == "src"]
    assert len(srcs) == 1 + 2 + 3 + 1 + 1  # overlay, 2 curves, 3 confusions, per-class, subsets
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert all(v.startswith("#") and v[1:] in page.ids for tag, key, v in page.refs if key == "href")
    assert not {"link", "script", "iframe"} & set(page.tags) and "url(" not in html and "@import" not in html
    # the cost table compares the student with the teacher the distill run names
    assert "reference" in html and "fewer params" in html
    teacher = json.loads((runs / "teacher" / "metrics.json").read_text())
    assert f"{teacher['params']:,}" in html


def test_training_curves_plot_every_loss_term(runs):
    (teacher, student, _), _ = collect([runs / "teacher", runs / "student", runs / "eval"])
    assert (teacher.role, student.role) == ("teacher", "student (distilled)")
    fig = figures.curves(student)
    loss_ax, acc_ax = fig.axes
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["total", "ce", "kd", "fitnet"]
    assert all(len(line.get_xdata()) == 2 for line in loss_ax.get_lines()[:4])
    labels = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert labels[:2] == ["train", "validation"] and labels[2].startswith("test ")


def test_a_folder_of_runs_is_read_like_the_demo_with_its_summary_cost_fields(runs, tmp_path):
    demo = tmp_path / "demo"
    for name, src in (("teacher", "teacher"), ("student_distilled", "student")):
        shutil.copytree(runs / src, demo / name)
    summary = {"dataset": "synthetic", "synthetic": True, "gap_closed": 0.5,
               "teacher": {"macs": 4_400_000, "onnx_ms_b1": 0.107}, "student_distilled": {"macs": 210_000}}
    (demo / "summary.json").write_text(json.dumps(summary))
    html = write_report([demo], tmp_path / "r.html").read_text()
    assert "4.40 M" in html and "0.107" in html and "0.21 M" in html and "21.0× fewer MACs" in html
    assert "synthetic" in html and "50.0%" in html
    assert html.index("teacher") < html.index("student_distilled")


def test_report_errors_name_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MMDistillError, match="empty: not a run directory"):
        write_report([tmp_path / "empty"], tmp_path / "r.html")
    with pytest.raises(MMDistillError, match="missing: no such run directory"):
        write_report([tmp_path / "missing"], tmp_path / "r.html")
    with pytest.raises(SystemExit) as exit:
        main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html")])
    assert exit.value.code == 2 and not (tmp_path / "r.html").exists()


def test_cli_report(runs, tmp_path):
    main(["report", str(runs / "student"), "--out", str(tmp_path / "r.html")])
    assert "teacher of student" in (tmp_path / "r.html").read_text()  # its teacher was not given


def test_tensorboard_event_files_hold_the_epoch_metrics(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((runs / "teacher" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    events = EventAccumulator(str(files[0]))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss/total", "loss/ce", "accuracy/train", "accuracy/val", "other/lr"} <= set(tags)
    history = [json.loads(line) for line in (runs / "teacher" / "metrics.jsonl").read_text().splitlines()]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("accuracy/val")] == [
        (r["epoch"], pytest.approx(r["val_accuracy"])) for r in history]
    assert not (runs / "student" / "tensorboard").exists()  # not asked for


def test_train_log_is_validated(monkeypatch):
    bad = dict(TEACHER, train={"log": ["wandb"]})
    with pytest.raises(ConfigError, match=r"train\.log\[0\]"):
        parse_config(bad)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train\.log: tensorboard is not installed; pip install"):
        parse_config(dict(TEACHER, train={"log": ["tensorboard"]}))


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not found: install it with "
                                                "`apt-get install -y chromium` (Debian) to render the report")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image, ImageStat

    out = report
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2000", out.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    gray = image.convert("L")
    assert ImageStat.Stat(gray).stddev[0] > 20  # not a blank page
    # the page shows figures: many distinct colours, and dark text in the top band (the title)
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 200
    assert gray.crop((0, 0, 1200, 120)).getextrema()[0] < 60
