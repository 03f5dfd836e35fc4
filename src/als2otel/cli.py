"""The ``als2otel`` command: serve, check-config, demo, --version."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from . import __version__
from . import config as cfg

EXIT_BAD_CONFIG = 2


def _load_or_report(path: str | None) -> cfg.Config | None:
    try:
        return cfg.load(path)
    except cfg.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    config = _load_or_report(args.file)
    if config is None:
        return EXIT_BAD_CONFIG
    print(f"{args.file}: ok")
    return 0


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _serve(config: cfg.Config) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if config.receiver.workers > 1:
        from . import workers

        return await workers.serve(config, stop)
    from .app import Bridge, run_bridge

    def ready() -> None:
        logging.getLogger("als2otel").info(
            "als2otel %s ready: ALS on %s, HTTP on %s",
            __version__,
            config.receiver.listen,
            config.http.listen,
        )

    return await run_bridge(Bridge(config), stop, started=ready)


def _serve_command(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_BAD_CONFIG
    _setup_logging(config.log_level)
    try:
        return asyncio.run(_serve(config))
    except OSError as exc:
        logging.getLogger("als2otel").error("cannot start: %s", exc)
        return 1


def _demo_command(args: argparse.Namespace) -> int:
    _setup_logging("warning")
    from .demo.run import run_demo

    try:
        return asyncio.run(run_demo(args.duration, args.http_listen, args.otlp_endpoint, args.rate))
    except (OSError, RuntimeError) as exc:
        print(f"als2otel demo: cannot start: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="als2otel", description="Envoy access logs in, OpenTelemetry out.")
    parser.add_argument("--version", action="version", version=f"als2otel {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the bridge")
    serve.add_argument("--config", metavar="FILE", help="YAML configuration (defaults apply without it)")
    serve.set_defaults(run=_serve_command)
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(run=_check_config)
    demo = commands.add_parser("demo", help="run bookinfo on real Envoys with the bridge, no cluster needed")
    demo.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)"
    )
    demo.add_argument("--otlp-endpoint", metavar="URL", help="also export OTLP/gRPC to this endpoint")
    demo.add_argument(
        "--http-listen", default="127.0.0.1:9464", metavar="HOST:PORT", help="topology page and /metrics"
    )
    demo.add_argument(
        "--rate", type=float, default=8.0, metavar="N", help="user requests per second (default 8)"
    )
    demo.set_defaults(run=_demo_command)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
