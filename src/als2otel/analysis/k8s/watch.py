"""The list/watch cache: keeps a :class:`KubeIndex` live with the official ``kubernetes`` client.

One thread per resource (Pods, Services, EndpointSlices, Nodes) lists with
pagination (``limit``/``continue``), then watches from the list's
``resourceVersion`` with bookmarks, resuming from the last version it saw.
A ``410 Gone`` relists; any other error backs off (1 s doubling to 30 s) and
resumes. Events are applied to the index on the event loop as they arrive, so
lookups stay plain dict reads and never wait on the API server. Needs get,
list and watch on those four resources, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from ...stats import LogLimiter, Stats
from .index import KubeIndex

log = logging.getLogger("als2otel.k8s")

PAGE_SIZE = 500
WATCH_SECONDS = 300
"""Server-side timeout of one watch request; the watch then resumes from the last version."""
BACKOFF_INITIAL, BACKOFF_MAX = 1.0, 30.0


_SERVICE_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class NoKubernetesConfig(Exception):
    """No in-cluster service account, $KUBECONFIG or ~/.kube/config was found."""


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """As config/als2otel.yaml says: the file given, else in-cluster, $KUBECONFIG, ~/.kube/config."""
    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        elif os.environ.get("KUBERNETES_SERVICE_HOST") and Path(_SERVICE_TOKEN).exists():
            config.load_incluster_config(client_configuration=configuration)
        else:
            path = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
            if not Path(path.split(os.pathsep)[0]).exists():
                raise NoKubernetesConfig(f"no in-cluster service account and no kubeconfig at {path}")
            config.load_kube_config(config_file=path, client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError) as exc:
        raise NoKubernetesConfig(str(exc)) from exc
    return client.ApiClient(configuration)


WATCHED = {
    "Node": ("", "nodes"),
    "Service": ("", "services"),
    "EndpointSlice": ("discovery.k8s.io", "endpointslices"),
    "Pod": ("", "pods"),
}
"""What the cache lists and watches, as (API group, resource): the RBAC it needs (get, list, watch)."""


def _resources(api: client.ApiClient) -> dict[str, Callable[..., Any]]:
    core, discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)
    return {
        "Node": core.list_node,
        "Service": core.list_service_for_all_namespaces,
        "EndpointSlice": discovery.list_endpoint_slice_for_all_namespaces,
        "Pod": core.list_pod_for_all_namespaces,
    }


class KubeCache:
    """Feeds ``index`` from the API server; ``synced`` once every resource's first list is in."""

    def __init__(self, api: client.ApiClient, index: KubeIndex, stats: Stats) -> None:
        self.index = index
        self._api = api
        self._stats = stats
        self._limiter = LogLimiter(log, 30.0)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listed: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.synced = asyncio.Event()
        self.events_applied = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for kind, list_call in _resources(self._api).items():
            thread = threading.Thread(
                target=self._run, args=(kind, list_call), name=f"k8s-{kind}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        self._api.close()

    # -- on the event loop -----------------------------------------------------------------------

    def _replace(self, kind: str, objects: list[dict[str, Any]]) -> None:
        self.index.replace(kind, objects)
        self._listed.add(kind)
        if len(self._listed) == 4:
            self.synced.set()

    def _apply(self, kind: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        for event, obj in events:
            self.index.apply(kind, event, obj)
        self.events_applied += len(events)

    def _post(self, func: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(func, *args)

    # -- on the resource's thread ----------------------------------------------------------------

    def _run(self, kind: str, list_call: Callable[..., Any]) -> None:
        backoff = BACKOFF_INITIAL
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._list(kind, list_call)
                version = self._watch(kind, list_call, version)
                backoff = BACKOFF_INITIAL
            except _Gone:
                version = ""  # relist
            except Exception as exc:  # the API server being away must never end the cache
                self._stats.k8s_errors.inc(kind)
                self._limiter.warning(
                    kind, "Kubernetes %s list/watch failed (%s); retrying in %.0fs", kind, exc, backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _list(self, kind: str, list_call: Callable[..., Any]) -> str:
        objects: list[dict[str, Any]] = []
        token = ""
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE_SIZE, "_preload_content": False, "_request_timeout": 60}
            if token:
                kwargs["_continue"] = token
            response = list_call(**kwargs)
            page = json.loads(response.data)
            objects.extend(page.get("items") or [])
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or ""
            if not token:
                version = str(metadata.get("resourceVersion", ""))
                break
        self._post(self._replace, kind, objects)
        log.info("listed %d %ss", len(objects), kind)
        return version

    def _watch(self, kind: str, list_call: Callable[..., Any], version: str) -> str:
        response = list_call(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(10, WATCH_SECONDS + 30),
        )
        try:
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                kind_of_event = event.get("type")
                obj = event.get("object") or {}
                if kind_of_event == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind_of_event == "BOOKMARK":
                    continue
                # Applied as it arrives: one small callback on the loop, never a wait for the next line.
                self._post(self._apply, kind, [(kind_of_event, obj)])
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone from exc
            raise
        finally:
            response.close()
            response.release_conn()
        return version


class _Gone(Exception):
    """The watch's resourceVersion is too old: list again."""
