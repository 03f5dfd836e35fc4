"""Configuration: the schema with its defaults in one place, loading and validation.

Every key is optional and unknown keys are errors. :func:`load` reports every
problem at once, each naming its key path (``exporters.otlp.endpoint``), by
raising :class:`ConfigError`. ``${env:VAR}`` and ``${env:VAR:-default}`` expand
from the environment as in the OpenTelemetry Collector; every other ``${...}``
(the name rules' ``${service.metadata.name}``) is left as written.
"""

from __future__ import annotations

import dataclasses
import logging
import math
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

ANALYZERS = ("mx-mesh", "k8s-mesh")
METRIC_SETS = ("http", "servicegraph", "istio")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A configuration that cannot run; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Duration(float):
    """Seconds, written in the file as Go-style durations: ``10s``, ``1m30s``, ``250ms``."""


class Workers(int):
    """Worker processes: a whole number from 1, or ``"auto"`` for the CPUs this process may use."""


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, which container CPU sets narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


class Size(int):
    """Bytes, written in the file as ``4MiB``, ``512KiB``, ``1MB`` or a whole number."""


@dataclass(frozen=True)
class TlsConfig:
    """TLS on the ALS port; names as in the OpenTelemetry Collector's ``configtls``."""

    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None  # set: clients must present a certificate it signed (mTLS)
    min_version: str = "1.2"

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.key_file)


@dataclass(frozen=True)
class HttpTlsConfig:
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.key_file)


@dataclass(frozen=True)
class ReceiverConfig:
    listen: str = "0.0.0.0:11800"
    workers: Workers = Workers(1)
    max_connection_age: Duration = Duration(30 * 60)
    max_connection_age_grace: Duration = Duration(30)
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class K8sConfig:
    kubeconfig: str | None = None
    service_name_rule: str = "${service.metadata.name}"
    ignored_namespaces: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MxMeshConfig:
    service_name_labels: list[str] | None = None
    """Deprecated: the top-level ``service_name_labels`` (which it fills when that is left out)."""


@dataclass(frozen=True)
class RetryConfig:
    max_elapsed_time: Duration = Duration(300)


@dataclass(frozen=True)
class QueueConfig:
    queue_size: int = 200_000
    num_consumers: int = 4
    storage: str | None = None  # a directory: requests kept on disk until accepted, resumed after a restart
    max_storage_size: Size = Size(1024 * 1024 * 1024)
    fsync: bool = False  # true: each request is on disk before it counts as queued (survives a power loss)


@dataclass(frozen=True)
class OtlpConfig:
    enabled: bool = True
    endpoint: str = "localhost:4317"
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    insecure: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    compression: Literal["gzip", "none"] = "gzip"
    max_request_size: Size = Size(4 * 1024 * 1024)
    timeout: Duration = Duration(10)
    retry_on_failure: RetryConfig = field(default_factory=RetryConfig)
    sending_queue: QueueConfig = field(default_factory=QueueConfig)


@dataclass(frozen=True)
class PrometheusConfig:
    enabled: bool = True


@dataclass(frozen=True)
class ExportersConfig:
    otlp: OtlpConfig = field(default_factory=OtlpConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)


@dataclass(frozen=True)
class TracesConfig:
    enabled: bool = True
    sampling_ratio: float = 1.0


@dataclass(frozen=True)
class MetricsConfig:
    export_interval: Duration = Duration(10)
    sets: list[str] = field(default_factory=lambda: ["http", "servicegraph"])
    temporality: Literal["cumulative", "delta"] = "cumulative"
    expire_after: Duration = Duration(15 * 60)
    instance_id: str | None = None  # None: host:port (the pod's name in Kubernetes)


@dataclass(frozen=True)
class HttpConfig:
    listen: str = "0.0.0.0:9464"
    tls: HttpTlsConfig = field(default_factory=HttpTlsConfig)


@dataclass(frozen=True)
class TopologyConfig:
    """The /topology page's links and health colours (as Kiali's defaults)."""

    trace_url: str | None = None  # ${service}, ${peer}, ${start}, ${end} (Unix milliseconds)
    degraded_error_rate: float = 0.001  # an edge or node above it is drawn degraded
    failure_error_rate: float = 0.2  # above it, failing


TRACE_URL_PLACEHOLDERS = ("${service}", "${peer}", "${start}", "${end}")


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


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


MAX_DURATION_TEXT = 64
"""Characters of a duration's text read at most; a longer one is invalid."""


def parse_duration(value: Any) -> float | None:
    """Seconds from ``"1m30s"``-style text (or a bare number of seconds); None if invalid.

    Linear in the text's length: each part is matched where the last one ended.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if 0 <= value < math.inf else None
    if not isinstance(value, str) or len(value) > MAX_DURATION_TEXT or not value.strip():
        return None
    text = value.strip()
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total


_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?")
_UNIT_BYTES = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
}


def parse_size(value: Any) -> int | None:
    """Bytes from ``"4MiB"``-style text or a whole number; None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str) or len(value) > MAX_DURATION_TEXT:
        return None
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        return None
    return int(match.group(1)) * _UNIT_BYTES[match.group(2)]


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def split_hostport(text: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` into parts; None when it is not one (the port: one to five
    ASCII digits, at most 65535). The one parser of a listen address, and of the addresses Envoy's
    OpenTelemetry logger writes as text."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or len(port) > 5 or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host, int(port)) if host else None


TLS_VERSIONS = ("1.2", "1.3")
"""``receiver.tls.min_version`` values (the OpenTelemetry Collector's ``configtls`` names)."""


def _check_tls(path: str, tls: TlsConfig | HttpTlsConfig) -> list[str]:
    """Both files or neither, each readable, the key the certificate's, a CA file that parses."""
    import ssl  # noqa: PLC0415 - only configurations with TLS need it

    if not tls.enabled:
        if isinstance(tls, TlsConfig) and tls.client_ca_file:
            return [f"{path}.client_ca_file: needs cert_file and key_file (mutual TLS is TLS first)"]
        return []
    problems = []
    for key in ("cert_file", "key_file") + (("client_ca_file",) if isinstance(tls, TlsConfig) else ()):
        name = getattr(tls, key)
        if key != "client_ca_file" and not name:
            problems.append(f"{path}.{key}: must be set with the other of cert_file and key_file")
        elif name and not os.access(name, os.R_OK):
            problems.append(f"{path}.{key}: cannot read {name}")
    if problems:
        return problems
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls.cert_file or "", tls.key_file or "")
    except (ssl.SSLError, OSError) as exc:
        problems.append(
            f"{path}.key_file: not the key of {tls.cert_file}, or not a PEM key and certificate ({exc})"
        )
    if isinstance(tls, TlsConfig) and tls.client_ca_file:
        try:
            ssl.create_default_context(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"{path}.client_ca_file: not PEM certificates ({exc})")
    return problems


MIN_REQUEST_SIZE = 64 * 1024
"""The smallest ``max_request_size``: one span or histogram point, with its resource, fits many times over."""


def _check_values(config: Config) -> list[str]:
    problems = []
    for key, listen in (
        ("receiver.listen", config.receiver.listen),
        ("http.listen", config.http.listen),
    ):
        if split_hostport(listen) is None:
            problems.append(f"{key}: must be host:port, got {listen!r}")
    for i, name in enumerate(config.analyzers):
        if name not in ANALYZERS:
            problems.append(f"analyzers[{i}]: unknown analyzer {name!r} (known: {', '.join(ANALYZERS)})")
    if len(set(config.analyzers)) != len(config.analyzers):
        problems.append("analyzers: an analyzer is listed twice")
    for i, name in enumerate(config.metrics.sets):
        if name not in METRIC_SETS:
            problems.append(
                f"metrics.sets[{i}]: unknown metric set {name!r} (known: {', '.join(METRIC_SETS)})"
            )
    if not 0.0 <= config.traces.sampling_ratio <= 1.0:
        problems.append(f"traces.sampling_ratio: must be between 0 and 1, got {config.traces.sampling_ratio}")
    if config.metrics.export_interval <= 0:
        problems.append("metrics.export_interval: must be longer than 0s")
    otlp = config.exporters.otlp
    if otlp.enabled and not otlp.endpoint.strip():
        problems.append("exporters.otlp.endpoint: must not be empty")
    if otlp.sending_queue.queue_size < 1:
        problems.append("exporters.otlp.sending_queue.queue_size: must be at least 1")
    if otlp.sending_queue.num_consumers < 1:
        problems.append("exporters.otlp.sending_queue.num_consumers: must be at least 1")
    topology = config.topology
    if topology.trace_url is not None:
        unknown = set(re.findall(r"\$\{[^}]*\}", topology.trace_url)) - set(TRACE_URL_PLACEHOLDERS)
        if not topology.trace_url.startswith(("http://", "https://")):
            problems.append("topology.trace_url: must be an http:// or https:// URL template")
        elif unknown:
            problems.append(
                f"topology.trace_url: unknown placeholder {sorted(unknown)[0]}"
                f" (known: {', '.join(TRACE_URL_PLACEHOLDERS)})"
            )
    if not 0 <= topology.degraded_error_rate < topology.failure_error_rate <= 1:
        problems.append(
            "topology.degraded_error_rate, topology.failure_error_rate: need 0 <= degraded < failure <= 1"
        )
    queue = otlp.sending_queue
    if queue.storage is not None and not queue.storage.strip():
        problems.append("exporters.otlp.sending_queue.storage: must be a directory, or null for memory")
    if queue.storage is not None and queue.max_storage_size < 2 * otlp.max_request_size:
        problems.append(
            "exporters.otlp.sending_queue.max_storage_size: must hold at least two requests"
            f" of max_request_size ({2 * otlp.max_request_size} bytes)"
        )
    if otlp.max_request_size < MIN_REQUEST_SIZE:
        problems.append(f"exporters.otlp.max_request_size: must be at least {MIN_REQUEST_SIZE // 1024}KiB")
    if otlp.timeout <= 0:
        problems.append("exporters.otlp.timeout: must be longer than 0s")
    from .analysis.k8s.naming import NameRule, RuleError  # noqa: PLC0415 - the rule's own parser

    try:
        NameRule(config.k8s.service_name_rule)
    except RuleError as exc:
        problems.append(f"k8s.service_name_rule: {exc}")
    for path, labels in (
        ("service_name_labels", config.service_name_labels),
        ("mx_mesh.service_name_labels", config.mx_mesh.service_name_labels or []),
    ):
        for i, label in enumerate(labels):
            if not label.strip():
                problems.append(f"{path}[{i}]: must not be empty")
    problems.extend(_check_tls("receiver.tls", config.receiver.tls))
    problems.extend(_check_tls("http.tls", config.http.tls))
    if config.receiver.tls.min_version not in TLS_VERSIONS:
        problems.append(
            f'receiver.tls.min_version: must be "1.2" or "1.3", got {config.receiver.tls.min_version!r}'
        )
    if config.log_level.lower() not in LOG_LEVELS:
        problems.append(f"log_level: must be one of {', '.join(LOG_LEVELS)}, got {config.log_level!r}")
    return problems
