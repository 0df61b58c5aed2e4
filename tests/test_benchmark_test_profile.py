"""benchmarks/test_profile.py: test.py's path timed per stage (--quick, tiny sizes)."""
from __future__ import annotations

import pytest

from benchmarks import test_profile


@pytest.mark.slow
def test_quick_profile_stages_add_up_to_the_run_time(capsys):
    report = test_profile.main(["--quick"])
    out = capsys.readouterr().out
    stages = report["stages"]
    for stage in ("backbone", "transformer (5 layers)", "read: JPEG decode", "letterbox + normalise",
                  "metrics (J, F, IoU, VC)", "result I/O (JSON, log)"):
        assert stages.get(stage, 0) > 0, f"stage {stage!r} was never timed"
    # exclusive times: their sum can neither exceed the wall time nor miss more than 10 % of it
    assert 0.9 <= sum(stages.values()) / report["total"] <= 1.0 + 1e-6
    assert report["frames"] == 6 and "| **total** |" in out and "s/frame" in out
