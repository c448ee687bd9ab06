"""The config model: unknown keys refused with a suggestion, and the docs generated from it kept fresh."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest

from helpers import ROOT
from lamcontrol import config
from lamcontrol.cli import config_docs
from lamcontrol.agents.computer import Computer
from lamcontrol.agents.runtime import Agent
from lamcontrol.broker.main import Listeners
from lamcontrol.bus import BrokerSettings
from lamcontrol.cluster import ClusterSettings
from lamcontrol.coordinator.settings import Settings
from lamcontrol.r1_bridge.app import BridgeSettings
from lamcontrol.r1_bridge.openclaw import GatewaySettings


def load_text(tmp_path, text: str) -> dict:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return config.load(str(path))


@pytest.mark.parametrize("text, complaint", [
    ("[coordinator]\nack_timout = 3\n", "[coordinator] has unknown keys: ack_timout (did you mean ack_timeout?)"),
    ("[coordinater]\nack_timeout = 3\n", "has unknown sections: coordinater (did you mean coordinator?)"),
    ("[bridge]\nlisten = 8080\n", "[bridge] listen must be str (text in quotes), not 8080"),
    ("[agent]\nmax_concurrent = true\n", "[agent] max_concurrent must be int (a whole number), not True"),
    ("[broker]\nkeepalive = 2.5\n", "[broker] keepalive must be int"),
    ("broker = 1\n", "[broker] must be a table"),
    ("[capabilities.browsr]\nheadless = true\n", "unknown capabilities (none installed by that name): browsr "
                                                 "(did you mean browser?)"),
    ("[openclaw]\nlisten = \"0.0.0.0:1\"\n", "[openclaw] has unknown keys: listen"),
])
def test_bad_keys_name_the_key_the_section_and_a_close_match(tmp_path, text, complaint):
    with pytest.raises(config.ConfigError) as refused:
        load_text(tmp_path, text)
    assert complaint in str(refused.value) and str(tmp_path) in str(refused.value)


@pytest.mark.parametrize("text, complaint", [
    ("[coordinator]\nack_timeout = -5\n", "[coordinator] ack_timeout must be above 0, not -5.0"),
    ("[bridge]\nlisten = \"127.0.0.1\"\n", "[bridge] listen must look like host:port, e.g. 127.0.0.1:1883, not "
                                          "'127.0.0.1'"),
    ("[embedded_broker]\nlisten = \"nowhere\"\n", "[embedded_broker] listen must look like host:port"),
    ("[broker]\nurl = \"http://127.0.0.1:1883\"\n", "[broker] url must be a URL such as mqtt://host:port"),
    ("[broker]\nprefix = \"lam/#\"\n", "[broker] prefix must be one or more topic levels"),
    ("[agent]\nmax_concurrent = 0\n", "[agent] max_concurrent must be 1 or more, not 0"),
    ("[agent]\nid = \"my desk\"\n", "[agent] id must be 1-128 letters, digits, '-' or '_'; 'my desk' could be 'my-desk'"),
    ("[groq]\nreasoning_effort = \"max\"\n", "[groq] reasoning_effort must be one of low, medium, high, not 'max'"),
    ("[openclaw]\nport = 70000\n", "[openclaw] port must be a port number, 0 to 65535, not 70000"),
    ("[bridge]\npublic_url = \"lam.example.net\"\n", "[bridge] public_url must be a URL such as https://host:port"),
])
def test_bad_values_name_the_section_and_the_key(tmp_path, text, complaint):
    with pytest.raises(config.ConfigError) as refused:
        load_text(tmp_path, text)
    assert complaint in str(refused.value) and str(tmp_path) in str(refused.value)


def test_one_setting_moves_the_broker_for_every_command(tmp_path, monkeypatch):
    monkeypatch.delenv("LAM_BROKER", raising=False)
    listen_only = load_text(tmp_path, '[embedded_broker]\nlisten = "0.0.0.0:1884"\n')
    assert listen_only["broker"]["url"] == "mqtt://127.0.0.1:1884"
    assert listen_only["broker_origin"] == f"[embedded_broker] listen in {tmp_path / 'config.toml'}"
    both = load_text(tmp_path, '[embedded_broker]\nlisten = "0.0.0.0:1884"\n[broker]\nurl = "mqtt://pc:1885"\n')
    assert (both["broker"]["url"], both["broker_origin"]) == ("mqtt://pc:1885", f"[broker] url in {tmp_path / 'config.toml'}")
    assert config.load(str(tmp_path / "config.toml"), "mqtt://flag:1")["broker_origin"] == "--broker"
    monkeypatch.setenv("LAM_BROKER", "mqtt://env:2")
    assert config.load(str(tmp_path / "config.toml"))["broker_origin"] == "$LAM_BROKER"


def test_good_values_load_and_defaults_fill_the_rest(tmp_path):
    cfg = load_text(tmp_path, "[coordinator]\nack_timeout = 3\n[capabilities.echo]\nmax_sleep = 5\n")
    assert cfg["coordinator"]["ack_timeout"] == 3.0 and isinstance(cfg["coordinator"]["ack_timeout"], float)
    assert cfg["coordinator"]["prompt_timeout"] == config.MODEL["coordinator"].settings["prompt_timeout"].default
    assert cfg["capabilities"] == {"echo": {"max_sleep": 5}}


def test_capability_settings_suggest_the_close_match():
    with pytest.raises(ValueError, match=re.escape("[capabilities.computer] has unknown keys: volume_stpe "
                                                   "(did you mean volume_step?)")):
        Computer({"volume_stpe": 5})


def test_every_key_is_documented_and_readers_agree_with_the_model():
    for name, section in config.MODEL.items():
        assert section.help, name
        for key, setting in section.settings.items():
            assert setting.help.strip(), f"[{name}] {key} has no help"
    for name, _, settings in config_docs.all_sections():
        for key, setting in settings.items():
            assert setting.help.strip(), f"[{name}] {key} has no help"
    # The bridge and the voice gateway read their sections into dataclasses: every field is in the model, so
    # no key goes undocumented (their defaults: test_a_dataclass_of_settings_writes_no_default_again).
    for section, reader in (("bridge", BridgeSettings), ("openclaw", GatewaySettings)):
        assert {f.name for f in dataclasses.fields(reader)} == set(config.MODEL[section].settings), section


SETTINGS_CLASSES = [(BrokerSettings, "broker"), (Listeners, "embedded_broker"), (Settings, "coordinator"),
                    (BridgeSettings, "bridge"), (GatewaySettings, "openclaw"), (ClusterSettings, "cluster")]


@pytest.mark.parametrize("reader, section", SETTINGS_CLASSES, ids=[s for _, s in SETTINGS_CLASSES])
def test_a_dataclass_of_settings_writes_no_default_again(reader, section):
    """Each default is written once, in the config model: a field of a setting has the model's default,
    and its source takes it from the model (no second copy that could drift from the first)."""
    model = config.MODEL[section].settings
    shared = [f for f in dataclasses.fields(reader) if f.name in model]
    assert len(shared) >= 4
    made = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default for f in shared}
    assert made == {f.name: model[f.name].default for f in shared}
    source = ast.parse(textwrap.dedent(inspect.getsource(reader)))
    copies = [ast.unparse(node) for node in ast.walk(source) if isinstance(node, ast.AnnAssign)
              and isinstance(node.target, ast.Name) and node.target.id in model and not names_its_key(node)]
    assert copies == []


def names_its_key(field: ast.AnnAssign) -> bool:
    """The field's default is read from the model by its key (``tick: float = coordinator("tick")``)."""
    call = field.value
    return (isinstance(call, ast.Call) and len(call.args) == 1 and isinstance(call.args[0], ast.Constant)
            and isinstance(field.target, ast.Name) and call.args[0].value == field.target.id)


def test_the_agent_takes_its_defaults_from_the_config_model():
    parameters = inspect.signature(Agent).parameters
    for key in ("max_concurrent", "max_queued", "heartbeat", "stop_grace"):
        assert parameters[key].default == config.MODEL["agent"].settings[key].default, key


def test_generated_files_are_fresh():
    stale = config_docs.stale(ROOT)
    assert not stale, f"run `lam config docs`: {', '.join(map(str, stale))} differ from the config model"


def test_the_example_with_every_key_uncommented_loads(tmp_path):
    example = (ROOT / config_docs.EXAMPLE).read_text()
    uncommented = "\n".join(re.sub(r"^# (\w+ = .*?)(\s+# .*)?$", r"\1", line) for line in example.splitlines())
    parsed = tomllib.loads(uncommented)
    documented = {(name, key) for name, values in parsed.items() if name != "capabilities" for key in values}
    documented |= {(f"capabilities.{cap}", key) for cap, values in parsed.get("capabilities", {}).items()
                   for key in values}
    expected = {(name, key) for name, _, settings in config_docs.all_sections() for key in settings}
    assert documented == expected
    cfg = load_text(tmp_path, uncommented)
    assert cfg["broker"]["url"] == config.DEFAULTS["broker"]["url"]


def test_configuration_reference_lists_every_key():
    reference = (ROOT / config_docs.REFERENCE).read_text()
    for name, _, settings in config_docs.all_sections():
        for key in settings:
            assert f"| `[{name}] {key}` |" in reference, (name, key)


def lam(*args: str, config_text: str | None = None, tmp_path=None) -> subprocess.CompletedProcess:
    extra = []
    if config_text is not None:
        path = tmp_path / "lam.toml"
        path.write_text(config_text)
        extra = ["--config", str(path)]
    return subprocess.run([sys.executable, "-m", "lamcontrol", *args, *extra], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_lam_config_example_and_check(tmp_path):
    assert lam("config", "example").stdout == config_docs.example()
    good = lam("config", "check", config_text="[capabilities.echo]\nmax_sleep = 3\n", tmp_path=tmp_path)
    assert good.returncode == 0 and "every key is known" in good.stdout
    typo = lam("config", "check", config_text="[capabilities.computer]\nvolume_stp = 3\n", tmp_path=tmp_path)
    assert typo.returncode == 2
    assert typo.stderr.strip().endswith("[capabilities.computer] has unknown keys: volume_stp (did you mean "
                                        "volume_step?)")
    for text, complaint in (("[coordinator]\nack_timeout = -5\n", "[coordinator] ack_timeout must be above 0"),
                            ("[bridge]\nlisten = \"127.0.0.1\"\n", "[bridge] listen must look like host:port")):
        bad = lam("config", "check", config_text=text, tmp_path=tmp_path)
        assert bad.returncode == 2 and complaint in bad.stderr and "every key" not in bad.stdout, bad.stderr
    sent = lam("send", "echo hi", config_text="[coordinator]\nack_timout = 3\n", tmp_path=tmp_path)
    assert sent.returncode == 2 and "Traceback" not in sent.stderr
    assert "[coordinator] has unknown keys: ack_timout (did you mean ack_timeout?)" in sent.stderr
