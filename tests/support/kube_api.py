"""A small Kubernetes API server for tests: the real list/watch protocol over HTTP.

LIST with ``limit``/``continue`` pagination and ``metadata.resourceVersion``;
WATCH (``?watch=true``) streaming JSON events from a ``resourceVersion``, with
``BOOKMARK`` events when asked, ``ERROR`` 410 for a version older than the
compacted history, and ``timeoutSeconds``; bearer-token authentication. It runs
on its own thread and event loop, so the real ``kubernetes`` client can talk to
it from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

PATHS = {
    "/api/v1/pods": "Pod",
    "/api/v1/services": "Service",
    "/api/v1/nodes": "Node",
    "/apis/discovery.k8s.io/v1/endpointslices": "EndpointSlice",
}


class FakeKubeApi:
    def __init__(self, token: str = "s3cret-token") -> None:
        self.token = token
        self.version = 1000
        self.oldest = 1000
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in PATHS.values()}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self._history_base = 0  # events compacted away before history[0]
        self.requests: Counter[tuple[str, str]] = Counter()  # (kind, "list"|"watch")
        self._loop = asyncio.new_event_loop()
        self._changed: asyncio.Condition | None = None
        self._watches: set[web.StreamResponse] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeKubeApi:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._changed = asyncio.Condition()
        app = web.Application()
        for path in PATHS:
            app.router.add_get(path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        async def stop() -> None:
            self._drop()
            assert self._runner is not None
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def kubeconfig(self, directory: Path, token: str | None = None) -> Path:
        path = directory / "kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "test",
                    "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
                    "users": [{"name": "test", "user": {"token": token or self.token}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                }
            )
        )
        return path

    # -- changes, from the test's thread --------------------------------------------------------

    def put(self, obj: dict[str, Any]) -> None:
        self._call(self._change, obj["kind"], obj, False)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        obj = self.objects[kind].get((namespace, name))
        assert obj is not None, (kind, namespace, name)
        self._call(self._change, kind, obj, True)

    def compact(self) -> None:
        """Forget the history: watches from an older version get 410 Gone."""

        def compact() -> None:
            self._history_base += len(self.history)
            self.history.clear()
            self.oldest = self.version

        self._loop.call_soon_threadsafe(compact)

    def drop_watches(self) -> None:
        """Close every open watch connection, as an API server restart would."""
        self._loop.call_soon_threadsafe(self._drop)

    def _drop(self) -> None:
        for response in list(self._watches):
            transport = response._req.transport if response._req else None  # type: ignore[attr-defined]
            if transport is not None:
                transport.close()
        self._watches.clear()

    def _call(self, func: Any, *args: Any) -> None:
        async def run() -> None:
            await func(*args)

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    async def _change(self, kind: str, obj: dict[str, Any], deleted: bool) -> None:
        assert self._changed is not None
        self.version += 1
        obj = json.loads(json.dumps(obj))
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        existed = key in self.objects[kind]
        if deleted:
            self.objects[kind].pop(key, None)
        else:
            self.objects[kind][key] = obj
        event = "DELETED" if deleted else ("MODIFIED" if existed else "ADDED")
        self.history.append((self.version, kind, event, obj))
        async with self._changed:
            self._changed.notify_all()

    # -- HTTP -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = PATHS[request.path]
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "Unauthorized",
                    "code": 401,
                },
                status=401,
            )
        if request.query.get("watch") in ("true", "1"):
            self.requests[(kind, "watch")] += 1
            return await self._watch(request, kind)
        self.requests[(kind, "list")] += 1
        limit = int(request.query.get("limit", "0") or 0)
        token = request.query.get("continue", "")
        offset, version = (int(token.split(":")[0]), token.split(":")[1]) if token else (0, str(self.version))
        items = sorted(
            self.objects[kind].values(),
            key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]),
        )
        page = items[offset : offset + limit] if limit else items[offset:]
        metadata: dict[str, Any] = {"resourceVersion": version}
        if limit and offset + limit < len(items):
            metadata["continue"] = f"{offset + limit}:{version}"
        return web.json_response(
            {"kind": f"{kind}List", "apiVersion": "v1", "metadata": metadata, "items": page}
        )

    async def _watch(self, request: web.Request, kind: str) -> web.StreamResponse:
        assert self._changed is not None
        since = int(request.query.get("resourceVersion") or self.version)
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(request.query.get("timeoutSeconds", "300"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        self._watches.add(response)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if since < self.oldest:
                status = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "Expired",
                    "message": f"too old resource version: {since} ({self.oldest})",
                    "code": 410,
                }
                await response.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
                return response
            position = self._history_base  # absolute index of the next history entry to look at
            while loop.time() < deadline:
                start = max(position - self._history_base, 0)
                pending = self.history[start:]
                position = self._history_base + len(self.history)
                for version, event_kind, event, obj in pending:
                    if event_kind == kind and version > since:
                        await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")
                        since = version
                if bookmarks:
                    mark = {
                        "kind": kind,
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(self.version)},
                    }
                    await response.write(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
                    since = max(since, self.version)
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), timeout=min(1.0, deadline - loop.time()))
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            self._watches.discard(response)
        return response


def pod(
    namespace: str,
    name: str,
    ip: str,
    labels: dict[str, str],
    *,
    replicaset: str = "",
    host_network: bool = False,
    phase: str = "Running",
    ips: list[str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if replicaset:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": replicaset,
                "controller": True,
                "uid": "x",
            }
        ]
    all_ips = ips or [ip]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": {"hostNetwork": host_network, "containers": [{"name": "app", "image": "x"}]},
        "status": {"phase": phase, "podIP": all_ips[0], "podIPs": [{"ip": i} for i in all_ips]},
    }


def service(
    namespace: str, name: str, selector: dict[str, str], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {"selector": selector, "ports": [{"port": 9080}]},
    }


def endpoint_slice(
    namespace: str, service_name: str, pods: list[tuple[str, str, bool]], suffix: str = "abcde"
) -> dict[str, Any]:
    """``pods``: (pod name, ip, ready)."""
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": f"{service_name}-{suffix}",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "name": name, "namespace": namespace},
            }
            for name, ip, ready in pods
        ],
    }


def node(name: str, ip: str) -> dict[str, Any]:
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]
        },
    }
