"""Every option of every config group composes, and what is cheap to build gets built: trainers, callbacks,
loggers, heads on the tiny GPT-2, backbones, datamodules. Options are read from conf/, so a new YAML file is
covered without a new test."""

import inspect
import random

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from transformers.activations import ACT2FN

from memlm.checkpointing import AtomicCheckpointIO
from memlm.config import check_config
from memlm.evaluation import EVAL_CONFIG, evaluate
from memlm.metrics import metric_name
from memlm.objectives import OBJECTIVES
from memlm.training import build, build_datamodule
from tests.conftest import CONF, REPO, TINY_GPT2, compose_train, write_background


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


GROUPS = sorted(path.name for path in CONF.iterdir() if path.is_dir())
# What an option cannot compose without: its mandatory (???) keys.
REQUIRED = {("experiment", "hmt_stage2"): ["stage1_checkpoint=x"], ("backbone", "hf"): ["backbone.name_or_path=x"]}
# The trainer arguments memlm fills from other groups and keys (logger, callbacks, run_dir), not from `trainer`.
SET_BY_MEMLM = {"logger", "callbacks", "default_root_dir"}
SMOLLM2 = REPO / ".cache" / "smollm2-135m"


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    """The training config with its `hydra` node, which holds a sweeper's settings."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def compose_eval(overrides: list[str]) -> DictConfig:
    """The config eval.py composes."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=EVAL_CONFIG, overrides=overrides)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One run directory for the module: the same overrides compose once (compose_train caches them)."""
    return tmp_path_factory.mktemp("run")


@pytest.mark.parametrize("group, option", [(group, option) for group in GROUPS for option in options(group)])
def test_every_option_composes_with_no_missing_value_and_resolves(group, option, run_dir):
    cfg = compose_train([f"{group}={option}", *REQUIRED.get((group, option), []), f"run_dir={run_dir}"])
    assert OmegaConf.missing_keys(cfg) == set()
    OmegaConf.resolve(cfg)
    check_config(cfg)


def test_trainer_config_lists_every_lightning_trainer_argument():
    arguments = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    assert set(compose_train([]).trainer) - {"_target_"} == arguments - SET_BY_MEMLM


def test_any_trainer_argument_is_accepted_and_a_misspelt_one_is_refused_by_name():
    assert compose_train(["trainer.fast_dev_run=true"]).trainer.fast_dev_run is True
    with pytest.raises(ConfigCompositionException, match="fast_dev_rn"):
        compose_train(["trainer.fast_dev_rn=true"])


def build_trainer(cfg: DictConfig, tmp_path) -> L.Trainer:
    return instantiate(cfg.trainer, logger=False, default_root_dir=tmp_path)


@pytest.mark.parametrize("option", options("trainer"))
def test_every_trainer_option_builds_a_trainer(option, tmp_path, run_dir):
    cfg = compose_train([f"trainer={option}", f"run_dir={run_dir}"])
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        # Lightning accepts the GPU options' bf16-mixed on CPU, so only the accelerator changes here.
        cfg.trainer.accelerator = "cpu"
    trainer = build_trainer(cfg, tmp_path)
    assert trainer.precision == (cfg.trainer.precision or "32-true")
    if OmegaConf.is_dict(cfg.trainer.strategy):
        assert isinstance(trainer.strategy, get_class(cfg.trainer.strategy._target_))
    if isinstance(cfg.trainer.devices, int):
        assert trainer.num_devices == cfg.trainer.devices
    # A run killed while saving must never leave a truncated last.ckpt, whatever the strategy.
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.parametrize("option", options("debug"))
def test_every_debug_option_builds_a_short_run(option, tmp_path, run_dir):
    trainer = build_trainer(compose_train([f"debug={option}", f"run_dir={run_dir}"]), tmp_path)
    assert trainer.fast_dev_run or 0 < trainer.max_steps <= 20


@pytest.mark.parametrize("option", options("callbacks"))
def test_every_callbacks_option_builds_lightning_callbacks(option, run_dir):
    cfg = compose_train([f"callbacks={option}", f"run_dir={run_dir}"])
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values() if callback is not None]
    assert callbacks and all(isinstance(callback, Callback) for callback in callbacks)


@pytest.mark.parametrize("option", options("logger"))
def test_every_logger_option_logs_into_the_run_dir(option, run_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train([f"logger={option}", f"run_dir={run_dir}"])
    loggers = [instantiate(logger) for logger in cfg.logger.values() if logger is not None]
    assert all(isinstance(logger, Logger) and logger.save_dir == str(run_dir) for logger in loggers)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values() if callback is not None]
    # Lightning refuses a learning-rate monitor without a logger.
    assert loggers or not any(isinstance(callback, LearningRateMonitor) for callback in callbacks)


@pytest.mark.parametrize("option", options("model"))
def test_every_head_runs_two_segments_on_the_tiny_backbone(option):
    cfg = compose_train([*TINY_GPT2, f"model={option}"])
    backbone = instantiate(cfg.backbone)
    head = instantiate(cfg.model, backbone=backbone)
    segment_length = cfg.data.segment_length
    head.check_fits(segment_length)
    input_ids = torch.randint(len(backbone.tokenizer), (2, segment_length))
    attention_mask = torch.ones_like(input_ids)
    with torch.no_grad():
        first = head(input_ids, attention_mask, head.initial_state(2))
        second = head(input_ids, attention_mask, first.state)
    assert second.token_states.shape == (2, segment_length, backbone.hidden_size)
    assert second.summary.shape == (2, backbone.hidden_size)


def check_backbone(overrides: list[str]) -> None:
    cfg = compose_train(overrides)
    backbone = instantiate(cfg.backbone)
    assert backbone.is_decoder == (cfg.backbone.kind == "causal")
    assert len(backbone.tokenizer) <= backbone.embedding.num_embeddings
    input_ids = torch.tensor([backbone.tokenizer("The house stood on a hill.")["input_ids"]])
    with torch.no_grad():
        hidden = backbone(backbone.embed(input_ids))
    assert hidden.shape == (1, input_ids.shape[1], backbone.hidden_size)


@pytest.mark.parametrize("option", ["tiny_gpt2", "tiny_bert"])
def test_tiny_backbones_load_and_run(option):
    check_backbone([f"backbone={option}"])


def test_the_tiny_gpt2s_fused_gelu_is_gpt2s_own_gelu():
    backbone = instantiate(compose_train(["backbone=tiny_gpt2"]).backbone)
    x = torch.linspace(-12, 12, 100_001)

    assert backbone.model.config.activation_function == "gelu_pytorch_tanh"
    torch.testing.assert_close(ACT2FN["gelu_pytorch_tanh"](x), ACT2FN["gelu_new"](x), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["backbone=smollm2"],
    ["backbone=minilm"],
    ["backbone=hf", f"backbone.name_or_path={SMOLLM2}"],
], ids=["smollm2", "minilm", "hf"])
def test_pretrained_backbones_load_and_run(overrides):
    check_backbone(overrides)


def test_every_backbone_option_is_tested():
    assert set(options("backbone")) == {"tiny_gpt2", "tiny_bert", "smollm2", "minilm", "hf"}


@pytest.mark.parametrize("option", options("hparams_search"))
def test_every_search_sweeps_existing_keys_and_optimises_a_validated_metric(option):
    cfg = compose_with_hydra([f"hparams_search={option}"])
    parser = OverridesParser.create()
    absent = object()
    for key, space in cfg.hydra.sweeper.params.items():
        assert OmegaConf.select(cfg, key, default=absent) is not absent, f"the search space names no key {key}"
        assert parser.parse_override(f"{key}={space}").is_sweep_override()
    assert cfg.optimized_metric in {metric_name("accuracy", n) for n in cfg.data.val_segments}


def test_eval_takes_any_data_key_and_refuses_a_misspelt_top_level_key():
    cfg = compose_eval(["ckpt_path=x", "data.background=/x", "data.task=detect"])
    assert cfg.data == {"background": "/x", "task": "detect"}
    with pytest.raises(ConfigCompositionException, match="lenghts"):
        compose_eval(["ckpt_path=x", "lenghts=[1,2]"])


def test_eval_refuses_a_keep_freed_memory_that_is_not_a_boolean():
    with pytest.raises(TypeError, match="keep_freed_memory='sometimes' must be true or false"):
        evaluate(compose_eval(["ckpt_path=x", "keep_freed_memory=sometimes"]))


def test_a_data_key_the_datamodule_lacks_is_refused_by_name(tmp_path):
    # What a checkpoint written by another version of memlm can hold: eval.py builds its data from the checkpoint.
    cfg = compose_train([*TINY_GPT2, "+data.planted_distractors=2", f"run_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"data.planted_distractors is not a setting of FactTaskDataModule, which "
                                         r"takes \[.*'task', 'background', .*'distractors'\]"):
        build_datamodule(cfg.data, None, is_decoder=True)


@pytest.mark.parametrize("option", options("data"))
def test_every_data_option_builds_its_datamodule_and_a_model_for_its_objective(option, tmp_path, background):
    # 48 tokens: a size no option has by default, to see the override reach the datamodule.
    cfg = compose_train([*TINY_GPT2, f"data={option}", "data.segment_length=48", "data.batch_size=2",
                         f"run_dir={tmp_path}"])
    if "background" in cfg.data:
        # The small generated books: tokenizing four Austen novels per option would take most of the test's time.
        cfg.data.background = str(background)
    if cfg.data.get("distractors"):
        # Distractors are background sentences that name an answer, and the generated books name none.
        books = write_background(tmp_path / "background")
        (books / "train" / "places.txt").write_text("The baker walked to the garden. The children sat in the kitchen.")
        cfg.data.background = str(books)
    datamodule, model = build(cfg)
    assert datamodule.segment_length == cfg.data.segment_length == 48
    assert datamodule.objective in datamodule.objectives
    assert isinstance(model.objective, OBJECTIVES[datamodule.objective])
    # The sample holds what the objective reads, shaped as the batch contract says.
    datamodule.prepare_data()
    sample = datamodule.training_maker().build(random.Random(0), 2)
    assert set(model.objective.batch_keys) <= set(sample)
    assert sample["input_ids"].shape == sample["attention_mask"].shape == (2, 48)
