"""`python -m models.check_weights`: the downloaded backbone file is checked key by key."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from models.backbone import WEIGHTS_URL, Backbone
from models.check_weights import main
from utils.runtime import run_cli

from models import ModelError

ROOT = Path(__file__).resolve().parents[1]


def check(path, capsys):
    code = run_cli(main, [str(path)], (ModelError,))
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err.splitlines()


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A file laid out like the published resnet50_v2.pth: the backbone's tensors with random
    values, plus the ImageNet classifier and batch-norm counters the backbone ignores."""
    state = {k: torch.randn_like(v) for k, v in Backbone().body.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    state["bn1.num_batches_tracked"] = torch.tensor(0)
    path = tmp_path_factory.mktemp("weights") / "resnet50_v2.pth"
    torch.save(state, path)
    return path, state


def test_a_fitting_file_passes_with_exit_0(random_weights, capsys):
    path, _ = random_weights
    code, out, err = check(path, capsys)
    assert code == 0 and not err
    assert out[-1] == f"ok: {path} fits the deep-stem ResNet-50 (275 tensors)"
    assert any(line.startswith("ignored (3") and "fc.bias" in line for line in out)
    assert not any(line.startswith(("missing", "unexpected", "wrong shape")) for line in out)


@pytest.mark.slow
@pytest.mark.e2e
def test_the_command_line_entry_point(random_weights):
    path, _ = random_weights
    run = subprocess.run([sys.executable, "-m", "models.check_weights", str(path)], cwd=ROOT,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1].startswith("ok: ")


def test_a_broken_file_lists_every_bad_key_and_exits_1(random_weights, tmp_path, capsys):
    _, state = random_weights
    state = dict(state)
    del state["layer2.1.bn2.running_var"]
    state["layer4.2.conv3.weight"] = torch.zeros(2048, 256, 1, 1)
    state["head.weight"] = torch.zeros(3)
    broken = tmp_path / "broken.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, broken)
    code, out, err = check(broken, capsys)
    assert code == 1
    assert "missing: layer2.1.bn2.running_var" in out
    assert "unexpected: head.weight" in out
    assert "wrong shape: layer4.2.conv3.weight: file [2048, 256, 1, 1], expected [2048, 512, 1, 1]" in out
    assert len([line for line in out if line.startswith(("missing", "unexpected", "wrong shape"))]) == 3
    assert err == [f"error: {broken} does not fit the deep-stem ResNet-50 (1 missing, 1 unexpected, 1 wrong "
                   f"shape); expected the 'resnet50_v2.pth' of {WEIGHTS_URL} (see pretrain_model/README.md)"]


def test_torchvision_resnet50_is_recognised_as_the_wrong_file(tmp_path, capsys):
    path = tmp_path / "resnet50-torchvision.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    code, out, _ = check(path, capsys)
    assert code == 1
    assert "wrong shape: conv1.weight: file [64, 3, 7, 7], expected [64, 3, 3, 3]" in out
    assert "missing: conv3.weight" in out and "missing: bn2.running_mean" in out


def test_unreadable_and_absent_files_exit_2_with_one_line(random_weights, tmp_path, capsys):
    page = tmp_path / "resnet50_v2.pth"
    page.write_bytes(b"<!DOCTYPE html><html>Google Drive - virus scan warning</html>")
    code, out, err = check(page, capsys)
    assert code == 2 and not out and len(err) == 1
    assert err[0].startswith(f"error: cannot read backbone weights {page}: the file is an HTML page")
    assert WEIGHTS_URL in err[0]
    truncated = tmp_path / "partial.pth"
    truncated.write_bytes(random_weights[0].read_bytes()[:1_000_000])
    code, out, err = check(truncated, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: cannot read backbone weights {truncated}: not a readable PyTorch state dict "
                             f"(1000000 bytes; ")
    code, _, err = check(tmp_path / "absent.pth", capsys)
    assert code == 2 and err[0].startswith(f"error: backbone weights not found: {tmp_path / 'absent.pth'}")
