"""Configuration: defaults, strict validation with key paths, environment expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from als2otel import config as cfg

SAMPLE = Path(__file__).resolve().parent.parent / "config" / "als2otel.yaml"


class TestDefaults:
    def test_sample_file_equals_code_defaults(self) -> None:
        """config/als2otel.yaml documents every key with exactly the code's default."""
        assert cfg.load(SAMPLE, environ={}) == cfg.Config()

    def test_sample_file_names_every_key(self) -> None:
        """Every leaf key of the schema appears in the sample file."""
        import dataclasses

        import yaml

        raw = yaml.safe_load(SAMPLE.read_text())

        def leaves(cls: type, node: dict, path: str) -> list[str]:
            missing = []
            for f in dataclasses.fields(cls):
                key = f"{path}{f.name}"
                if f.name not in node:
                    missing.append(key)
                elif dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None):
                    missing += leaves(f.type, node[f.name], key + ".")
            return missing

        assert leaves(cfg.Config, raw, "") == []

    def test_no_file_gives_defaults(self) -> None:
        """serve without --config runs on the documented defaults."""
        config = cfg.load(None, environ={})
        assert config.receiver.listen == "0.0.0.0:11800"
        assert config.http.listen == "0.0.0.0:9464"
        assert config.exporters.otlp.endpoint == "localhost:4317"
        assert config.shutdown_timeout == 10.0


class TestValidation:
    def test_every_problem_is_reported_with_its_path(self) -> None:
        """One pass reports unknown keys, wrong types and bad values, each with its key path."""
        with pytest.raises(cfg.ConfigError) as caught:
            cfg.parse(
                {
                    "receiver": {"listen": "nope", "lisen": "x"},
                    "exporters": {"otlp": {"endpoint": 4317, "protocol": "thrift"}},
                    "traces": {"sampling_ratio": 2},
                    "metrics": {"export_interval": "soon", "sets": ["http", "bogus"]},
                    "analyzers": ["mx-mesh", "zipkin"],
                    "mx_mesh": {"service_name_labels": ["app", " "]},
                    "typo": 1,
                },
                {},
            )
        problems = caught.value.problems
        for path in (
            "receiver.lisen",
            "receiver.listen",
            "exporters.otlp.endpoint",
            "exporters.otlp.protocol",
            "traces.sampling_ratio",
            "metrics.export_interval",
            "metrics.sets[1]",
            "analyzers[1]",
            "mx_mesh.service_name_labels[1]",
            "typo",
        ):
            assert any(p.startswith(f"{path}:") for p in problems), (path, problems)

    def test_top_level_must_be_a_mapping(self) -> None:
        """A YAML list as the whole file is an error, not a crash."""
        with pytest.raises(cfg.ConfigError):
            cfg.parse(["a"], {})

    def test_unreadable_and_malformed_files(self, tmp_path: Path) -> None:
        """A missing file and broken YAML each give one clear problem."""
        with pytest.raises(cfg.ConfigError, match="cannot read"):
            cfg.load(tmp_path / "missing.yaml")
        bad = tmp_path / "bad.yaml"
        bad.write_text("receiver: [unclosed\n")
        with pytest.raises(cfg.ConfigError, match="not valid YAML"):
            cfg.load(bad)

    @pytest.mark.parametrize(
        ("text", "seconds"), [("10s", 10.0), ("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0), (5, 5.0)]
    )
    def test_durations(self, text: object, seconds: float) -> None:
        """Durations are written as the Collector writes them."""
        assert cfg.parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["", "10", "s", "10 s", "-1s", "1d", True])
    def test_bad_durations(self, text: object) -> None:
        """Anything else is not a duration (a bare number string has no unit)."""
        assert cfg.parse_duration(text) is None


class TestEnvironment:
    def test_env_references_expand(self) -> None:
        """${env:VAR} and ${env:VAR:-default} expand; a lone reference keeps the YAML type."""
        config = cfg.parse(
            {
                "exporters": {
                    "otlp": {"endpoint": "${env:COLLECTOR}:4317", "insecure": "${env:INSECURE:-false}"}
                },
                "metrics": {"export_interval": "${env:INTERVAL:-30s}"},
            },
            {"COLLECTOR": "otel.example"},
        )
        assert config.exporters.otlp.endpoint == "otel.example:4317"
        assert config.exporters.otlp.insecure is False
        assert config.metrics.export_interval == 30.0

    def test_name_rules_are_left_alone(self) -> None:
        """Only ${env:...} expands: the k8s name rules keep their ${service.metadata.name}."""
        rule = "${service.metadata.name}-${pod.metadata.labels.version}"
        config = cfg.parse({"k8s": {"service_name_rule": rule}}, {})
        assert config.k8s.service_name_rule == rule

    def test_unset_variable_without_default_is_an_error(self) -> None:
        """A missing variable is named with the key that needs it."""
        with pytest.raises(cfg.ConfigError, match=r"exporters\.otlp\.endpoint: environment variable NOPE"):
            cfg.parse({"exporters": {"otlp": {"endpoint": "${env:NOPE}"}}}, {})

    def test_standard_otlp_variables_fill_what_the_file_leaves_out(self) -> None:
        """OTEL_EXPORTER_OTLP_* supply values the file does not set, and never override it."""
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%3Dcret,x-team=mesh",
            "OTEL_EXPORTER_OTLP_INSECURE": "false",
        }
        otlp = cfg.parse({}, env).exporters.otlp
        assert otlp.endpoint == "https://collector:4318"
        assert otlp.protocol == "http/protobuf"
        assert otlp.headers == {"api-key": "s=cret", "x-team": "mesh"}
        assert otlp.insecure is False
        pinned = cfg.parse({"exporters": {"otlp": {"endpoint": "file:4317"}}}, env).exporters.otlp
        assert pinned.endpoint == "file:4317"

    def test_http_protocol_defaults_to_the_http_port(self) -> None:
        """Choosing http/protobuf without an endpoint talks to localhost:4318."""
        otlp = cfg.parse({"exporters": {"otlp": {"protocol": "http/protobuf"}}}, {}).exporters.otlp
        assert otlp.endpoint == "localhost:4318"


class TestDeprecatedKeys:
    def test_mx_mesh_service_name_labels_still_works(self, caplog: pytest.LogCaptureFixture) -> None:
        """The old mx_mesh.service_name_labels fills the top-level key, with a deprecation warning."""
        config = cfg.parse({"mx_mesh": {"service_name_labels": ["team"]}}, {})
        assert config.service_name_labels == ["team"]
        assert any("deprecated" in r.getMessage() for r in caplog.records)

    def test_the_top_level_key_wins(self) -> None:
        """With both keys set, the top-level one is used."""
        config = cfg.parse({"service_name_labels": ["a"], "mx_mesh": {"service_name_labels": ["b"]}}, {})
        assert config.service_name_labels == ["a"]


class TestTopologyPage:
    def test_trace_url_keeps_its_placeholders(self) -> None:
        """The template's ${service}, ${peer}, ${start} and ${end} are left for the page to fill."""
        url = "http://jaeger:16686/search?service=${service}&start=${start}000&end=${end}000"
        assert cfg.parse({"topology": {"trace_url": url}}, {}).topology.trace_url == url

    @pytest.mark.parametrize(
        ("section", "says"),
        [
            ({"trace_url": "jaeger:16686/search"}, "http:// or https://"),
            ({"trace_url": "http://j/${svc}"}, "unknown placeholder ${svc}"),
            ({"degraded_error_rate": 0.5, "failure_error_rate": 0.2}, "degraded < failure"),
        ],
    )
    def test_bad_settings_are_reported(self, section: dict[str, object], says: str) -> None:
        """A template that is no URL or names an unknown placeholder, thresholds out of order."""
        with pytest.raises(cfg.ConfigError) as error:
            cfg.parse({"topology": section}, {})
        assert error.value.problems[0].startswith("topology.") and says in error.value.problems[0]
