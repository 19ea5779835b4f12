"""The README's Python example runs as written (with one epoch instead of many, on a fifth of the
real recordings)."""
import re
from pathlib import Path

import torch

torch.set_num_threads(1)
README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(fifth_data_root, capsys):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert "distill(" in block and "evaluate_model(" in block
    code = re.sub(r"epochs=\d+", "epochs=1", block)
    code = code.replace('DataConfig(name="av_digits", level="hard")',
                        f'DataConfig(name="av_digits", level="hard", root={str(fifth_data_root)!r})')
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "'accuracy'" in out and "'dropped': ['image']" in out


def test_readme_yaml_snippets_validate():
    """Every YAML snippet of the README is a valid part of a recipe (merged into the student's)."""
    import yaml

    from mmdistill.config import parse_config
    from mmdistill.demo import recipe

    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for block in blocks:
        parse_config(recipe("av_digits_student") | yaml.safe_load(block))
