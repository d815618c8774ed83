"""keel.yaml: mistakes stop start-up naming the file, the field path and what was expected."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from keel.config import default_config, load_config
from keel.errors import ConfigError

GOOD = """
providers:
  upstream: {kind: openai, base_url: "http://127.0.0.1:18001/v1", api_key: "${UPSTREAM_KEY}"}
  fake: {kind: fake}
models:
  gpt-4o-mini: {provider: upstream, model: gpt-4o-mini}
  echo: {provider: fake, defaults: {temperature: 0}}
pipeline:
  - json_mode: {repair_attempts: 2}
"""


def write(tmp_path, text):
    path = tmp_path / "keel.yaml"
    path.write_text(text)
    return path


def test_the_issue_shape_loads_and_expands_env(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", "sk-test")
    config = load_config(write(tmp_path, GOOD))
    assert config.providers["upstream"].model_extra["api_key"] == "sk-test"
    assert config.models["echo"].model is None
    assert config.pipeline[0].name == "json_mode"
    assert config.pipeline[0].options == {"repair_attempts": 2}


def test_defaults_serve_the_embedded_model():
    config = default_config()
    assert config.models["smollm2"].provider == "local"
    assert config.providers["local"].kind == "local"
    assert config.database_url() == "sqlite:///.keel/keel.db"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("providers:\n  f: {kind: fake, bogus: 1}\n", "providers.f.bogus: unknown field"),
        ("providers:\n  f: {kind: fake}\nmodels:\n  m: {provider: f, modle: x}\n",
         "models.m.modle: unknown field"),
        ("providers:\n  f: {kind: fake}\nmodels:\n  m: {provider: g}\n",
         "models.m.provider: unknown provider 'g'"),
        ("providers:\n  f: {kind: nope}\n", "providers.f.kind: unknown provider kind 'nope'"),
        ("server: {port: abc}\n", "server.port: Input should be a valid integer"),
        ("server: {port: 99999}\n", "server.port: Input should be less than or equal to 65535"),
        ("providers:\n  f: {kind: openai, base_url: x, api_key: sk-123}\n",
         "providers.f.api_key: secrets are read from the environment"),
        ("providers:\n  f: {kind: openai, base_url: '${KEEL_TEST_UNSET_VAR}'}\n",
         "providers.f.base_url: environment variable KEEL_TEST_UNSET_VAR is not set"),
        ("pipeline: [nolayer]\n", "pipeline[0].nolayer: unknown layer 'nolayer'"),
        ("pipeline: [json_mode: {repair_attempts: 9}]\n",
         "pipeline[0].json_mode.repair_attempts: Input should be less than or equal to 5"),
        ("providers: [\n", "not valid YAML"),
        ("- a list\n", "expected a mapping"),
        ("tracing: {enabled: maybe}\n", "tracing.enabled: Input should be a valid boolean"),
    ],
)
def test_mistakes_name_file_path_and_expectation(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in info.value.message
    assert expected in info.value.message


def test_env_default_is_used_when_unset(tmp_path):
    path = write(tmp_path, "providers:\n  f: {kind: openai, base_url: '${KEEL_X_UNSET:-http://127.0.0.1:1/v1}'}\n")
    assert load_config(path).providers["f"].model_extra["base_url"] == "http://127.0.0.1:1/v1"


def test_missing_file_is_a_clean_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml")


def test_serve_with_a_bad_config_exits_2_with_one_clean_line(tmp_path):
    write(tmp_path, "models:\n  m: {provider: f, modle: x}\n")
    result = subprocess.run([sys.executable, "-m", "keel", "serve", "--config", "keel.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "keel.yaml: models.m.modle: unknown field" in result.stderr
    assert "Traceback" not in result.stderr


def test_model_tools_must_be_defined(tmp_path):
    path = write(tmp_path, "providers:\n  f: {kind: fake}\nmodels:\n  m: {provider: f, tools: [nope]}\n")
    with pytest.raises(ConfigError, match=r"models.m.tools: unknown tool 'nope'"):
        load_config(path)


@pytest.mark.parametrize("header", ["Authorization", "X-Api-Key", "x-auth-token"])
def test_secret_headers_must_come_from_the_environment(tmp_path, header):
    path = write(tmp_path, "tools:\n  t:\n    kind: http\n    url: http://127.0.0.1:1/x\n"
                           f"    headers: {{{header}: literal-secret}}\n")
    with pytest.raises(ConfigError, match=f"tools.t.headers.{header}: secrets are read"):
        load_config(path)


def test_a_secret_may_not_hide_in_an_env_default(tmp_path):
    path = tmp_path / "keel.yaml"
    path.write_text(
        "providers:\n  up: {kind: openai, base_url: 'http://127.0.0.1:9', "
        "api_key: '${NOT_SET_ANYWHERE:-sk-live-abc123}'}\n")
    with pytest.raises(ConfigError, match=r"providers\.up\.api_key: secrets are read from the "
                                          r"environment.*no default value"):
        load_config(path)


def test_an_empty_env_default_is_no_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = tmp_path / "keel.yaml"
    path.write_text("providers:\n  up: {kind: openai, base_url: 'http://127.0.0.1:9', "
                    "api_key: '${NOT_SET_ANYWHERE:-}'}\n")
    assert load_config(path).providers["up"].model_extra["api_key"] == ""


@pytest.mark.parametrize("defaults, where", [
    ("{temprature: 0.2}", "models.m.defaults.temprature: unknown field"),
    ("{temperature: 5}", "models.m.defaults.temperature"),
    ("{max_tokens: 0}", "models.m.defaults.max_tokens"),
])
def test_model_defaults_are_typed(tmp_path, defaults, where):
    path = tmp_path / "keel.yaml"
    path.write_text(f"providers:\n  f: {{kind: fake}}\nmodels:\n  m: {{provider: f, "
                    f"defaults: {defaults}}}\n")
    with pytest.raises(ConfigError, match=re.escape(where)):
        load_config(path)


def test_model_defaults_reach_the_body_with_provider_extras(tmp_path):
    path = tmp_path / "keel.yaml"
    path.write_text("providers:\n  f: {kind: fake}\nmodels:\n  m: {provider: f, defaults: "
                    "{temperature: 0.3, extra_body: {top_k: 20}}}\n")
    assert load_config(path).models["m"].defaults.body() == {"temperature": 0.3, "top_k": 20}


def test_layer_options_are_typed_once_when_the_file_loads(tmp_path):
    from keel.consistency.json_mode import JSONModeOptions
    from keel.gateway import Gateway

    path = tmp_path / "keel.yaml"
    path.write_text(f"state_dir: {tmp_path}\nproviders:\n  f: {{kind: fake}}\nmodels:\n"
                    "  m: {provider: f}\npipeline:\n  - json_mode: {repair_attempts: 2}\n")
    config = load_config(path)
    typed = config.pipeline[0].typed
    assert isinstance(typed, JSONModeOptions) and typed.repair_attempts == 2
    (layer,) = Gateway(config).layers
    assert layer.repair_attempts == 2
    assert config.pipeline[0].typed is typed  # validated once, not per use
