"""The training loop (vipmt.training.Trainer) with the stand-in network and fake episodes (tests/standin.py):
it is handed its parts and builds none, runs the episode it is given, calls its hooks in order, and a
run stopped inside an epoch and resumed from its checkpoint ends bit-identical to an uninterrupted one."""
import dataclasses

import pytest
import torch

from config import apply_overrides, get_config
from standin import fake_training_data, use_standin
from utils.checkpoint import load_checkpoint
from utils.distributed import DistInfo
from vipmt.build import build_training_parts
from vipmt.checkpointer import CheckpointHook, Checkpointer
from vipmt.training import HookBase, Trainer, TrainingError

CPU = torch.device("cpu")
# Three 1-frame clips (clip 3 draws 1 memory frame of 2), 2 supports, batches of 2 different classes:
# 3 classes x 2 episodes = 3 steps per epoch.
SETTINGS = ["image_size=64,64", "query_frames=3", "clip_length=1", "memory_size=1", "support_shots=2",
            "batch_size=2", "epochs=2", "num_workers=0", "checkpoint_every_iters=0"]


def config(*overrides):
    return apply_overrides(get_config(), SETTINGS + list(overrides))


def standin_trainer(cfg, monkeypatch, hooks=(), checkpointer=None, episode=None, **standin_options):
    """A trainer of the stand-in network (built as a run builds its network: vipmt.build) on fake episodes;
    ``episode``: another training episode than train.py's."""
    use_standin(monkeypatch, **standin_options)
    parts = build_training_parts(cfg, DistInfo(), CPU, backbone_weights=None)
    if episode is not None:
        parts = dataclasses.replace(parts, episode=episode)
    return Trainer(cfg, device=CPU, parts=parts, data=fake_training_data(cfg), hooks=hooks, checkpointer=checkpointer)


class Recorder(HookBase):
    def __init__(self):
        self.calls = []

    def before_train(self, trainer):
        self.calls.append("before_train")

    def before_epoch(self, trainer):
        self.calls.append(f"before_epoch {trainer.state.epoch + 1}")

    def after_step(self, trainer, losses):
        self.calls.append(f"after_step {trainer.state.global_step}")

    def after_epoch(self, trainer, record):
        self.calls.append(f"after_epoch {record['epoch']}")

    def after_train(self, trainer):
        self.calls.append("after_train")


def test_the_trainer_is_handed_its_parts_and_builds_none():
    # it used to build the model, optimizer, data and hooks itself when they were not given
    with pytest.raises(TypeError, match="parts"):
        Trainer(config(), device=CPU)


def test_a_step_runs_the_episode_it_was_given(monkeypatch):
    from models.episode import train_episode

    seen = []

    def episode(module, *tensors_and_plans, backward):
        seen.append((module, [(plan.frames, plan.memory) for plan in tensors_and_plans[-1]]))
        return train_episode(module, *tensors_and_plans, backward=backward)

    trainer = standin_trainer(config(), monkeypatch, episode=episode)
    batch = next(iter(trainer.data.train_loader(0)))
    trainer.state.memory_generator.manual_seed(0)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.train_step(batch)
    assert len(seen) == 1 and seen[0][0] is trainer.train_module
    assert [frames for frames, _ in seen[0][1]] == [[0], [1], [2]] and seen[0][1][1][1] == [0]   # clip 2's memory
    assert set(result) == {"loss", "main", "aux", "contrast", "score"} and not result.skipped
    assert all(not torch.equal(p, q) for p, q in zip(trainer.model.parameters(), before))


def test_hooks_are_called_in_order_around_steps_and_epochs_and_after_a_failure(monkeypatch):
    recorder = Recorder()
    assert standin_trainer(config(), monkeypatch, hooks=[recorder]).fit() == "finished"
    assert recorder.calls == ["before_train", "before_epoch 1", "after_step 1", "after_step 2", "after_step 3",
                              "after_epoch 1", "before_epoch 2", "after_step 4", "after_step 5", "after_step 6",
                              "after_epoch 2", "after_train"]
    recorder = Recorder()
    trainer = standin_trainer(config(), monkeypatch, hooks=[recorder], nan_in_steps={2})
    with pytest.raises(TrainingError, match="non-finite loss .* iteration 2; .*no checkpoint is written"):
        trainer.fit()
    assert recorder.calls == ["before_train", "before_epoch 1", "after_step 1", "after_train"]


def _weights_and_moments(trainer):
    state = trainer.optimizer.state_dict()["state"]
    return ([p.detach().clone() for p in trainer.model.parameters()],
            [state[i][k].clone() for i in sorted(state) for k in ("exp_avg", "exp_avg_sq")])


@pytest.mark.parametrize("stop_after", [2, 3, 4])      # inside epoch 1, at its end, inside epoch 2
def test_a_run_stopped_and_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(monkeypatch, tmp_path,
                                                                                      stop_after):
    cfg = config()
    straight = standin_trainer(cfg, monkeypatch)
    assert straight.fit() == "finished"

    checkpointer = Checkpointer(str(tmp_path), DistInfo())
    first = standin_trainer(cfg, monkeypatch, hooks=[CheckpointHook(checkpointer)], checkpointer=checkpointer)
    assert first.fit(stop_after=stop_after) == "stopped"
    torch.manual_seed(123)                               # the streams move on before the resume
    resumed = standin_trainer(cfg, monkeypatch, hooks=[CheckpointHook(checkpointer)], checkpointer=checkpointer)
    checkpointer.restore(resumed, load_checkpoint(str(tmp_path / "last.pth")))
    assert resumed.state.global_step == stop_after
    assert resumed.fit() == "finished"

    for a, b in zip(*(_weights_and_moments(t) for t in (straight, resumed))):
        assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert [r["train_loss"] for r in resumed.state.history] == [r["train_loss"] for r in straight.state.history]
