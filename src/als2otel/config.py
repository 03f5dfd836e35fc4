"""Configuration: the sections of every component composed into one file, loaded and validated.

Each component declares its section (defaults, and its rules as ``problems(path)``) in its
package's ``settings.py``; the types they share are in ``als2otel/settings.py``. Here they are
composed into :class:`Config`, with the top level's own keys. Every key is optional and
unknown keys are errors. :func:`load` reports every
problem at once, each naming its key path (``exporters.otlp.endpoint``), by
raising :class:`ConfigError`. ``${env:VAR}`` and ``${env:VAR:-default}`` expand
from the environment as in the OpenTelemetry Collector; every other ``${...}``
(the name rules' ``${service.metadata.name}``) is left as written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import yaml

from . import istio
from .analysis.settings import K8sConfig, MxMeshConfig, label_problems
from .export.settings import (
    MIN_REQUEST_SIZE,
    ExportersConfig,
    OtlpConfig,
    PrometheusConfig,
    QueueConfig,
    RetryConfig,
)
from .net import split_hostport
from .receiver.settings import ReceiverConfig
from .settings import (
    MAX_DURATION_TEXT,
    ConfigError,
    Duration,
    HttpTlsConfig,
    Size,
    TlsConfig,
    Workers,
    available_cpus,
    parse_duration,
    parse_size,
)
from .translation.settings import METRIC_SETS, MetricsConfig, TopologyConfig, TracesConfig
from .web.settings import HttpConfig

__all__ = [
    "MAX_DURATION_TEXT",
    "METRIC_SETS",
    "MIN_REQUEST_SIZE",
    "Config",
    "ConfigError",
    "Duration",
    "ExportersConfig",
    "HttpConfig",
    "HttpTlsConfig",
    "K8sConfig",
    "MetricsConfig",
    "MxMeshConfig",
    "OtlpConfig",
    "PrometheusConfig",
    "QueueConfig",
    "ReceiverConfig",
    "RetryConfig",
    "Size",
    "TlsConfig",
    "TopologyConfig",
    "TracesConfig",
    "Workers",
    "available_cpus",
    "load",
    "parse",
    "parse_duration",
    "parse_size",
    "split_hostport",
]

ANALYZERS = ("mx-mesh", "k8s-mesh")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Config:
    receiver: ReceiverConfig = field(default_factory=ReceiverConfig)
    analyzers: list[str] = field(default_factory=lambda: ["mx-mesh", "k8s-mesh"])
    service_name_labels: list[str] = field(default_factory=lambda: list(istio.NAME_LABELS))
    mx_mesh: MxMeshConfig = field(default_factory=MxMeshConfig)
    k8s: K8sConfig = field(default_factory=K8sConfig)
    exporters: ExportersConfig = field(default_factory=ExportersConfig)
    traces: TracesConfig = field(default_factory=TracesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    shutdown_timeout: Duration = Duration(10)
    log_level: str = "info"


def load(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate a configuration file; None gives the defaults."""
    env = os.environ if environ is None else environ
    raw: Any = {}
    if path is not None:
        try:
            with open(path, "rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError([f"{path}: larger than {MAX_FILE_BYTES} bytes; not a configuration file"])
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                [f"{path}: not UTF-8 text (byte {exc.start} cannot be read as UTF-8)"]
            ) from None
        try:
            raw = load_yaml(text)
        except ConfigError as exc:
            raise ConfigError([f"{path}: {problem}" for problem in exc.problems]) from None
        if raw is None:
            raw = {}
    return parse(raw, env)


MAX_FILE_BYTES = 1024 * 1024
"""A configuration file's size at most: a complete one is a few KiB."""

MAX_YAML_VALUES = 10_000
"""Values a YAML document may hold once its aliases are expanded (a complete configuration has ~70):
a few lines of nested aliases can otherwise stand for billions ("billion laughs")."""

MAX_YAML_DEPTH = 32
"""Levels of nesting a YAML document may have (a configuration has five)."""


def load_yaml(text: str) -> Any:
    """One YAML document, read safely and within bounds: its size once aliases are expanded
    (:data:`MAX_YAML_VALUES`) and its nesting (:data:`MAX_YAML_DEPTH`) are checked on the parsed
    node graph before any value is built. Raises :class:`ConfigError` with one line."""
    loader = _BoundedLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"]) from None
        if node is None:
            return None
        _check_yaml_bounds(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing nesting past :data:`MAX_YAML_DEPTH` as it parses (its
    composer recurses once a level)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ConfigError([f"not a configuration: nested more than {MAX_YAML_DEPTH} levels deep"])
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_yaml_bounds(root: yaml.Node) -> None:
    """Counts the values and levels the node graph expands to, visiting each shared (aliased)
    node once, without recursion."""
    sizes: dict[int, tuple[int, int]] = {}  # id -> (values, depth) of a node done
    started: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _yaml_children(node)
        if not children_done:
            if id(node) in started:  # reached again from inside itself
                raise ConfigError(["not a configuration: a YAML alias refers to the node that holds it"])
            started.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        values = 1 + sum(sizes[id(child)][0] for child in children)
        depth = 1 + max((sizes[id(child)][1] for child in children), default=0)
        if values > MAX_YAML_VALUES:
            raise ConfigError(
                [f"not a configuration: more than {MAX_YAML_VALUES} values once its aliases are expanded"]
            )
        if depth > MAX_YAML_DEPTH:
            raise ConfigError([f"not a configuration: nested more than {MAX_YAML_DEPTH} levels deep"])
        sizes[id(node)] = (values, depth)


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def parse(raw: Any, environ: Mapping[str, str]) -> Config:
    """Validate an already-read YAML document; see :func:`load`."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): must be a mapping of keys"])
    raw = _expand(raw, environ, "", problems)
    _apply_otlp_environment(raw, environ)
    _apply_temporality_environment(raw, environ)
    config = _build(Config, raw, "", problems)
    if isinstance(config, Config):
        problems.extend(_check_values(config))
    if problems:
        raise ConfigError(problems)
    assert isinstance(config, Config)
    return _with_deprecated_keys(_with_protocol_default_endpoint(config, raw), raw)


log = logging.getLogger("als2otel.config")


def _with_deprecated_keys(config: Config, raw: dict[str, Any]) -> Config:
    """``mx_mesh.service_name_labels`` still works, as the top-level key it became, with a warning."""
    old = config.mx_mesh.service_name_labels
    if old is None:
        return config
    if "service_name_labels" in raw:
        log.warning(
            "mx_mesh.service_name_labels is deprecated and service_name_labels is set: using the latter"
        )
        return config
    log.warning("mx_mesh.service_name_labels is deprecated: use the top-level service_name_labels")
    return dataclasses.replace(config, service_name_labels=list(old))


_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, environ: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, environ, _join(path, str(k)), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, environ, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${env:" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    expanded = _ENV_REF.sub(substitute, value)
    if expanded != value and _ENV_REF.fullmatch(value):
        # A value that is one reference takes the YAML type of what it expands to.
        try:
            return load_yaml(expanded) if expanded else expanded
        except ConfigError:
            return expanded
    return expanded


def _apply_otlp_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """The standard OTEL_EXPORTER_OTLP_* variables fill what the file leaves out."""
    exporters = raw.get("exporters")
    if exporters is not None and not isinstance(exporters, dict):
        return
    otlp = (exporters or {}).get("otlp")
    if otlp is not None and not isinstance(otlp, dict):
        return
    otlp = dict(otlp or {})
    if "endpoint" not in otlp and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        otlp["endpoint"] = environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    if "protocol" not in otlp and environ.get("OTEL_EXPORTER_OTLP_PROTOCOL"):
        otlp["protocol"] = environ["OTEL_EXPORTER_OTLP_PROTOCOL"]
    if "insecure" not in otlp and environ.get("OTEL_EXPORTER_OTLP_INSECURE"):
        otlp["insecure"] = environ["OTEL_EXPORTER_OTLP_INSECURE"].strip().lower() == "true"
    if "headers" not in otlp and environ.get("OTEL_EXPORTER_OTLP_HEADERS"):
        otlp["headers"] = _parse_header_list(environ["OTEL_EXPORTER_OTLP_HEADERS"])
    if otlp:
        raw["exporters"] = {**(exporters or {}), "otlp": otlp}


TEMPORALITY_PREFERENCE = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"


def _apply_temporality_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """The standard temporality preference fills ``metrics.temporality`` when the file leaves it out.

    ``lowmemory`` means delta for counters and histograms, which is all als2otel sends.
    """
    preference = environ.get(TEMPORALITY_PREFERENCE, "").strip().lower()
    metrics = raw.get("metrics")
    if not preference or (metrics is not None and not isinstance(metrics, dict)):
        return
    if "temporality" not in (metrics or {}):
        value = "delta" if preference == "lowmemory" else preference
        raw["metrics"] = {**(metrics or {}), "temporality": value}


def _parse_header_list(text: str) -> dict[str, str]:
    """``key1=value1,key2=value2`` with URL-encoded values, as the OTLP exporter spec says."""
    headers = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


def _with_protocol_default_endpoint(config: Config, raw: dict[str, Any]) -> Config:
    """An OTLP/HTTP exporter with no endpoint given talks to the OTLP/HTTP port."""
    otlp = config.exporters.otlp
    given = isinstance(raw.get("exporters"), dict) and "endpoint" in (raw["exporters"].get("otlp") or {})
    if otlp.protocol == "http/protobuf" and not given:
        otlp = dataclasses.replace(otlp, endpoint="localhost:4318")
        exporters = dataclasses.replace(config.exporters, otlp=otlp)
        return dataclasses.replace(config, exporters=exporters)
    return config


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _build(cls: type[Any], raw: Any, path: str, problems: list[str]) -> Any:
    """Walk a dataclass type and a YAML mapping together, collecting every problem."""
    if not isinstance(raw, dict):
        problems.append(f"{path or '(top level)'}: must be a mapping, got {_kind(raw)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(f"{_join(path, str(key))}: unknown key (known here: {known})")
    values = {}
    for name in fields:
        if name in raw:
            values[name] = _convert(hints[name], raw[name], _join(path, name), problems)
    try:
        return cls(**{k: v for k, v in values.items() if v is not _INVALID})
    except TypeError:  # pragma: no cover - a field left invalid already reported
        return cls()


_INVALID = object()

# Plain YAML scalars: what each type accepts (a bool is never a number), and how an error names it.
_SCALARS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)  # type: ignore[arg-type]
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path, problems)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            problems.append(f"{path}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
            return _INVALID
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{path}: must be a list, got {_kind(value)}")
            return _INVALID
        items = [_convert(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return [v for v in items if v is not _INVALID]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: must be a mapping, got {_kind(value)}")
            return _INVALID
        result = {}
        for k, v in value.items():
            if not isinstance(v, str | int | float | bool):
                problems.append(f"{_join(path, str(k))}: must be a string, got {_kind(v)}")
                continue
            result[str(k)] = str(v)
        return result
    if tp is Duration:
        seconds = parse_duration(value)
        if seconds is None:
            problems.append(f'{path}: must be a duration like "10s" or "500ms", got {value!r}')
            return _INVALID
        return Duration(seconds)
    if tp is Workers:
        if value == "auto":
            return Workers(available_cpus())
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f'{path}: must be a whole number from 1, or "auto", got {value!r}')
            return _INVALID
        return Workers(value)
    if tp is Size:
        size = parse_size(value)
        if size is None:
            problems.append(
                f'{path}: must be a size like "4MiB", "512KiB" or a number of bytes, got {value!r}'
            )
            return _INVALID
        return Size(size)
    if tp in _SCALARS:
        accepts, expected = _SCALARS[tp]
        if not accepts(value):
            got = _kind(value) if tp is str else repr(value)
            problems.append(f"{path}: must be {expected}, got {got}")
            return _INVALID
        return tp(value)
    raise TypeError(f"no conversion for {tp!r}")  # pragma: no cover - schema error


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _check_values(config: Config) -> list[str]:
    """Every section's own rules (each names its keys under its path), then the top level's."""
    problems = _section_problems(config, "")
    for i, name in enumerate(config.analyzers):
        if name not in ANALYZERS:
            problems.append(f"analyzers[{i}]: unknown analyzer {name!r} (known: {', '.join(ANALYZERS)})")
    if len(set(config.analyzers)) != len(config.analyzers):
        problems.append("analyzers: an analyzer is listed twice")
    problems.extend(label_problems("service_name_labels", config.service_name_labels))
    if config.log_level.lower() not in LOG_LEVELS:
        problems.append(f"log_level: must be one of {', '.join(LOG_LEVELS)}, got {config.log_level!r}")
    return problems


def _section_problems(section: Any, path: str) -> list[str]:
    """A section's ``problems(path)``, and those of the sections it holds, depth first."""
    problems: list[str] = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            problems.extend(_section_problems(value, _join(path, f.name)))
    check = getattr(section, "problems", None)
    if path and check is not None:
        problems[:0] = check(path)
    return problems
