"""LocalNetwork's config: settings layered key by key, written where the coordinator reads it, its
state under the network's folder (no process is started here)."""

import pytest

from swarmgrpo.coordinator.config import RunConfig
from swarmgrpo.core.configtree import load_config
from swarmgrpo.core.errors import ConfigError
from swarmgrpo.localnet import LocalNetwork, free_port, run_config

BASE = {"run_id": "r", "listen": "127.0.0.1:0", "train": {"model": "tiny", "task": {"name": "uppercase"}}}


def test_later_layers_override_key_by_key_and_leave_the_rest():
    cfg = run_config(BASE, {"max_staleness": 2, "train": {"max_steps": 7, "task": {"level": 3}}})
    assert (cfg.run_id, cfg.max_staleness) == ("r", 2)
    assert (cfg.train.model, cfg.train.max_steps) == ("tiny", 7)
    assert (cfg.train.task.name, cfg.train.task.level) == ("uppercase", 3)
    assert BASE["train"]["task"] == {"name": "uppercase"}, "the layers themselves are not changed"


def test_an_unknown_setting_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"train\.max_step"):
        run_config(BASE, {"train": {"max_step": 3}})


def test_the_written_config_is_the_run_with_its_state_under_the_network(tmp_path):
    net = LocalNetwork(tmp_path / "net", {**BASE, "state_dir": "elsewhere"})
    assert net.state_dir == tmp_path / "net" / "coordinator"
    written = load_config(RunConfig, net.config)
    assert written == net.run and written.state_dir == str(net.state_dir)
    assert net.address is None, "port 0: the address is known once the coordinator is bound"


def test_a_fixed_port_is_the_address_before_the_coordinator_starts(tmp_path):
    listen = f"127.0.0.1:{free_port()}"
    net = LocalNetwork(tmp_path, run_config(BASE, {"listen": listen}))
    assert net.address == listen and net.procs == {}
