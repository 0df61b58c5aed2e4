"""The vipmt library layer: the one model loader, the trainer's state, the image-size rule."""
import pytest
import torch

from config import ConfigError, check_image_size
from utils.checkpoint import CheckpointError, save_checkpoint
from vipmt.loading import load_trained_model
from vipmt.training import TrainerState

SIZE = (64, 64)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """One random model saved as our checkpoint (with its config) and as an authors' DDP file."""
    from models import VIPMT

    root = tmp_path_factory.mktemp("loading")
    torch.manual_seed(1)
    model = VIPMT(backbone_weights=None, image_size=SIZE)
    ours = save_checkpoint(str(root / "ours.pth"), model=model, epoch=3, config={"image_size": list(SIZE)})
    authors = root / "authors.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, authors)
    return model.state_dict(), ours, str(authors)


@pytest.mark.slow
def test_our_checkpoint_brings_its_image_size_and_config(model_files):
    weights, ours, _ = model_files
    loaded = load_trained_model(ours)
    assert loaded.model.image_size == SIZE and not loaded.model.training
    assert loaded.config == {"image_size": list(SIZE)}
    assert "ours, epoch 3" in loaded.description and ours in loaded.description
    assert all(torch.equal(v, weights[k]) for k, v in loaded.model.state_dict().items())


@pytest.mark.slow
def test_authors_file_loads_at_the_given_size_and_names_bad_sizes(model_files):
    weights, _, authors = model_files
    loaded = load_trained_model(authors, image_size=SIZE, device=torch.device("cpu"))
    assert loaded.config is None and "authors'" in loaded.description
    assert all(torch.equal(v, weights[k]) for k, v in loaded.model.state_dict().items())
    with pytest.raises(CheckpointError) as err:             # no saved config: the default 240x424
        load_trained_model(authors)
    assert "score_head.fc1.weight" in str(err.value) and "image_size=240,424" in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_trained_model(authors + ".missing")


def test_trainer_state_round_trip_inside_an_epoch():
    state = TrainerState(epoch=2, best_metric=0.25, best_epoch=1, history=[{"epoch": 1, "train_loss": 3.0}])
    state.memory_generator.manual_seed(5)
    for loss in (4.0, 2.0, 3.0):
        state.record_step({"loss": loss})
    assert (state.iteration, state.global_step) == (3, 3)
    assert state.running["loss"] == pytest.approx(3.0)
    saved = dict(state.state_dict(), world_size=1)
    expected_draw = torch.randperm(10, generator=state.memory_generator)
    expected_noise = torch.rand(3)                           # the global stream right after the save
    torch.manual_seed(123)                                   # streams move on before the resume

    resumed = TrainerState()
    resumed.load_state_dict(saved, rank=0, world_size=1)
    assert (resumed.epoch, resumed.iteration, resumed.global_step) == (2, 3, 3)
    assert (resumed.best_metric, resumed.best_epoch) == (0.25, 1) and resumed.history == state.history
    assert resumed.running == state.running
    resumed.start_epoch(seed=999)                            # continues the saved streams, not the seed
    assert torch.equal(torch.randperm(10, generator=resumed.memory_generator), expected_draw)
    assert torch.equal(torch.rand(3), expected_noise)
    record = resumed.finish_epoch()
    assert (resumed.epoch, resumed.iteration) == (3, 0) and record == {"epoch": 3, "train_loss": pytest.approx(3.0)}
    assert resumed.history[-1] is record


def test_trainer_state_restarts_the_epoch_with_another_world_size():
    state = TrainerState(epoch=1, iteration=2, global_step=6, running={"loss": 1.0})
    resumed = TrainerState()
    resumed.load_state_dict(dict(state.state_dict(), world_size=1), rank=0, world_size=2)
    assert (resumed.epoch, resumed.iteration, resumed.global_step) == (1, 0, 4)
    assert resumed.running == {} and resumed.resume_rng is None


def test_one_image_size_rule_matches_the_network():
    from config.config import FEATURE_STRIDE, MIN_IMAGE_SIDE
    from dataset import DatasetError, TestTransform
    from models import ModelError, VIPMT
    from models.heads import OUTPUT_STRIDE

    assert FEATURE_STRIDE == OUTPUT_STRIDE
    assert check_image_size([64, 112]) == (64, 112)
    for size in ((56, 112), (72, 100), ("a", 64), (64,)):
        with pytest.raises(ConfigError):
            check_image_size(size)
    with pytest.raises(DatasetError, match="multiple of 8"):
        TestTransform((64, 100))
    with pytest.raises(ModelError, match="at least 64"):
        VIPMT(backbone_weights=None, image_size=(MIN_IMAGE_SIDE - FEATURE_STRIDE, 64))
