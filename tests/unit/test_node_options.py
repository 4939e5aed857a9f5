"""`swarmgrpo node` has one source of defaults: NodeOptions. The command line parsed with nothing but
the two required flags gives NodeOptions' defaults, and every flag reaches its field."""

import math

import pytest

from swarmgrpo import cli
from swarmgrpo.node import daemon
from swarmgrpo.node.options import NodeOptions


@pytest.fixture
def parsed(monkeypatch):
    """What `swarmgrpo node ...` would hand the daemon (the daemon itself does not start)."""
    got = []
    monkeypatch.setattr(daemon, "main", got.append)
    monkeypatch.setattr(cli, "_logging", lambda: None)

    def parse(*flags: str) -> NodeOptions:
        assert cli.main(["node", "--join", "127.0.0.1:1", "--token", "t", *flags]) == 0
        return got.pop()

    return parse


def test_command_line_defaults_are_node_options_defaults(parsed):
    assert parsed() == NodeOptions(join="127.0.0.1:1", token="t")


def test_defaults_lists_every_optional_field_fresh():
    first, second = NodeOptions.defaults(), NodeOptions.defaults()
    assert set(first) == {f for f in NodeOptions.__dataclass_fields__} - {"join", "token"}
    assert first["p2p_listen"] == ["/ip4/0.0.0.0/tcp/0"] and first["coordinator_patience_s"] == math.inf
    first["p2p_listen"].append("/ip4/1.2.3.4/tcp/5")
    assert second["p2p_listen"] == ["/ip4/0.0.0.0/tcp/0"]  # no list shared between parses


def test_every_flag_reaches_its_field(parsed):
    opts = parsed(
        "--roles", "train",
        "--state-dir", "/s",
        "--weights-dir", "/w",
        "--initial-peers", "/ip4/1.1.1.1/tcp/1", "/ip4/2.2.2.2/tcp/2",
        "--p2p-listen", "/ip4/127.0.0.1/tcp/0",
        "--coordinator-patience", "30",
        "--max-prompts", "5",
        "--threads", "3",
        "--engine", "transformers",
        "--device", "cpu",
        "--weights-format", "fp8",
    )  # fmt: skip
    assert opts == NodeOptions(
        join="127.0.0.1:1",
        token="t",
        roles="train",
        state_dir="/s",
        weights_dir="/w",
        initial_peers=["/ip4/1.1.1.1/tcp/1", "/ip4/2.2.2.2/tcp/2"],
        p2p_listen=["/ip4/127.0.0.1/tcp/0"],
        coordinator_patience_s=30.0,
        max_prompts=5,
        threads=3,
        engine="transformers",
        device="cpu",
        weights_format="fp8",
    )
    changed = {k for k, v in NodeOptions.defaults().items() if getattr(opts, k) != v}
    assert changed == set(NodeOptions.defaults()) - {"weights_dtype"}  # the one field with no flag


def test_max_prompts_below_one_is_a_user_error(parsed, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(daemon, "main", started.append)
    assert cli.main(["node", "--join", "127.0.0.1:1", "--token", "t", "--max-prompts", "0"]) == 2
    assert "--max-prompts must be at least 1" in capsys.readouterr().err and not started
