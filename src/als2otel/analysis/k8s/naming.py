"""``k8s.service_name_rule``: templates over a pod and the Service that selects it.

``${service.metadata.name}-${pod.metadata.labels.version}`` gives
``reviews-v1``; ``${a,b,c}`` takes the first of a, b, c that is not empty;
label keys with dots go in parentheses: ``${pod.metadata.labels.(app.kubernetes.io/name)}``.
Paths: ``pod.metadata.name``, ``pod.metadata.namespace``, ``pod.metadata.labels.KEY``,
and the same under ``service``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_PATH = re.compile(r"^(pod|service)\.metadata\.(name|namespace|labels\.(\([^()]+\)|[^.()]+))$")


class RuleError(ValueError):
    """A name rule that cannot be used; the message says why."""


@dataclass(frozen=True)
class _Ref:
    obj: str  # "pod" or "service"
    field: str  # "name", "namespace" or "labels"
    label: str = ""


@dataclass(frozen=True)
class Meta:
    """What a rule may read of a pod or a Service."""

    name: str
    namespace: str
    labels: Mapping[str, str]


class NameRule:
    def __init__(self, text: str) -> None:
        self.text = text
        self._parts: list[str | tuple[_Ref, ...]] = []
        pos = 0
        for match in _PLACEHOLDER.finditer(text):
            if match.start() > pos:
                self._parts.append(text[pos : match.start()])
            choices = []
            for raw in _split_choices(match.group(1)):
                path = _PATH.match(raw.strip())
                if path is None:
                    raise RuleError(f"unknown path {raw.strip()!r} in {text!r}")
                field = path.group(2)
                if field.startswith("labels."):
                    label = path.group(3)
                    choices.append(_Ref(path.group(1), "labels", label.strip("()")))
                else:
                    choices.append(_Ref(path.group(1), field))
            self._parts.append(tuple(choices))
            pos = match.end()
        if pos < len(text):
            self._parts.append(text[pos:])
        if not any(isinstance(p, tuple) for p in self._parts):
            raise RuleError(f"{text!r} has no ${{...}} placeholder")
        self.uses_service = any(
            ref.obj == "service" for part in self._parts if isinstance(part, tuple) for ref in part
        )

    def render(self, pod: Meta, service: Meta | None) -> str:
        """The name, or '' when any placeholder has nothing to give."""
        out = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = ""
            for ref in part:
                meta = pod if ref.obj == "pod" else service
                if meta is None:
                    continue
                value = meta.labels.get(ref.label, "") if ref.field == "labels" else getattr(meta, ref.field)
                if value:
                    break
            if not value:
                return ""
            out.append(value)
        return "".join(out)


def _split_choices(inner: str) -> list[str]:
    """Split on commas outside parentheses (label keys may hold anything but parentheses)."""
    choices: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in inner:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            choices.append("".join(current))
            current = []
        else:
            current.append(ch)
    choices.append("".join(current))
    return choices
