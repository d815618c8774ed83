"""keel.yaml: its schema, loading, `${ENV}` expansion and the defaults used without a file.

Every section is a pydantic model with `extra="forbid"`, so a typo stops start-up. A mistake is
reported as a `ConfigError` naming the file, the path of the bad field and what was expected.
Secrets never live in the file: a secret-looking field must be an `${ENV_VAR}` reference.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from keel.errors import ConfigError

DEFAULT_STATE_DIR = Path(".keel")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEYS = {"api_key", "password", "secret", "token", "authorization", "proxy_authorization"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)


class ConsoleConfig(Strict):
    """The web console at /console (docs/console.md)."""

    enabled: bool = Field(True, description="serve the web console and reference chat")


class RouteConsoleConfig(Strict):
    """How a model (route) appears in the console's reference chat."""

    suggested_prompts: list[str] = Field(
        default_factory=list, description="prompts offered as buttons in an empty chat")
    description: str | None = Field(None, description="one line shown under the route's name")


class StoreConfig(Strict):
    url: str | None = Field(None, description="SQLAlchemy URL; default sqlite under state_dir")


class OTLPConfig(Strict):
    """Export every trace as OpenTelemetry spans over OTLP/HTTP (docs/opentelemetry.md)."""

    endpoint: str = Field(description="the collector's traces URL, e.g. http://otel:4318/v1/traces")
    headers: dict[str, str] = Field(default_factory=dict, description="e.g. an auth header")
    service_name: str = "keel"
    timeout_s: float = Field(10.0, gt=0)


class TracingConfig(Strict):
    enabled: bool = True
    record_bodies: bool = True
    buffer_size: int = Field(10_000, gt=0)
    batch_size: int = Field(500, gt=0)
    flush_interval_s: float = Field(0.25, gt=0)
    retention_days: float | None = Field(None, gt=0, description="prune older traces; None: keep")
    max_traces: int | None = Field(None, gt=0, description="keep at most this many, newest first")
    prune_interval_s: float = Field(600.0, gt=0, description="how often the background prune runs")
    otlp: OTLPConfig | None = None


class AuthConfig(Strict):
    """Present (or KEEL_ADMIN_KEY set): every route needs a key, loopback included."""

    admin_key: str | None = Field(None, description="an ${ENV} reference; default $KEEL_ADMIN_KEY")
    refresh_interval_s: float = Field(
        1.0, gt=0, description="how soon a key revoked elsewhere (CLI, replica) is refused")


class StateConfig(Strict):
    """Where counters shared by replicas live (rate limits, budgets): this process's memory, or
    Redis when several replicas run."""

    redis_url: str | None = Field(None, description="redis://host:6379/0; None: in-process")
    on_error: Literal["open", "closed"] = Field(
        "open", description="Redis away: admit requests (open) or refuse them 503 (closed)")
    timeout_s: float = Field(0.25, gt=0, description="each Redis call's limit")
    prefix: str = "keel:"


Period = Literal["day", "month"]


class RateLimitConfig(Strict):
    """Requests and tokens per minute for one model on this deployment, all callers together."""

    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)


class BudgetConfig(Strict):
    budget_usd: float = Field(gt=0)
    period: Period = "month"


class LimitsConfig(Strict):
    """Budgets shared by every key whose metadata names the team (`--metadata team=NAME`)."""

    teams: dict[str, BudgetConfig] = Field(default_factory=dict)


class MetricsConfig(Strict):
    enabled: bool = True


class ProviderConfig(BaseModel):
    """`kind` picks the provider class; the other keys are that class's own `Options`."""

    model_config = ConfigDict(extra="allow")
    kind: str


class EmbedderConfig(BaseModel):
    """`kind` picks the embedder class; the other keys are that class's own `Options`."""

    model_config = ConfigDict(extra="allow")
    kind: str


class ToolConfig(BaseModel):
    """`kind` (http, python, mcp) picks the tool class; the other keys are its own `Options`."""

    model_config = ConfigDict(extra="allow")
    kind: str


class LayerSpec(Strict):
    """A layer named in keel.yaml. `options` is what the file says; `typed` is the same, validated
    into the layer's own `Options` model (found by name through the `keel.layers` entry points)
    when the file is loaded, so a layer receives a typed model, checked once."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    _typed: BaseModel | None = PrivateAttr(None)

    @property
    def typed(self) -> BaseModel:
        if self._typed is None:
            from keel.pipeline.layer import layer_class

            self._typed = layer_class(self.name).Options.model_validate(self.options)
        return self._typed


def _layer_specs(value: Any) -> Any:
    # Accept `- json_mode` or `- json_mode: {repair_attempts: 2}` in the YAML.
    if not isinstance(value, list):
        return value
    specs = []
    for item in value:
        if isinstance(item, str):
            specs.append({"name": item})
        elif isinstance(item, dict) and len(item) == 1 and "name" not in item:
            (name, options), = item.items()
            specs.append({"name": name, "options": options or {}})
        else:
            specs.append(item)
    return specs


class PricingConfig(Strict):
    """US dollars per million tokens, for cost accounting (evals, traces)."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return ((prompt_tokens or 0) * self.input + (completion_tokens or 0) * self.output) / 1e6


class CompletionDefaults(Strict):
    """Request fields a model's route fills in when the client leaves them out. Typed, so a typo
    or an out-of-range value stops start-up instead of reaching every request; a provider's own
    parameter goes under `extra_body` (sent as given)."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    parallel_tool_calls: bool | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The defaults as request fields: only those set, provider extras merged in."""
        fields = self.model_dump(exclude_none=True, exclude={"extra_body"})
        return {**self.extra_body, **fields}


class ModelConfig(Strict):
    provider: str | None = Field(
        None, description="required, unless `router:` lists deployments: then the first one's")
    model: str | None = Field(None, description="the provider's name for it; default: the key")
    defaults: CompletionDefaults = Field(default_factory=CompletionDefaults)
    pipeline: list[LayerSpec] | None = None
    knowledge: dict[str, Any] | None = Field(None, description="options of the knowledge layer")
    tools: list[str] | dict[str, Any] | None = Field(None, description="tools Keel runs for it")
    pricing: PricingConfig | None = None
    limits: RateLimitConfig | None = None
    guardrails: dict[str, Any] | None = Field(
        None, description="options of the guardrails layer: input and output guards")
    cache: dict[str, Any] | None = Field(None, description="options of the cache layer")
    router: dict[str, Any] | None = Field(
        None, description="options of the router layer: deployments, retries, fallbacks")
    console: RouteConsoleConfig | None = Field(
        None, description="the reference chat's suggested prompts and description")

    _specs = field_validator("pipeline", mode="before")(_layer_specs)
    _grounding: list[tuple[str, LayerSpec]] | None = PrivateAttr(None)
    _router: list[tuple[str, LayerSpec]] | None = PrivateAttr(None)

    def grounding_layers(self) -> list[tuple[str, LayerSpec]]:
        """(field, layer) for `guardrails:`, `knowledge:` and `tools:`, in the order they run
        (the same specs each time, so their typed options are validated once). Guardrails come
        first: input guards see the client's request before grounding adds to it, and output
        guards see the final answer."""
        if self._grounding is None:
            self._grounding = self._make_grounding_layers()
        return self._grounding

    def _make_grounding_layers(self) -> list[tuple[str, LayerSpec]]:
        found = []
        if self.guardrails is not None:
            found.append(("guardrails", LayerSpec(name="guardrails", options=self.guardrails)))
        if self.cache is not None:  # inside the guards: a hit never bypasses an input guard
            found.append(("cache", LayerSpec(name="cache", options=self.cache)))
        if self.knowledge is not None:
            found.append(("knowledge", LayerSpec(name="knowledge", options=self.knowledge)))
        if self.tools is not None:
            options = {"tools": self.tools} if isinstance(self.tools, list) else self.tools
            found.append(("tools", LayerSpec(name="tools", options=options)))
        return found

    def router_layer(self) -> list[tuple[str, LayerSpec]]:
        if self._router is None:
            self._router = ([("router", LayerSpec(name="router", options=self.router))]
                            if self.router is not None else [])
        return self._router

    def layer_specs(self, default: list[LayerSpec]) -> list[LayerSpec]:
        """Guardrails, the cache and grounding first (retrieve, then the tools loop), then the
        model's or default layers, then the router, last before the provider call (each of its
        attempts goes to one deployment)."""
        grounding = [spec for _, spec in self.grounding_layers()]
        router = [spec for _, spec in self.router_layer()]
        return grounding + (self.pipeline if self.pipeline is not None else default) + router


class RetrievalConfig(Strict):
    """How knowledge search ranks (docs/knowledge.md); unset fields keep the search defaults."""

    fusion: Literal["convex", "rrf"] | None = Field(None, description="default convex")
    alpha: float | None = Field(None, ge=0, le=1, description="convex weight of cosine; 0.8")
    rrf_k: int | None = Field(None, gt=0, description="reciprocal rank fusion's k; 60")
    weights: dict[Literal["vector", "fulltext"], float] | None = None
    candidates: int | None = Field(None, gt=0, le=1000, description="each list's depth; 50")
    index: Literal["exact", "ann", "auto"] | None = Field(None, description="default exact")
    ann_threshold: int | None = Field(None, gt=0, description="auto: ann from this many chunks")


class KeelConfig(Strict):
    state_dir: Path = DEFAULT_STATE_DIR
    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    auth: AuthConfig | None = None
    state: StateConfig = Field(default_factory=StateConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    embedders: dict[str, EmbedderConfig] = Field(default_factory=dict)
    tools: dict[str, ToolConfig] = Field(default_factory=dict)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    pipeline: list[LayerSpec] = Field(default_factory=lambda: [LayerSpec(name="json_mode")])

    _specs = field_validator("pipeline", mode="before")(_layer_specs)

    @model_validator(mode="after")
    def _models_name_known_parts(self) -> KeelConfig:
        for name, model in self.models.items():
            _router_deployments(name, model, self.providers)
            if model.provider is None:
                raise ValueError(f"models.{name}.provider: required (unless `router:` lists "
                                 "the deployments)")
            if model.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none defined"
                raise ValueError(
                    f"models.{name}.provider: unknown provider {model.provider!r} "
                    f"(providers: {known})"
                )
            tools = model.tools if isinstance(model.tools, list) else (model.tools or {}).get(
                "tools", [])
            for tool in tools if isinstance(tools, list) else ():
                if tool not in self.tools:
                    known = ", ".join(sorted(self.tools)) or "none defined"
                    raise ValueError(
                        f"models.{name}.tools: unknown tool {tool!r} (the top-level tools: "
                        f"defines {known})"
                    )
        return self

    def embedder_configs(self) -> dict[str, EmbedderConfig]:
        """The configured embedders, plus the embedded default `minilm` unless redefined."""
        return {"minilm": EmbedderConfig(kind="local"), **self.embedders}

    def auth_settings(self) -> AuthConfig | None:
        """Auth as configured: the `auth:` section, or KEEL_ADMIN_KEY alone; None: auth off.
        The admin key falls back to $KEEL_ADMIN_KEY when the section names none."""
        env_key = os.environ.get("KEEL_ADMIN_KEY") or None
        if self.auth is None:
            return AuthConfig(admin_key=env_key) if env_key else None
        if self.auth.admin_key is None and env_key:
            return self.auth.model_copy(update={"admin_key": env_key})
        return self.auth

    def database_url(self) -> str:
        if self.store.url:
            return self.store.url
        return f"sqlite:///{(self.state_dir / 'keel.db').as_posix()}"


def _router_deployments(name: str, model: ModelConfig, providers: dict) -> None:
    """A model with `router:` may leave out `provider`: its route's own provider and model are
    then its first deployment's. Every deployment must name a known provider."""
    deployments = (model.router or {}).get("deployments")
    if not isinstance(deployments, list):
        return  # the router layer's own options report it
    for i, deployment in enumerate(deployments):
        provider = deployment.get("provider") if isinstance(deployment, dict) else None
        if isinstance(provider, str) and provider not in providers:
            known = ", ".join(sorted(providers)) or "none defined"
            raise ValueError(f"models.{name}.router.deployments[{i}].provider: unknown provider "
                             f"{provider!r} (providers: {known})")
    first = deployments[0] if deployments and isinstance(deployments[0], dict) else {}
    if model.provider is None and isinstance(first.get("provider"), str):
        model.provider = first["provider"]
        if model.model is None and isinstance(first.get("model"), str):
            model.model = first["model"]


def default_config() -> KeelConfig:
    """What `keel serve` runs with no file: the embedded model, state in ./.keel/."""
    return KeelConfig(
        providers={"local": ProviderConfig(kind="local")},
        models={"smollm2": ModelConfig(provider="local",
                                       defaults=CompletionDefaults(temperature=0.2))},
    )


def load_config(path: str | os.PathLike | None = None) -> KeelConfig:
    if path is None:
        return default_config()
    path = Path(path)
    raw = _expand_env(read_yaml(path, empty={}), path, ())
    try:
        config = KeelConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc)) from None
    validate_components(config, path)
    return config


def read_yaml(path: str | os.PathLike, *, empty: Any = None) -> dict:
    """A YAML file whose top level is a mapping, or a ConfigError naming the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None and empty is not None:
        return empty
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def validate_components(config: KeelConfig, path: Path | str = "keel.yaml") -> None:
    """Check each provider's and layer's own options now, so start-up fails early and clearly."""
    from keel.pipeline.layer import layer_class
    from keel.plugins import load
    from keel.providers.registry import provider_class

    for name, provider in config.providers.items():
        where = f"providers.{name}"
        try:
            cls = provider_class(provider.kind)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {where}.kind: {exc.message}") from None
        _check_options(cls.Options, provider.model_extra or {}, path, where)
    for group, what, section in [("keel.embedders", "embedder kind", "embedders"),
                                 ("keel.tools", "tool kind", "tools")]:
        for name, spec in getattr(config, section).items():
            where = f"{section}.{name}"
            try:
                cls = load(group, spec.kind, what)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {where}.kind: {exc.message}") from None
            _check_options(cls.Options, spec.model_extra or {}, path, where)
    for where, spec in _layer_places(config):
        try:
            cls = layer_class(spec.name)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {where}: {exc.message}") from None
        spec._typed = _check_options(cls.Options, spec.options, path, where)


def _layer_places(config: KeelConfig):
    """(where in the file, spec) for every layer the config names."""
    for i, spec in enumerate(config.pipeline):
        yield f"pipeline[{i}].{spec.name}", spec
    for name, model in config.models.items():
        for key, spec in model.grounding_layers() + model.router_layer():
            yield f"models.{name}.{key}", spec
        for i, spec in enumerate(model.pipeline or ()):
            yield f"models.{name}.pipeline[{i}].{spec.name}", spec


def _check_options(options_cls: type[BaseModel], values: dict, path, where: str) -> BaseModel:
    try:
        return options_cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc, prefix=where)) from None


def describe_validation_error(path, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after",))
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here)"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        got = err.get("input")
        detail = f" (got {got!r})" if err["type"] != "extra_forbidden" and _short(got) else ""
        lines.append(f"{path}: {loc}: {msg}{detail}" if loc else f"{path}: {msg}")
    return "\n".join(lines)


def _short(value: Any) -> bool:
    return value is not None and not isinstance(value, (dict, list)) and len(repr(value)) < 80


def _expand_env(value: Any, path: Path, where: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, path, (*where, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, path, (*where, str(i))) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    field = ".".join(where)
    if where and _is_secret(where[-1]):
        ref = _ENV_REF.fullmatch(value.strip())
        # `${KEY:-sk-live-…}` would keep the secret in the file after all: no default allowed.
        if ref is None or ref.group(2):
            raise ConfigError(
                f"{path}: {field}: secrets are read from the environment, not the file "
                f"(no default value after ':-' either); write e.g. \"${{{where[-1].upper()}}}\""
            )

    def substitute(match: re.Match) -> str:
        var, default = match.group(1), match.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        raise ConfigError(f"{path}: {field}: environment variable {var} is not set")

    return _ENV_REF.sub(substitute, value)


def _is_secret(key: str) -> bool:
    key = key.lower().replace("-", "_")  # HTTP header names too: Authorization, X-Api-Key
    return key in _SECRET_KEYS or key.endswith(("_key", "_token", "_secret", "_password"))
