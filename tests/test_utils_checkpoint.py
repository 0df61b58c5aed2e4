"""Atomic writes, checkpoint round trips, RNG state, and loading the authors' format."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from utils.checkpoint import (CheckpointError, capture_rng_state, corruption_reason, is_resumable, load_checkpoint,
                              load_model_state, restore_rng_state, save_checkpoint, save_weights)
from utils.fileio import atomic_copy, atomic_write, atomic_write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)
        self.register_buffer("running", torch.zeros(2))


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(str(path), "old content")

    def half_then_crash(f):
        f.write(b"new con")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(str(path), half_then_crash)
    assert path.read_text() == "old content"
    assert os.listdir(tmp_path) == ["out.txt"]   # no temporary file left behind


def test_kill_9_during_checkpoint_write_never_leaves_a_truncated_file(tmp_path):
    path = tmp_path / "ckpt.pth"
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {REPO!r})
        from utils.fileio import atomic_torch_save
        i = 0
        while True:
            atomic_torch_save({{"i": i, "w": torch.full((4_000_000,), float(i))}}, {str(path)!r})
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)                          # kill in the middle of some later write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = torch.load(str(path), weights_only=True)
    assert torch.all(ckpt["w"] == float(ckpt["i"]))


def test_rng_state_round_trip():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_checkpoint_round_trip_is_self_describing(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.head(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = save_checkpoint(str(tmp_path / "c.pth"), model=model, optimizer=opt, epoch=3, iteration=7,
                           config={"lr": 1e-3, "image_size": (64, 112)}, best_metric=0.5, best_epoch=2,
                           sampler_state={"epoch": 3, "seed": 42})
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "vipmt-checkpoint" and ckpt["epoch"] == 3 and ckpt["iteration"] == 7
    assert ckpt["config"] == {"lr": 1e-3, "image_size": [64, 112]}
    assert ckpt["best_metric"] == 0.5 and ckpt["best_epoch"] == 2 and ckpt["sampler"]["seed"] == 42
    other = Tiny()
    load_model_state(other, ckpt["state_dict"])
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    opt2 = torch.optim.Adam(other.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])
    restored, original = opt2.state_dict()["state"], opt.state_dict()["state"]
    assert sorted(restored) == sorted(original) == [2, 3]          # head.weight, head.bias
    assert torch.equal(restored[2]["exp_avg"], original[2]["exp_avg"])
    restore_rng_state(ckpt["rng"][0])          # the stored RNG state is usable


def test_weights_only_checkpoint_holds_model_config_and_epoch_only(tmp_path):
    full = _real_checkpoint(tmp_path / "full.pth")
    model = Tiny()
    load_model_state(model, load_checkpoint(full)["state_dict"])
    path = save_weights(str(tmp_path / "epoch_010.pth"), model=model, epoch=10, config={"lr": 1e-3},
                        best_metric=0.25, best_epoch=9)
    raw = torch.load(path, weights_only=True)
    assert sorted(raw) == ["best_epoch", "best_metric", "config", "contents", "epoch", "format", "integrity",
                           "metrics", "state_dict", "version"]
    assert raw["contents"] == "weights" and raw["epoch"] == 10 and raw["config"] == {"lr": 1e-3}
    assert torch.load(full, weights_only=True)["contents"] == "full"
    ckpt = load_checkpoint(path)
    assert not is_resumable(ckpt) and is_resumable(load_checkpoint(full))
    other = Tiny()
    load_model_state(other, ckpt["state_dict"])
    assert all(torch.equal(other.state_dict()[k], v) for k, v in model.state_dict().items())
    assert os.path.getsize(path) < os.path.getsize(full)     # no Adam moments, no RNG states


def test_authors_format_with_module_prefix(tmp_path):
    model = Tiny()
    sd = OrderedDict(("module." + k, torch.randn_like(v)) for k, v in model.state_dict().items())
    torch.save({"state_dict": sd, "epoch": 99}, tmp_path / "authors.pth")
    ckpt = load_checkpoint(str(tmp_path / "authors.pth"))
    load_model_state(model, ckpt["state_dict"])
    assert torch.equal(model.head.weight, sd["module.head.weight"])
    torch.save(model.state_dict(), tmp_path / "bare.pth")   # a bare state dict works too
    assert set(load_checkpoint(str(tmp_path / "bare.pth"))["state_dict"]) == set(model.state_dict())


def test_wrong_keys_are_named_in_one_error():
    model = Tiny()
    sd = OrderedDict(model.state_dict())
    del sd["conv.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["head.weight"] = torch.zeros(3, 4)
    with pytest.raises(CheckpointError) as err:
        load_model_state(model, sd, source="checkpoint 'x.pth'")
    msg = str(err.value)
    assert "x.pth" in msg and "missing 1: conv.bias" in msg and "unexpected 1: extra.weight" in msg
    assert "head.weight (file (3, 4), model (2, 4))" in msg


def test_missing_truncated_and_unsafe_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    good = tmp_path / "good.pth"
    torch.save({"state_dict": Tiny().state_dict()}, good)
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="trunc.pth.*corrupt or truncated"):
        load_checkpoint(str(truncated))
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": Tiny().state_dict(), "args": Tiny}, unsafe)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(str(unsafe))
    assert "state_dict" in load_checkpoint(str(unsafe), trusted=True)
    torch.save({"weights": [1, 2]}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no 'state_dict'.*weights"):
        load_checkpoint(str(tmp_path / "other.pth"))


def _real_checkpoint(path):
    """One of our checkpoints (model, Adam state, RNG, config), as train.py writes them."""
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.head(model.conv(torch.randn(1, 3, 5, 5)).mean((2, 3))).sum().backward()
    opt.step()
    return save_checkpoint(str(path), model=model, optimizer=opt, epoch=1, config={"lr": 1e-3})


def _assert_corrupt(path, fragment):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path))
    message = str(err.value)
    assert f"checkpoint {str(path)!r} is corrupt or truncated" in message and fragment in message
    assert "--trust-checkpoint" not in message and "other than tensors" not in message


@pytest.mark.parametrize("keep", [0.5, 0.99, 100])
def test_truncated_checkpoint_is_diagnosed_as_truncated(tmp_path, keep):
    data = open(_real_checkpoint(tmp_path / "full.pth"), "rb").read()
    cut = int(len(data) * keep) if keep < 1 else keep
    (tmp_path / "cut.pth").write_bytes(data[:cut])
    _assert_corrupt(tmp_path / "cut.pth", f"the file ({cut} bytes) was cut short")


def test_random_bytes_and_empty_files_are_diagnosed_as_corrupt(tmp_path):
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(50_000))
    _assert_corrupt(tmp_path / "noise.pth", "neither a zip archive nor a pickle stream")
    (tmp_path / "empty.pth").write_bytes(b"")
    _assert_corrupt(tmp_path / "empty.pth", "the file is empty (0 bytes)")


def test_legacy_format_truncated_or_unsafe(tmp_path):
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": Tiny().state_dict()}, legacy, _use_new_zipfile_serialization=False)
    assert corruption_reason(str(legacy)) is None and "state_dict" in load_checkpoint(str(legacy))
    data = legacy.read_bytes()
    for cut in (len(data) - 8, 60):         # inside the storages; inside the object record
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        _assert_corrupt(tmp_path / "cut.pth", "")
    unsafe = tmp_path / "unsafe_legacy.pth"
    torch.save({"state_dict": Tiny().state_dict(), "args": Tiny}, unsafe, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(str(unsafe))


def test_damaged_archive_member_is_found_by_its_crc(tmp_path):
    path = _real_checkpoint(tmp_path / "c.pth")
    assert corruption_reason(path) is None
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF            # a flipped byte inside a tensor: torch.load does not notice
    (tmp_path / "flipped.pth").write_bytes(bytes(data))
    assert "fails its CRC check" in corruption_reason(str(tmp_path / "flipped.pth"))


def test_atomic_copy_is_a_snapshot(tmp_path):
    src, dst = tmp_path / "last.pth", tmp_path / "best.pth"
    atomic_write_text(str(src), "epoch 1")
    atomic_copy(str(src), str(dst))
    atomic_write_text(str(src), "epoch 2")       # replacing the source leaves the copy alone
    assert dst.read_text() == "epoch 1" and src.read_text() == "epoch 2"
    atomic_copy(str(src), str(dst))               # and a copy can replace an older one
    assert dst.read_text() == "epoch 2"
    assert sorted(os.listdir(tmp_path)) == ["best.pth", "last.pth"]


def test_remove_stale_temporaries_deletes_only_interrupted_writes(tmp_path):
    from utils.runlock import remove_stale_temporaries

    atomic_write_text(str(tmp_path / "config.yaml"), "a: 1\n")
    stale = [".last.pth.tmp4242_0123abcd", ".config.yaml.tmp7_ffffffff"]
    kept = ["last.pth", ".hidden", ".notes.tmp", "config.yaml"]
    for name in stale + kept[:3]:
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temporaries(str(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [".lock"])   # the run lock's file


# ---- integrity (issue 20) ------------------------------------------------------------------
def _overwrite_tensor_on_disk(path, tensor: torch.Tensor, value: float = 3e38) -> None:
    """Overwrite the first element of ``tensor``'s bytes inside the file ``path`` (as bit rot would)."""
    data = bytearray(open(path, "rb").read())
    at = data.find(tensor.detach().numpy().tobytes())
    assert at >= 0 and data.find(tensor.detach().numpy().tobytes(), at + 1) < 0
    data[at:at + 4] = np.float32(value).tobytes()
    open(path, "wb").write(bytes(data))


def _trained_tiny():
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.head(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


def test_a_tensor_changed_on_disk_is_named_on_load(tmp_path):
    model, opt = _trained_tiny()
    path = save_checkpoint(str(tmp_path / "c.pth"), model=model, optimizer=opt, epoch=1)
    assert load_checkpoint(path)["epoch"] == 1                          # intact: loads
    _overwrite_tensor_on_disk(path, model.head.weight)
    with pytest.raises(CheckpointError, match="tensor 'state_dict.head.weight' differs from the SHA-256"):
        load_checkpoint(path)
    weights = save_weights(str(tmp_path / "w.pth"), model=model, epoch=1)
    _overwrite_tensor_on_disk(weights, model.conv.bias)
    with pytest.raises(CheckpointError, match="tensor 'state_dict.conv.bias'"):
        load_checkpoint(weights)
    path = save_checkpoint(str(tmp_path / "o.pth"), model=model, optimizer=opt, epoch=1)
    _overwrite_tensor_on_disk(path, opt.state_dict()["state"][2]["exp_avg"])    # resuming would spread it
    with pytest.raises(CheckpointError, match="tensor 'optimizer.state.2.exp_avg'"):
        load_checkpoint(path)


def test_authors_file_without_record_is_checked_by_crc_and_for_non_finite_values(tmp_path):
    model, _ = _trained_tiny()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "authors.pth")
    assert set(load_checkpoint(str(tmp_path / "authors.pth"))["state_dict"]) == set(model.state_dict())
    _overwrite_tensor_on_disk(tmp_path / "authors.pth", model.head.weight)
    with pytest.raises(CheckpointError, match="is corrupt: archive member .* fails its CRC check"):
        load_checkpoint(str(tmp_path / "authors.pth"))
    broken = {k: v.clone() for k, v in model.state_dict().items()}
    broken["conv.weight"][0, 0, 0, 0] = float("nan")
    torch.save({"state_dict": broken}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="parameter 'conv.weight' holds 1 non-finite value"):
        load_checkpoint(str(tmp_path / "nan.pth"))
    with torch.no_grad():
        model.head.bias.fill_(float("inf"))
    path = save_weights(str(tmp_path / "ours_inf.pth"), model=model, epoch=1)     # intact record, inf weights
    with pytest.raises(CheckpointError, match="parameter 'head.bias' holds 2 non-finite"):
        load_checkpoint(path)


def test_a_directory_is_named_as_a_directory(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is a directory; expected a checkpoint file \(it holds best.pth\)"):
        load_checkpoint(str(tmp_path / "run"))
