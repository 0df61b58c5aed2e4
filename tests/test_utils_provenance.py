"""Runs record what produced them: library versions and the code's git commit."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml

from config import get_config, load_config_file, save_config
from utils.checkpoint import save_checkpoint
from utils.provenance import UNKNOWN, environment_info, git_state

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@needs_git
def test_git_state_reports_commit_and_tracked_edits_only(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    commit = git(tmp_path, "log", "-1", "--format=%H")
    assert git_state(tmp_path) == {"git_commit": commit, "git_dirty": False}
    (tmp_path / "outputs.txt").write_text("untracked run output\n")
    assert git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"git_commit": commit, "git_dirty": True}


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    assert git_state(tmp_path) == {"git_commit": UNKNOWN, "git_dirty": None}


def test_environment_info_names_the_versions_that_run():
    info = environment_info()
    assert info["torch"] == torch.__version__ and type(info["torch"]) is str
    assert info["cuda"] == torch.version.cuda
    assert info["numpy"] == np.__version__
    assert info["git_commit"] == UNKNOWN or re.fullmatch(r"[0-9a-f]{40}", info["git_commit"])


def test_config_files_record_the_environment_and_read_back_without_it(tmp_path):
    cfg = get_config()
    cfg.lr = 1e-3
    for name in ("config.yaml", "config.json"):
        path = save_config(cfg, str(tmp_path / name))
        raw = yaml.safe_load(open(path))   # JSON is YAML too
        assert raw["environment"]["torch"] == torch.__version__
        assert raw["environment"]["numpy"] == np.__version__
        assert raw["environment"]["git_commit"] == environment_info()["git_commit"]
        back = load_config_file(path)
        assert "environment" not in back and back.lr == 1e-3
    text = (tmp_path / "config.yaml").read_text()
    assert text.index("weight_decay:") < text.index("environment:")   # settings first, record last
    plain = save_config(cfg, str(tmp_path / "plain.yaml"), record_environment=False)
    assert "environment" not in yaml.safe_load(open(plain))


def test_checkpoints_record_the_environment(tmp_path):
    path = save_checkpoint(str(tmp_path / "c.pth"), model=torch.nn.Linear(2, 1), epoch=1)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["environment"] == environment_info()
    assert ckpt["environment"]["torch"] == torch.__version__ and "cuda" in ckpt["environment"]
