"""receiver.workers > 1: worker processes sharing the ALS port behind one supervising parent."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import yaml
from support import als, mesh
from support.net import free_port
from support.otlp_receiver import GrpcOtlpReceiver, Refusal, attributes
from support.waiting import eventually

from als2otel import config as cfg
from als2otel import workers
from als2otel.workers import Supervisor

STREAMS = 16


async def send_streams(port: int, per_stream: int) -> None:
    """``STREAMS`` streams on their own connections (the kernel spreads them over the workers)."""
    messages = [
        [
            als.http_message(
                [mesh.outbound(s * per_stream + i, start_ms=als.real_now_ms()) for i in range(per_stream)],
                mesh.productpage(),
            )
        ]
        for s in range(STREAMS)
    ]
    results = await asyncio.gather(*(als.send(f"127.0.0.1:{port}", m) for m in messages))
    assert results == [None] * STREAMS


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""  # not listening (yet)


def sample(page: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(line_start))


def worker_config(http_port: int, otlp: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "receiver": {"listen": "127.0.0.1:0", "workers": 2},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "analyzers": [],
        "exporters": {"otlp": {"endpoint": otlp or "127.0.0.1:1", "enabled": otlp is not None}},
        "metrics": {"export_interval": "0.5s"},
        **extra,
    }


@dataclasses.dataclass
class Supervised:
    """A supervisor under its supervision loop; once the block ends, how its stop went."""

    supervisor: Supervisor
    code: int | None = None
    stop_seconds: float = 0.0


@contextlib.asynccontextmanager
async def supervised(raw: dict[str, Any]) -> AsyncIterator[Supervised]:
    """Start a supervisor and its supervision loop; at the end, stop it as SIGTERM would."""
    supervisor = Supervisor(cfg.parse(raw, {}))
    await supervisor.start()
    stop = asyncio.Event()
    running = asyncio.ensure_future(supervisor.run(stop))
    outcome = Supervised(supervisor)
    try:
        yield outcome
    finally:
        started = time.monotonic()
        stop.set()
        outcome.code = await running
        outcome.stop_seconds = time.monotonic() - started


class TestSupervisor:
    async def test_workers_share_the_port_and_metrics_merge_exactly(self) -> None:
        """16 streams over two workers: both get some, and the parent's /metrics sums them exactly."""
        port = free_port()
        supervisor = Supervisor(cfg.parse(worker_config(port), {}))
        await supervisor.start()
        try:
            await send_streams(supervisor.als_port, 25)
            total = STREAMS * 25

            async def merged() -> str:
                return (await asyncio.to_thread(get, port, "/metrics"))[1]

            for _ in range(100):
                page = await merged()
                if sample(page, 'als2otel_calls_total{side="client"}') == total:
                    break
                await asyncio.sleep(0.1)
            assert sample(page, 'als2otel_entries_received_total{api_version="v3",log_type="http"}') == total
            assert sample(page, "http_client_request_duration_seconds_count{") == total
            buckets = [line for line in page.splitlines() if 'le="+Inf"' in line and "http_client" in line]
            assert sum(float(line.rsplit(" ", 1)[1]) for line in buckets) == total
            per_worker = [
                sample((await asyncio.to_thread(get, w.http_port, "/metrics"))[1], "als2otel_calls_total")
                for w in supervisor._workers
            ]
            assert sum(per_worker) == total and min(per_worker) > 0
            assert await asyncio.to_thread(get, port, "/readyz") == (200, "ready\n")
            # OTLP/HTTP logs on the parent's port are handed to a worker.
            from support.otlp_logs import export_request, post_logs, record_of

            records = [
                record_of(mesh.outbound(10_000 + i, start_ms=als.real_now_ms()), mesh.productpage())
                for i in range(5)
            ]
            status, _ = await asyncio.to_thread(post_logs, port, export_request(records).SerializeToString())
            assert status == 200
            for _ in range(100):
                page = await merged()
                if sample(page, 'als2otel_calls_total{side="client"}') == total + 5:
                    break
                await asyncio.sleep(0.1)
            assert sample(page, 'als2otel_entries_received_total{api_version="otlp",log_type="http"}') == 5
        finally:
            assert await supervisor.stop() == 0

    async def test_a_killed_worker_is_restarted(self) -> None:
        """SIGKILL to a worker: /readyz is 503 until it is back, the restart is counted."""
        port = free_port()
        async with supervised(worker_config(port)) as run:
            supervisor = run.supervisor
            os.kill(supervisor.worker_pids[0], signal.SIGKILL)
            statuses = []
            for _ in range(100):
                statuses.append((await asyncio.to_thread(get, port, "/readyz"))[0])
                if statuses[-1] == 200 and 503 in statuses:
                    break
                await asyncio.sleep(0.1)
            assert 503 in statuses and statuses[-1] == 200
            page = (await asyncio.to_thread(get, port, "/metrics"))[1]
            assert sample(page, "als2otel_worker_restarts_total") == 1
            await send_streams(supervisor.als_port, 5)
        assert run.code == 0


def test_sigterm_with_workers_delivers_every_span(tmp_path: Path) -> None:
    """`als2otel serve` with two workers: after SIGTERM every span received has arrived, the
    processes exit 0, and each worker wrote its metric series under its own identity."""
    otlp = GrpcOtlpReceiver().start()
    http_port = free_port()
    config = tmp_path / "c.yaml"
    als_port = free_port()
    raw = worker_config(http_port, otlp.endpoint, shutdown_timeout="5s")
    raw["receiver"]["listen"] = f"127.0.0.1:{als_port}"
    raw["metrics"]["instance_id"] = "bridge"
    config.write_text(yaml.safe_dump(raw))
    process = subprocess.Popen([sys.executable, "-m", "als2otel", "serve", "--config", str(config)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and get(http_port, "/readyz")[0] != 200:
            time.sleep(0.1)
        asyncio.run(send_streams(als_port, 20))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert len(otlp.received.spans()) == STREAMS * 20
        writers = {
            attributes(point.attributes).get("als2otel.instance")
            for request in otlp.received.metrics
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == "http.client.request.duration"
            for point in metric.histogram.data_points
        }
        assert writers == {"bridge-w0", "bridge-w1"}
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        otlp.stop()


def counting_samples(page: str) -> dict[str, float]:
    """The samples of a page's counters and histograms, by name and labels."""
    samples, counting = {}, False
    for line in page.splitlines():
        if line.startswith("# TYPE "):
            counting = line.split(" ")[3] in ("counter", "histogram")
        elif line and not line.startswith("#") and counting:
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


async def timed_get(port: int, path: str) -> tuple[int, float]:
    start = time.monotonic()
    status, _ = await asyncio.to_thread(get, port, path)
    return status, time.monotonic() - start


class TestWorkersUnderFailure:
    async def test_a_killed_worker_loses_nothing_uncounted_and_counters_never_go_backwards(self) -> None:
        """Entries every worker has read, then SIGKILL to one before it flushed its spans: every span
        either arrives or is counted as dropped (worker_died); the parent's merged counters after the
        restart are nowhere below what it served before."""
        otlp = GrpcOtlpReceiver().start()
        backend_down = True  # spans wait in the workers' queues until the victim is dead

        def unavailable(signal_name: str, request: Any) -> Refusal | None:
            return Refusal("UNAVAILABLE", 503, "down") if backend_down and signal_name == "traces" else None

        otlp.received.reply = unavailable
        port = free_port()
        try:
            async with supervised(worker_config(port, otlp.endpoint)) as run:
                supervisor = run.supervisor
                per_stream = 50
                sent = STREAMS * per_stream
                await send_streams(supervisor.als_port, per_stream)

                async def received() -> float:
                    pages = [
                        (await asyncio.to_thread(get, w.http_port, "/metrics"))[1]
                        for w in supervisor._workers
                    ]
                    return sum(sample(page, "als2otel_entries_received_total") for page in pages)

                while await received() < sent:
                    await asyncio.sleep(0.01)
                before = counting_samples((await asyncio.to_thread(get, port, "/metrics"))[1])
                await asyncio.sleep(3 * workers.TICK)  # a tick after the last entry was read
                victim = supervisor._workers[0]
                assert (
                    victim.state.held()["traces"] + victim.state.held()["entries"] > 0
                )  # spans not yet sent
                os.kill(victim.process.pid, signal.SIGKILL)
                backend_down = False
                for _ in range(200):
                    if (await asyncio.to_thread(get, port, "/readyz"))[0] == 200 and victim.failures:
                        break
                    await asyncio.sleep(0.05)
                after_page = (await asyncio.to_thread(get, port, "/metrics"))[1]
                after = counting_samples(after_page)
                assert {
                    key: (value, after.get(key)) for key, value in before.items() if after.get(key, 0) < value
                } == {}
                counted = sample(
                    after_page, 'als2otel_dropped_total{signal="traces",reason="worker_died"}'
                ) + sample(after_page, 'als2otel_dropped_total{signal="entries",reason="worker_died"}')
                spans_of_the_living = sent - counted
                assert await asyncio.to_thread(
                    otlp.received.wait_for, lambda: len(otlp.received.spans()) >= spans_of_the_living, 20
                )
                arrived = len(otlp.received.spans())
                assert arrived <= sent and counted > 0
                assert arrived + counted >= sent, (arrived, counted, sent)
                assert sample(after_page, 'als2otel_worker_restarts_total{reason="exited"}') == 1
        finally:
            otlp.stop()

    async def test_a_stopped_worker_stalls_no_answer_of_the_parent_and_is_replaced(
        self, monkeypatch: Any
    ) -> None:
        """SIGSTOP to a worker: /healthz, /readyz answer within a second, /metrics and /api/topology
        within the time a worker is asked for; once it has been silent for WORKER_TIMEOUT /healthz is
        503, then it is killed, replaced and counted. Eight OTLP/HTTP posts at once starve nothing."""
        monkeypatch.setattr(workers, "WORKER_TIMEOUT", 2.0)
        port = free_port()
        supervisor = Supervisor(cfg.parse(worker_config(port), {}))
        await supervisor.start()
        try:
            stuck = supervisor._workers[0]
            os.kill(stuck.process.pid, signal.SIGSTOP)
            from support.otlp_logs import export_request, post_logs, record_of

            body = export_request(
                [
                    record_of(mesh.outbound(i, start_ms=als.real_now_ms()), mesh.productpage())
                    for i in range(200)
                ]
            ).SerializeToString()
            posts = [asyncio.to_thread(post_logs, port, body) for _ in range(8)]
            probes = [timed_get(port, "/healthz"), timed_get(port, "/readyz")]
            answers = await asyncio.gather(
                *probes, timed_get(port, "/metrics"), timed_get(port, "/api/topology")
            )
            healthz, readyz, metrics, topology = answers
            assert healthz[0] == 200 and healthz[1] < 1 and readyz[1] < 1
            assert metrics[0] == 200 and metrics[1] < workers.ASK_TIMEOUT + 1
            assert topology[0] == 200 and topology[1] < workers.ASK_TIMEOUT + 1
            assert {status for status, _ in await asyncio.gather(*posts)} <= {200, 503}
            await asyncio.sleep(workers.WORKER_TIMEOUT)
            status, seconds = await timed_get(port, "/healthz")
            assert status == 503 and seconds < 1
            assert (await timed_get(port, "/readyz"))[0] == 503
            supervisor.supervise(time.monotonic())  # what the supervision loop does every 0.2 s
            assert not stuck.alive() and stuck.restart_at is not None
            assert supervisor.stats.worker_restarts.get("unresponsive") == 1
            assert (await timed_get(port, "/healthz"))[0] == 200
            for _ in range(300):
                supervisor.supervise(time.monotonic())
                if (await asyncio.to_thread(get, port, "/readyz"))[0] == 200:
                    break
                await asyncio.sleep(0.05)
            assert (await asyncio.to_thread(get, port, "/readyz"))[0] == 200
        finally:
            await supervisor.stop()

    async def test_sigterm_with_a_stopped_worker_ends_on_time(self) -> None:
        """A stopped worker is woken with SIGTERM (SIGCONT) and flushes: the parent ends within
        shutdown_timeout and the kill's bound."""
        port = free_port()
        supervisor = Supervisor(cfg.parse(worker_config(port, shutdown_timeout="2s"), {}))
        await supervisor.start()
        os.kill(supervisor._workers[0].process.pid, signal.SIGSTOP)
        start = time.monotonic()
        await supervisor.stop()
        assert time.monotonic() - start < 2 + 2 * workers.KILL_WAIT + 1
        assert [w.process.exitcode for w in supervisor._workers] in ([0, 0], [-signal.SIGKILL, 0])

    async def test_restart_backoff_never_holds_supervision_or_a_stop(self, monkeypatch: Any) -> None:
        """A worker that died often waits out its backoff while the others are supervised and a stop
        ends at once; after a healthy period its failures no longer count."""
        monkeypatch.setattr(workers, "HEALTHY_RESET", 1.0)
        port = free_port()
        async with supervised(worker_config(port)) as run:
            flaky, steady = run.supervisor._workers
            os.kill(flaky.process.pid, signal.SIGKILL)
            flaky.process.join(5)  # dead before supervision looks again: no healthy tick resets the count
            flaky.failures = 6
            await asyncio.sleep(0.5)
            assert flaky.restart_at is not None and flaky.restart_at - time.monotonic() > 20
            os.kill(steady.process.pid, signal.SIGKILL)  # supervised meanwhile: back after 1 s
            assert await eventually(lambda: steady.failures == 1, timeout=10)  # its death counted
            # Restarted, and after a healthy second (HEALTHY_RESET, counted from its start) its
            # failure no longer counts.
            assert await eventually(lambda: steady.alive() and steady.http_port and steady.failures == 0)
        assert run.stop_seconds < 5

    async def test_a_request_that_cannot_succeed_is_not_answered_retryable(self) -> None:
        """Through the parent: bytes that are no request are a 400, a request past the size bound a
        413, a hostile record a 200 with that record rejected; never 503."""
        port = free_port()
        supervisor = Supervisor(cfg.parse(worker_config(port), {}))
        await supervisor.start()
        try:
            from support.otlp_logs import export_request, post_logs, record_of

            assert (await asyncio.to_thread(post_logs, port, b"\xff\xff\xff"))[0] == 400
            assert (await asyncio.to_thread(post_logs, port, b"\x0a" * (5 * 1024 * 1024)))[0] == 413
            attributes, at = record_of(mesh.outbound(0, start_ms=als.real_now_ms()), mesh.productpage())
            hostile = ({**attributes, "http.response.status_code": "99999999999"}, at)
            status, body = await asyncio.to_thread(
                post_logs, port, export_request([hostile]).SerializeToString()
            )
            from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

            assert status == 200
            assert (
                logs_service_pb2.ExportLogsServiceResponse.FromString(
                    body
                ).partial_success.rejected_log_records
                == 1
            )
        finally:
            await supervisor.stop()


class TestLoadSharing:
    async def test_eight_busy_connections_are_shared_evenly(self) -> None:
        """Eight connections at once (two gateways with four Envoy worker threads each): the parent
        hands four to each worker, counted per worker, and neither does more than 60% of the work
        (the kernel's hash once gave one worker six)."""
        port = free_port()
        supervisor = Supervisor(cfg.parse(worker_config(port), {}))
        await supervisor.start()
        try:
            per_stream, streams = 200, 8
            messages = [
                [
                    als.http_message(
                        [
                            mesh.outbound(s * per_stream + i, start_ms=als.real_now_ms())
                            for i in range(per_stream)
                        ],
                        mesh.productpage(),
                    )
                ]
                * 5
                for s in range(streams)
            ]
            results = await asyncio.gather(
                *(als.send(f"127.0.0.1:{supervisor.als_port}", m) for m in messages)
            )
            assert results == [None] * streams
            handed = supervisor.stats.worker_connections
            assert (handed.get("0"), handed.get("1")) == (4, 4)
            work = []
            for worker in supervisor._workers:
                page = (await asyncio.to_thread(get, worker.http_port, "/metrics"))[1]
                work.append(sample(page, "als2otel_entries_received_total"))
            assert sum(work) == streams * per_stream * 5
            assert max(work) <= 0.6 * sum(work), work
            merged = (await asyncio.to_thread(get, port, "/metrics"))[1]
            assert sample(merged, 'als2otel_worker_connections_total{worker="0"}') == 4
        finally:
            await supervisor.stop()

    async def test_a_worker_over_its_share_sheds_connections_until_the_split_evens_out(self) -> None:
        """Eight connections dealt four and four while idle; then the four on worker 0 grow busy (load
        that moved after the deal). Worker 0 sheds two of them (a GOAWAY; their streams end right
        after a message), their clients reconnect as Envoy does, the parent deals them to worker 1,
        and the split evens out: counted per worker in /metrics, neither doing over 60% after."""
        port = free_port()
        busy = asyncio.Event()
        done = asyncio.Event()
        sent = [0] * 8

        async def client(number: int, channel: Any) -> None:
            """Streams one after another on one channel: identifier first, then (once busy, for the
            even ones) 50 entries every 50 ms; a stream the bridge ends is followed by a new one."""

            async def messages() -> Any:
                yield als.http_message([], mesh.productpage())
                while not done.is_set():
                    await asyncio.sleep(0.05)
                    if busy.is_set() and number % 2 == 0:
                        first = number * 10_000_000 + sent[number]
                        sent[number] += 50
                        entries = [mesh.outbound(first + i, start_ms=als.real_now_ms()) for i in range(50)]
                        yield als.http_message(entries)

            while not done.is_set():
                call = channel.stream_unary(als.V3_METHOD, request_serializer=als._serialize)
                await call(messages())

        async with supervised(worker_config(port)) as outcome:
            supervisor = outcome.supervisor
            handed = supervisor.stats.worker_connections
            channels = [
                grpc.aio.insecure_channel(
                    f"127.0.0.1:{supervisor.als_port}", options=[("grpc.use_local_subchannel_pool", 1)]
                )
                for _ in range(8)
            ]
            clients = []
            for number, channel in enumerate(channels):
                clients.append(asyncio.ensure_future(client(number, channel)))
                assert await eventually(lambda n=number: handed.get("0") + handed.get("1") == n + 1, 10)
            assert (handed.get("0"), handed.get("1")) == (4, 4)  # even ones on worker 0, idle all
            busy.set()
            shed = supervisor.stats.worker_connections_shed
            try:
                assert await eventually(lambda: shed.get("0") >= 1, 30)
                await asyncio.sleep(workers.RATE_WINDOW)  # the moved connections measured where they went
                before = [await received(w) for w in supervisor._workers]
                await asyncio.sleep(3)
                after = [await received(w) for w in supervisor._workers]
            finally:
                done.set()
                await asyncio.gather(*clients, return_exceptions=True)
                for channel in channels:
                    await channel.close()
            work = [b - a for a, b in zip(before, after, strict=True)]
            assert max(work) <= 0.6 * sum(work), work
            assert (shed.get("0"), shed.get("1")) == (2, 0)  # half of worker 0's four busy connections
            assert handed.get("1") >= 6  # dealt again, to the idler worker
            page = (await asyncio.to_thread(get, port, "/metrics"))[1]
            assert sample(page, 'als2otel_worker_connections_shed_total{worker="0"}') == 2
            assert sample(page, 'als2otel_streams_ended_total{reason="rebalance"}') >= 2


async def received(worker: Any) -> float:
    page = (await asyncio.to_thread(get, worker.http_port, "/metrics"))[1]
    return sample(page, "als2otel_entries_received_total")
