"""The CRD generator: committed files match, schemas are structural, defaults agree."""

from __future__ import annotations

import contextlib
import shutil
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from kascade.api import crdgen
from kascade.api.v1alpha1 import common

REPO = Path(__file__).resolve().parents[3]
CRDS = {info.plural: crdgen.crd(info) for info in crdgen.KINDS}


def test_committed_crds_equal_generator_output() -> None:
    rendered = crdgen.render()
    assert sorted(rendered) == sorted(
        [f"crds/kascade.io_{p}.yaml" for p in CRDS]
        + [f"charts/kascade/crds/kascade.io_{p}.yaml" for p in CRDS]
    )
    for relative, text in rendered.items():
        committed = (REPO / relative).read_text(encoding="utf-8")
        assert committed == text, f"{relative} is stale: run python -m kascade.api.crdgen"
    assert crdgen.drift(root=REPO) == []


def test_check_reports_drift_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for directory in crdgen.OUTPUT_DIRS:
        shutil.copytree(REPO / directory, tmp_path / directory)
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0
    stale = tmp_path / "charts/kascade/crds/kascade.io_cloudexperts.yaml"
    stale.write_text(stale.read_text().replace("limitUSD", "limitUsd"))
    (tmp_path / "crds/kascade.io_routingpolicies.yaml").unlink()
    capsys.readouterr()
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "charts/kascade/crds/kascade.io_cloudexperts.yaml: differs" in out
    assert "crds/kascade.io_routingpolicies.yaml: differs" in out
    assert "-                  limitUsd:" in out
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0


def test_generated_files_parse_and_name_the_kinds() -> None:
    for info in crdgen.KINDS:
        doc = yaml.safe_load((REPO / f"crds/kascade.io_{info.plural}.yaml").read_text())
        names = doc["spec"]["names"]
        assert doc["metadata"]["name"] == f"{info.plural}.kascade.io"
        assert names["categories"] == ["kascade"]
        assert names["shortNames"] == list(info.short_names)
        [version] = doc["spec"]["versions"]
        assert version["name"] == "v1alpha1"
        assert version["subresources"] == {"status": {}}
    assert {p: c["spec"]["names"]["shortNames"] for p, c in CRDS.items()} == {
        "localmodelpools": ["lmp"],
        "cloudexperts": ["cx"],
        "routingpolicies": ["rp"],
    }


def test_printer_columns() -> None:
    def columns(plural: str) -> list[str]:
        [version] = CRDS[plural]["spec"]["versions"]
        return [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c]

    assert columns("localmodelpools") == ["Runtime", "Model", "Ready", "Desired", "Age"]
    assert columns("cloudexperts") == ["Model", "Spent", "Limit", "Ready", "Age"]
    assert columns("routingpolicies") == ["Pool", "Experts", "Escalation", "Ready", "Age"]


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from _nodes(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("plural", sorted(CRDS))
def test_schema_is_structural(plural: str) -> None:
    [version] = CRDS[plural]["spec"]["versions"]
    for path, node in _nodes(version["schema"]["openAPIV3Schema"]):
        for key in ("$ref", "$defs", "title", "nullable", "uniqueItems", "const", "allOf", "oneOf"):
            assert key not in node, f"{plural}{path}: {key}"
        assert node.get("additionalProperties") not in (True, False), f"{plural}{path}"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "anyOf" not in node, f"{plural}{path}"
        assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean")
        if isinstance(node.get("exclusiveMinimum"), bool):
            assert "minimum" in node, path
        if node["type"] == "array":
            # Unbounded lists make CEL cost estimates exceed the API server's budget.
            assert "maxItems" in node, f"{plural}{path}: arrays need maxItems"
        if (
            node["type"] == "object"
            and path != ".metadata"  # the API server owns metadata's schema
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            assert "properties" in node or "additionalProperties" in node, f"{plural}{path}"


def test_no_field_preserves_unknown_fields() -> None:
    # affinity too is typed (core/v1 Affinity): a misspelt field is an error, not dropped.
    preserved = [
        f"{plural}{path}"
        for plural, crd in CRDS.items()
        for path, node in _nodes(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        if node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert preserved == []
    affinity = CRDS["localmodelpools"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in ("spec", "placement", "affinity", "nodeAffinity"):
        affinity = affinity["properties"][part]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in affinity["properties"]


def test_runtime_is_immutable_in_the_schema() -> None:
    schema = CRDS["localmodelpools"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    runtime = schema["properties"]["spec"]["properties"]["model"]["properties"]["runtime"]
    assert runtime[common.CEL_RULES_KEY] == [
        {
            "rule": "self == oldSelf",
            "message": "spec.model.runtime is immutable: delete and re-create the object to "
            "change it",
        }
    ]


def test_every_model_rule_is_in_the_crd() -> None:
    emitted = {
        (rule["rule"], rule["message"])
        for crd in CRDS.values()
        for _, node in _nodes(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        for rule in node.get(common.CEL_RULES_KEY, [])
    }
    declared = {
        # A rule about metadata.name alone is placed on the name itself.
        (rule.rule.replace("self.metadata.name", "self"), rule.message)
        for model in _models()
        for rule in model.__dict__.get("__kascade_rules__", ())
    }
    assert declared
    assert declared <= emitted


def test_every_rule_has_a_message_and_object_rules_name_their_field() -> None:
    unnamed = []
    for plural, crd in CRDS.items():
        for path, node in _nodes(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
            for rule in node.get(common.CEL_RULES_KEY, []):
                assert rule.get("message") or rule.get("messageExpression"), (path, rule)
                if node.get("type") == "object" and "fieldPath" not in rule:
                    unnamed.append(f"{plural}{path}: {rule['message']}")
    # The one object rule without a field is about the object itself (an empty `when`),
    # and the API server names that object.
    assert unnamed == [
        "routingpolicies.spec.rules[].when: rules[].when needs at least one of "
        "minPromptTokens, maxPromptTokens, taskLabels, header, hasTools or responseFormats"
    ]


def test_hinted_patterns_become_rules_that_say_what_is_accepted() -> None:
    schema = CRDS["localmodelpools"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    memory = schema["properties"]["spec"]["properties"]["resources"]["properties"]["memory"]
    assert "pattern" not in memory
    [rule] = memory[common.CEL_RULES_KEY]
    assert rule["message"].startswith("must be a positive quantity such as 2, 500m")
    name = schema["properties"]["metadata"]["properties"]["name"]
    assert name[common.CEL_RULES_KEY][0]["rule"].startswith("self.size() <= 40")


def test_descriptions_come_from_attribute_docstrings() -> None:
    spec = CRDS["localmodelpools"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    model = spec["properties"]["spec"]["properties"]["model"]
    assert model["description"] == "The model to serve and its runtime."
    for path, node in _nodes(spec["properties"]["spec"]):
        assert node.get("description") or path.endswith(("[]", "{}")), path
        assert "\n" not in node.get("description", ""), path


@pytest.mark.parametrize("plural", sorted(CRDS))
def test_defaults_in_crd_equal_model_defaults(plural: str) -> None:
    info = next(i for i in crdgen.KINDS if i.plural == plural)
    schema = CRDS[plural]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    checked = _compare_defaults(info.model, schema, path=plural)
    assert checked > 10


def _compare_defaults(model: type[pydantic.BaseModel], schema: dict[str, Any], *, path: str) -> int:
    checked = 0
    for name, field in model.model_fields.items():
        wire = field.alias or name
        if wire in ("apiVersion", "kind", "metadata"):
            continue
        prop = schema["properties"][wire]
        if prop.get("type") == "array" and "properties" in prop.get("items", {}):
            nested: Any = _inner_model(field.annotation)
            checked += _compare_defaults(nested, prop["items"], path=f"{path}.{wire}[]")
        elif "properties" in prop:
            checked += _compare_defaults(
                _inner_model(field.annotation), prop, path=f"{path}.{wire}"
            )
        if field.is_required():
            assert "default" not in prop, f"{path}.{wire}"
            continue
        value = field.get_default(call_default_factory=True)
        is_model = isinstance(value, pydantic.BaseModel)
        if is_model:
            value = common._without_empty(
                value.model_dump(mode="json", by_alias=True, exclude_none=True)
            )
        if value is None or (value in ({}, []) and not is_model):
            # Kubernetes treats an empty list or map like an absent one: no CRD default.
            assert "default" not in prop, f"{path}.{wire}"
        else:
            assert prop.get("default") == value, f"{path}.{wire}"
        checked += 1
    return checked


def _inner_model(annotation: Any) -> type[pydantic.BaseModel]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        try:
            return _inner_model(arg)
        except LookupError:
            continue
    raise LookupError(annotation)


def _models() -> set[type[pydantic.BaseModel]]:
    found: set[type[pydantic.BaseModel]] = set()

    def visit(model: type[pydantic.BaseModel]) -> None:
        if model in found:
            return
        found.add(model)
        for field in model.model_fields.values():
            with contextlib.suppress(LookupError):
                visit(_inner_model(field.annotation))

    for info in crdgen.KINDS:
        visit(info.model)
    return found


def test_docs_field_reference_is_up_to_date(tmp_path: Path) -> None:
    from kascade.api import docgen

    assert docgen.main(["--check"]) == 0, "run python -m kascade.api.docgen"
    stale = tmp_path / "api.md"
    stale.write_text(docgen.DOC.read_text().replace("Fewest replicas", "Least replicas"))
    assert docgen.main(["--check", "--doc", str(stale)]) == 1
    assert docgen.main(["--doc", str(stale)]) == 0
    assert stale.read_text() == docgen.DOC.read_text()
    reference = docgen.field_reference()
    for field in ("`model.contextLength`", "`budget.limitUSD` (required)", "`confidence.dynamic"):
        assert field in reference
