"""Reading Kascade objects from parsed YAML documents and from files (embedded mode).

Documents of other kinds (Secrets, ConfigMaps, anything not in the kascade.io group)
are skipped by :func:`load_objects` and :func:`load_path`; :func:`read_manifests`
returns every document so callers can pick those out themselves.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pydantic
import yaml

from kascade.api.v1alpha1 import (
    cloudexpert,
    common,
    localmodelpool,
    problems,
    routingpolicy,
    tenant,
)

KascadeObject = (
    localmodelpool.LocalModelPool
    | cloudexpert.CloudExpert
    | routingpolicy.RoutingPolicy
    | tenant.Tenant
)

KINDS: Mapping[str, type[KascadeObject]] = {
    localmodelpool.KIND: localmodelpool.LocalModelPool,
    cloudexpert.KIND: cloudexpert.CloudExpert,
    routingpolicy.KIND: routingpolicy.RoutingPolicy,
    tenant.KIND: tenant.Tenant,
}

# Fields that cannot change once the object exists (mirrors the CRD transition rules).
IMMUTABLE_FIELDS: Mapping[str, tuple[tuple[str, ...], ...]] = {
    localmodelpool.KIND: (("spec", "model", "runtime"),),
}


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate mapping keys, as kubectl does.

    PyYAML would silently keep the last value: a second ``spec:`` in a file would replace
    the first without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool | None):
                continue  # unhashable keys are reported by the base class
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"mapping key {key!r} is defined twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _KubectlLoader(_StrictLoader):
    """Reads plain scalars the way kubectl does (go-yaml v2 via sigs.k8s.io/yaml), not as
    YAML 1.1: ``1e3`` is a number, ``2024-10-21`` a string, ``190:20:30`` a string.

    PyYAML's YAML 1.1 resolvers would make ``limitUSD: 1e3`` a string and an unquoted
    Azure ``apiVersion: 2024-10-21`` a date, and embedded mode would reject objects the
    API server accepts.
    """


def _kubectl_resolvers() -> None:
    replaced = {"tag:yaml.org,2002:" + t for t in ("bool", "int", "float", "timestamp")}
    # A class of its own: add_implicit_resolver would otherwise extend SafeLoader's table.
    _KubectlLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    rules = {
        "bool": (
            r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE"
            r"|on|On|ON|off|Off|OFF)$",
            "yYnNtTfFoO",
        ),
        "int": (r"^[-+]?(?:0b[01_]+|0x[0-9a-fA-F_]+|0o?[0-7_]+|[0-9][0-9_]*)$", "-+0123456789"),
        "float": (
            r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
            "-+.0123456789",
        ),
    }
    for tag, (pattern, first) in rules.items():
        _KubectlLoader.add_implicit_resolver(
            f"tag:yaml.org,2002:{tag}", re.compile(pattern), list(first)
        )


_kubectl_resolvers()
_KubectlLoader.add_constructor("tag:yaml.org,2002:bool", lambda loader, node: _go_bool(node))
_KubectlLoader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: _go_int(node))
_KubectlLoader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: _go_float(node))


def _go_bool(node: yaml.Node) -> bool:
    return str(node.value) in (
        "y",
        "Y",
        "yes",
        "Yes",
        "YES",
        "true",
        "True",
        "TRUE",
        "on",
        "On",
        "ON",
    )


def _go_int(node: yaml.Node) -> int:
    text = str(node.value).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    if digits.startswith("0b"):
        return sign * int(digits[2:], 2)
    if digits.startswith("0x"):
        return sign * int(digits[2:], 16)
    if digits.startswith("0o"):
        return sign * int(digits[2:], 8)
    if len(digits) > 1 and digits.startswith("0"):
        return sign * int(digits, 8)
    return sign * int(digits)


def _go_float(node: yaml.Node) -> float:
    text = str(node.value).replace("_", "").lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest:
    """One YAML document and where it came from."""

    source: str
    """File name, with ', document N' when the file holds several documents."""
    body: dict[str, Any]
    """The parsed document."""


def load_objects(docs: Iterable[Any], *, source: str) -> list[KascadeObject]:
    """Validates parsed YAML documents and returns the Kascade objects among them.

    Documents that are empty or not in the kascade.io group are skipped. Raises
    :class:`ValidationFailed` listing every problem (file, kind/name, field path, what is
    accepted), including two objects of the same kind, namespace and name.
    """
    found: list[problems.Problem] = []
    manifests = _manifests(list(docs), source=source, found=found)
    objects = _validate(manifests, found)
    if found:
        raise problems.ValidationFailed(found)
    return objects


def read_manifests(path: Path, *, recursive: bool = False) -> list[Manifest]:
    """Every YAML document under ``path`` (a file, or a directory's *.yaml and *.yml files
    in name order, like ``kubectl apply -f DIR``; subdirectories only with ``recursive``).

    Raises :class:`ValidationFailed` naming file and line when a file is not valid YAML.
    """
    files = _yaml_files(path, recursive=recursive)
    manifests: list[Manifest] = []
    found: list[problems.Problem] = []
    for file in files:
        try:
            docs = list(yaml.load_all(file.read_text(encoding="utf-8"), Loader=_KubectlLoader))
        except yaml.YAMLError as error:
            found.append(problems.parse_error(source=str(file), error=error))
            continue
        except (OSError, UnicodeDecodeError) as error:
            found.append(
                problems.Problem(
                    source=str(file), kind=None, name=None, path="", message=f"unreadable: {error}"
                )
            )
            continue
        manifests.extend(_manifests(docs, source=str(file), found=found))
    if found:
        raise problems.ValidationFailed(found)
    return manifests


def load_path(path: Path, *, recursive: bool = False) -> list[KascadeObject]:
    """Validates the Kascade objects in a YAML file or directory (see :func:`read_manifests`).

    Other kinds (Secrets and the like) are skipped: use :func:`read_manifests` to get them.
    Raises :class:`ValidationFailed` listing every problem in every file.
    """
    found: list[problems.Problem] = []
    objects = _validate(read_manifests(path, recursive=recursive), found)
    if found:
        raise problems.ValidationFailed(found)
    return objects


def check_update(*, old: KascadeObject, new: KascadeObject) -> None:
    """Rejects changes to immutable fields, as the CRD's transition rules do.

    Raises :class:`ValidationFailed` naming each changed immutable field.
    """
    found = []
    for path in IMMUTABLE_FIELDS.get(new.kind, ()):
        before, after = _get(old, path), _get(new, path)
        if before != after:
            found.append(
                problems.Problem(
                    source="update",
                    kind=new.kind,
                    name=new.metadata.name,
                    path=".".join(path),
                    message=f"{'.'.join(path)} is immutable: delete and re-create the object "
                    f"to change it (was {before!r}, got {after!r})",
                )
            )
    if found:
        raise problems.ValidationFailed(found)


def _manifests(docs: list[Any], *, source: str, found: list[problems.Problem]) -> list[Manifest]:
    manifests = []
    for index, doc in enumerate(docs, start=1):
        where = source if len(docs) == 1 else f"{source}, document {index}"
        if doc is None:
            continue
        if not isinstance(doc, dict):
            found.append(
                problems.Problem(
                    source=where,
                    kind=None,
                    name=None,
                    path="",
                    message="a document must be a mapping with apiVersion and kind, "
                    f"got {type(doc).__name__}",
                )
            )
            continue
        manifests.append(Manifest(source=where, body=doc))
    return manifests


def _get(obj: pydantic.BaseModel, path: tuple[str, ...]) -> Any:
    value: Any = obj
    for part in path:
        value = getattr(value, part)
    return value


def _model_of(manifest: Manifest) -> type[KascadeObject] | problems.Problem | None:
    """The model for the manifest's kind; a problem when it is not one; None when the
    manifest belongs to another API group (left to its own tools)."""
    body = manifest.body
    api_version, kind = body.get("apiVersion"), body.get("kind")
    name = _name_of(body)
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return problems.Problem(
            source=manifest.source,
            kind=None,
            name=None,
            path="",
            message="apiVersion and kind are required strings",
        )
    if api_version.split("/")[0] != common.API_GROUP:
        return None
    if api_version != common.GROUP_VERSION:
        return problems.Problem(
            source=manifest.source,
            kind=kind,
            name=name,
            path="apiVersion",
            message=f"unsupported version {api_version!r} (accepted: {common.GROUP_VERSION})",
        )
    model = KINDS.get(kind)
    if model is None:
        return problems.Problem(
            source=manifest.source,
            kind=kind,
            name=name,
            path="kind",
            message=f"unknown kind {kind!r} (accepted: {', '.join(KINDS)})",
        )
    return model


def _validate(manifests: list[Manifest], found: list[problems.Problem]) -> list[KascadeObject]:
    objects: list[KascadeObject] = []
    seen: dict[tuple[str, str | None, str], str] = {}
    for manifest in manifests:
        model = _model_of(manifest)
        if model is None:
            continue
        if isinstance(model, problems.Problem):
            found.append(model)
            continue
        kind, name = manifest.body["kind"], _name_of(manifest.body)
        try:
            obj = model.model_validate(manifest.body)
        except pydantic.ValidationError as error:
            found.extend(
                problems.problems_from_error(
                    error, model=model, source=manifest.source, kind=kind, name=name
                )
            )
            continue
        key = (kind, obj.metadata.namespace, obj.metadata.name)
        if key in seen:
            found.append(
                problems.Problem(
                    source=manifest.source,
                    kind=kind,
                    name=name,
                    path="metadata.name",
                    message=f"duplicate: {seen[key]} already defines this {kind}",
                )
            )
            continue
        seen[key] = manifest.source
        objects.append(obj)
    return objects


def _name_of(body: dict[str, Any]) -> str | None:
    metadata = body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


def _yaml_files(path: Path, *, recursive: bool) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise problems.ValidationFailed(
            [
                problems.Problem(
                    source=str(path),
                    kind=None,
                    name=None,
                    path="",
                    message="no such file or directory",
                )
            ]
        )
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix in (".yaml", ".yml"))
    if not files:
        raise problems.ValidationFailed(
            [
                problems.Problem(
                    source=str(path),
                    kind=None,
                    name=None,
                    path="",
                    message="no *.yaml or *.yml files in this directory",
                )
            ]
        )
    return files
