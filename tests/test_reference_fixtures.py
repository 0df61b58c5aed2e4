"""The repository's golden fixtures and case builder equal the authors' reference material.

Runs only where the reference folder sits beside the checkout (``<repo>/../shared/reference``,
as in CI; ``VIPMT_REFERENCE_DIR`` points elsewhere). A public clone has no such folder and
skips this module: its golden tests run on the copies in ``tests/fixtures``.
"""
from __future__ import annotations

import filecmp
import importlib.util
import os
from pathlib import Path

import pytest
import torch

import reference_cases

pytestmark = pytest.mark.golden
REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("VIPMT_REFERENCE_DIR") or REPO_ROOT.parent / "shared" / "reference")

needs_reference = pytest.mark.skipif(
    not (REFERENCE_DIR / "reference_case.py").is_file(),
    reason=f"no reference folder at {REFERENCE_DIR} (only CI and the development machines have it); "
           f"the golden tests use the copies in tests/fixtures")


@pytest.fixture(scope="module")
def authors():
    """The reference folder's own case builder, imported under a name of its own."""
    spec = importlib.util.spec_from_file_location("authors_reference_case", REFERENCE_DIR / "reference_case.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_reference
def test_every_reference_golden_file_is_copied_byte_identical():
    theirs = sorted(p.name for p in (REFERENCE_DIR / "golden").glob("*.npz"))
    ours = sorted(p.name for p in reference_cases.GOLDEN_DIR.glob("*.npz"))
    assert theirs, f"{REFERENCE_DIR / 'golden'} holds no .npz files"
    missing = [name for name in theirs if name not in ours]
    assert not missing, (f"golden files new in {REFERENCE_DIR / 'golden'}: {missing}; copy them into "
                         f"tests/fixtures/golden/ (cp {REFERENCE_DIR / 'golden'}/*.npz tests/fixtures/golden/)")
    different = [name for name in theirs
                 if not filecmp.cmp(REFERENCE_DIR / "golden" / name, reference_cases.GOLDEN_DIR / name, shallow=False)]
    assert not different, (f"golden files changed in {REFERENCE_DIR / 'golden'}: {different}; copy them again "
                           f"into tests/fixtures/golden/")
    extra = [name for name in ours if name not in theirs]
    assert not extra, (f"tests/fixtures/golden/ holds files the reference does not: {extra}; that folder is "
                       f"for the authors' outputs only")


@needs_reference
def test_state_dict_keys_file_is_identical():
    assert filecmp.cmp(REFERENCE_DIR / "state_dict_keys.tsv", reference_cases.KEYS_FILE, shallow=False), (
        f"{REFERENCE_DIR / 'state_dict_keys.tsv'} changed; copy it to tests/fixtures/state_dict_keys.tsv")


@needs_reference
@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.slow
def test_weights_equal_the_reference_builder(authors, seed):
    ours, theirs = reference_cases.reference_state_dict(seed), authors.reference_state_dict(seed)
    assert list(ours) == list(theirs)
    unequal = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not unequal, f"{len(unequal)} tensors differ, first: {unequal[:5]}"


@needs_reference
@pytest.mark.parametrize("seed, batch, query_frames, support_frames, size", [
    (1000, 1, 5, 5, (240, 424)),
    (1003, 2, 3, 7, (240, 424)),
    (42, 1, 1, 1, (64, 112)),
    (5, 3, 2, 0, (48, 40)),
])
def test_inputs_equal_the_reference_builder(authors, seed, batch, query_frames, support_frames, size):
    ours = reference_cases.reference_inputs(seed, batch, query_frames, support_frames, size=size)
    theirs = authors.reference_inputs(seed, batch, query_frames, support_frames, size=size)
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key


@needs_reference
def test_case_lists_names_and_golden_files_equal_the_reference_builder(authors):
    assert reference_cases.golden_cases() == authors.golden_cases()
    assert reference_cases.episode_cases() == authors.episode_cases()
    assert reference_cases.grads_cases() == authors.grads_cases()
    for case in authors.golden_cases():
        ours, theirs = reference_cases.golden_case(case), authors.golden_case(case)
        assert ours[:2] == theirs[:2], case
        assert all(torch.equal(ours[2][key], theirs[2][key]) for key in theirs[2]), case
    for case in authors.golden_cases() + authors.episode_cases():
        ours, theirs = reference_cases.load_golden(case), authors.load_golden(case)
        assert sorted(ours) == sorted(theirs), case
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), (case, key)
    for case in authors.episode_cases():
        ours, theirs = reference_cases.episode_case(case), authors.episode_case(case)
        assert ours[0] == theirs[0] and ours[2] == theirs[2], case
        assert all(torch.equal(ours[1][key], theirs[1][key]) for key in theirs[1]), case


# ---- the builder on its own (runs everywhere) ---------------------------------------------
def test_case_names_are_parsed_and_rejected():
    mode, seed, inputs = reference_cases.golden_case("eval_b2_q3_s7_seed4")
    assert (mode, seed) == ("eval", 4)
    assert tuple(inputs["query_img"].shape) == (2, 3, 3, 240, 424)
    assert tuple(inputs["support_mask"].shape) == (2, 7, 1, 240, 424)
    with pytest.raises(ValueError, match="not a golden case name"):
        reference_cases.golden_case("episode_b2_q15_s5")


def test_golden_files_load_as_tensors_and_names():
    episode = reference_cases.load_golden("eval_b1_q5_s5")
    assert episode["pred"].dtype == torch.int64 and tuple(episode["pred"].shape) == (1, 5, 240, 424)
    assert set(episode["pred"].unique().tolist()) == {0, 1}
    assert "pred_bits" not in episode and "pred_shape" not in episode
    grads = reference_cases.load_golden("grads_episode_b2_q15_s5")
    assert len(grads["names"]) == 290 and {"upsample1.weight", "upsample2.weight"} <= set(grads["names"])
    assert tuple(grads["upsample1_grad"].shape) == (2, 1, 9, 9)


def test_classifier_heads_are_antisymmetric_and_upsamplers_box_filters():
    state = reference_cases.reference_state_dict(3)
    for head in reference_cases.ANTISYMMETRIC_HEADS:
        weight = state[f"{head}.weight"]
        assert torch.equal(weight[1], -weight[0]) and abs(weight[0].mean().item()) < 1e-6
        assert not state[f"{head}.bias"].any()
    assert torch.equal(state["upsample1.weight"], torch.full((2, 1, 9, 9), 1 / 81))
