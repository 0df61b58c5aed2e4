"""bfloat16 on the CPU: detected from the CPU's flags, offered by a hint where it is native, warned
about where it is emulated, never switched on by itself (the default outputs stay float32's)."""
from __future__ import annotations

import logging

import pytest
import torch

from utils import runtime
from utils.runtime import bf16_advice, native_bf16_cpu

X86_AMX = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n"
X86_AVX512 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16 i8mm\n"
CPU = torch.device("cpu")


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return str(path)
    return write


def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, tmp_path):
    assert native_bf16_cpu(cpuinfo(X86_AMX)) == "amx_bf16"
    assert native_bf16_cpu(cpuinfo(X86_AVX512)) is None
    assert native_bf16_cpu(cpuinfo(ARM)) == "bf16"
    assert native_bf16_cpu(str(tmp_path / "absent")) is None          # not Linux: nothing known


def test_the_advice_is_a_hint_where_native_and_a_warning_where_emulated(cpuinfo, tmp_path):
    native, plain = cpuinfo(X86_AMX), str(tmp_path / "plain")
    (tmp_path / "plain").write_text(X86_AVX512)
    hint = bf16_advice(CPU, False, native)
    assert hint.startswith("this CPU computes bfloat16 natively (amx_bf16): bfloat16 autocast (predict.py --bf16")
    assert "float32 stays the default" in hint
    assert bf16_advice(CPU, True, native) is None                     # already on
    assert bf16_advice(CPU, False, plain) is None                     # nothing to gain
    assert "emulated there, slower than float32" in bf16_advice(CPU, True, plain)
    assert bf16_advice(CPU, True, str(tmp_path / "absent")) is None   # unknown CPU: no claim
    arm = cpuinfo(ARM)
    assert bf16_advice(CPU, False, arm) is None and bf16_advice(CPU, True, arm) is None   # native, not measured
    assert bf16_advice(torch.device("cuda", 0), False, native) is None


@pytest.mark.slow
def test_from_checkpoint_hints_once_and_keeps_float32(tmp_path, cpuinfo, monkeypatch, caplog):
    from helpers import reference_model
    from utils.checkpoint import save_weights
    from vipmt import Predictor

    path = str(tmp_path / "ours.pth")
    save_weights(path, model=reference_model(0, (64, 64)), epoch=1, config={"image_size": [64, 64]})
    monkeypatch.setattr(runtime, "CPUINFO", cpuinfo(X86_AMX))
    monkeypatch.setattr(runtime, "_ADVISED", set())
    with caplog.at_level(logging.INFO):
        predictors = [Predictor.from_checkpoint(path, device="cpu") for _ in range(2)]
    hints = [r for r in caplog.records if "computes bfloat16 natively" in r.getMessage()]
    assert len(hints) == 1 and hints[0].levelno == logging.INFO
    for predictor in predictors:
        assert predictor.settings()["bf16"] is False and predictor.segmenter.autocast_dtype is None
