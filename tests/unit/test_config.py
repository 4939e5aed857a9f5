"""The config tree: files, dotted overrides, type and relation checks, rendering."""

import tomllib

import pytest

from swarmgrpo.core.configtree import load_config, parse_override, render_toml
from swarmgrpo.core.errors import ConfigError, UserError
from swarmgrpo.trainer.config import TrainConfig


def test_defaults_resolve_and_round_trip_through_toml(tmp_path):
    cfg = load_config(TrainConfig)
    text = render_toml(cfg)
    assert "# G: completions sampled per prompt" in text  # field docstrings become comments
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert load_config(TrainConfig, path) == cfg


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'learning_rate = 3e-6\n[task]\nname = "countdown"\nreward_weights = { correctness = 1.0 }\n'
    )
    cfg = load_config(TrainConfig, path, ["task.level=2", "epsilon_high=0.28", "output_dir=/tmp/x"])
    assert cfg.learning_rate == 3e-6
    assert cfg.task.name == "countdown" and cfg.task.level == 2
    assert cfg.task.reward_weights == {"correctness": 1.0}
    assert cfg.epsilon_high == 0.28 and cfg.output_dir == "/tmp/x"


def test_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("num_generations: 4\ngeneration_batch_size: 16\ntask:\n  level: 3\n")
    cfg = load_config(TrainConfig, path)
    assert (cfg.num_generations, cfg.prompts_per_step, cfg.task.level) == (4, 4, 3)


def test_int_accepted_where_float_expected():
    assert load_config(TrainConfig, None, ["learning_rate=1"]).learning_rate == 1.0


@pytest.mark.parametrize(
    ("override", "field", "words"),
    [
        ("learning_rat=1e-5", "learning_rat", "did you mean 'learning_rate'"),
        ("task.levl=2", "task.levl", "did you mean 'task.level'"),
        ("num_generations=eight", "num_generations", "expected an integer"),
        ("num_generations=2.5", "num_generations", "expected an integer"),
        ("resume=1", "resume", "expected true or false"),
        ("learning_rate=fast", "learning_rate", "expected a number"),
        ("generation_batch_size=30", "generation_batch_size", "not divisible by num_generations=8"),
        ("num_generations=1", "num_generations", "at least 2"),
        ("dtype=float16", "dtype", "choose one of: float32, bfloat16"),
        ("fp8=yes", "fp8", "choose one of: auto, on, off"),
        ("device=tpu", "device", "choose one of: auto, cpu, cuda"),
        ("loss_type=ppo", "loss_type", "choose one of"),
        ("advantage_estimator=rloo", "advantage_estimator", "choose one of"),
        ("epsilon_high=0.1", "epsilon_high", "unset it or raise it"),
        ("task=3", "task", "expected a table"),
    ],
)
def test_bad_input_names_the_field_and_the_fix(override, field, words):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, [override])
    assert err.value.field == field
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rate = = 3\n")
    with pytest.raises(UserError, match="could not be parsed"):
        load_config(TrainConfig, bad)


def test_override_values_are_toml_or_plain_strings():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("x=true") == ("x", True)
    assert parse_override("m=smollm2-135m") == ("m", "smollm2-135m")
    assert parse_override("w={ a = 1.0 }") == ("w", {"a": 1.0})
    with pytest.raises(UserError, match="no '='"):
        parse_override("learning_rate")


def test_rendered_toml_parses():
    data = tomllib.loads(render_toml(load_config(TrainConfig, None, [])))
    assert "epsilon_high" not in data and data["delta"] == 4.0  # unset optionals are comments
    cfg = load_config(TrainConfig, None, ["epsilon_high=0.28"])
    data = tomllib.loads(render_toml(cfg))
    assert data["epsilon_high"] == 0.28
