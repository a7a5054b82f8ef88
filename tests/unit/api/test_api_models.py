"""The v1alpha1 models: examples accepted, invalid objects rejected with the field named."""

from __future__ import annotations

from pathlib import Path

import api_invalid_cases
import pytest
import yaml

from kascade.api import v1alpha1

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_FILES = sorted([*REPO.glob("examples/*.yaml"), *REPO.glob("examples/complete/*.yaml")])


def test_there_are_examples_of_every_kind() -> None:
    kinds = {o.kind for f in EXAMPLE_FILES for o in v1alpha1.load_path(f)}
    assert kinds == {"LocalModelPool", "CloudExpert", "RoutingPolicy", "Tenant"}


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_example_is_accepted_and_round_trips(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    objects = v1alpha1.load_path(path)
    kascade_docs = [d for d in docs if d["apiVersion"].startswith("kascade.io/")]
    assert len(objects) == len(kascade_docs)
    for obj, doc in zip(objects, kascade_docs, strict=True):
        # What the user wrote survives a round trip: every key written is dumped back
        # with the same value (defaults only add keys).
        assert _contains(obj.to_manifest(), doc), obj.metadata.name


def test_complete_setup_loads_as_a_directory_and_skips_secrets() -> None:
    objects = v1alpha1.load_path(REPO / "examples" / "complete")
    assert sorted((o.kind, o.metadata.name) for o in objects) == [
        ("CloudExpert", "claude-haiku"),
        ("CloudExpert", "gpt-4o-mini"),
        ("LocalModelPool", "smollm2"),
        ("RoutingPolicy", "assistant"),
        ("Tenant", "search-team"),
    ]
    secrets = [
        m
        for m in v1alpha1.read_manifests(REPO / "examples" / "complete")
        if m.body["kind"] == "Secret"
    ]
    assert {m.body["metadata"]["name"] for m in secrets} == {
        "openai-credentials",
        "anthropic-credentials",
    }
    policy = next(o for o in objects if isinstance(o, v1alpha1.RoutingPolicy))
    experts = {o.metadata.name for o in objects if isinstance(o, v1alpha1.CloudExpert)}
    assert set(policy.spec.experts) <= experts


def test_there_are_at_least_25_distinct_invalid_cases() -> None:
    names = [c.name for c in api_invalid_cases.CASES]
    assert len(set(names)) == len(names) >= 25
    bodies = [yaml.safe_dump(c.body, sort_keys=True) for c in api_invalid_cases.CASES]
    assert len(set(bodies)) == len(bodies)


@pytest.mark.parametrize("case", api_invalid_cases.CASES, ids=lambda c: c.name)
def test_invalid_object_is_rejected_naming_the_field(case: api_invalid_cases.InvalidCase) -> None:
    with pytest.raises(v1alpha1.ValidationFailed) as raised:
        v1alpha1.load_objects([case.body], source="case.yaml")
    message = str(raised.value)
    assert case.field in message
    kind, name = case.body["kind"], case.body["metadata"]["name"]
    for line in message.splitlines():
        assert line.startswith(f"case.yaml: {kind}/{name}: "), line


@pytest.mark.parametrize("case", api_invalid_cases.CASES, ids=lambda c: c.name)
def test_invalid_case_differs_from_a_valid_object_in_one_place(
    case: api_invalid_cases.InvalidCase,
) -> None:
    # The base objects the cases are built from are valid, so each case fails for the
    # reason it names and not another.
    base = {
        "LocalModelPool": api_invalid_cases.pool,
        "CloudExpert": api_invalid_cases.expert,
        "RoutingPolicy": api_invalid_cases.policy,
    }[case.body["kind"]]()
    assert v1alpha1.load_objects([base], source="base.yaml")
    assert base != case.body


def test_messages_name_what_is_accepted() -> None:
    cases = {c.name: c for c in api_invalid_cases.CASES}

    def message(name: str) -> str:
        with pytest.raises(v1alpha1.ValidationFailed) as raised:
            v1alpha1.load_objects([cases[name].body], source="x.yaml")
        return str(raised.value)

    assert "'llama-cpp' or 'vllm'" in message("pool-runtime-unknown")
    assert "(got 'tgi')" in message("pool-runtime-unknown")
    assert "min <= initial <= max" in message("pool-initial-above-max")
    assert "allowInsecureHttp" in message("expert-http-without-opt-in")
    assert "svc.cluster.local" in message("expert-http-external-with-opt-in")
    assert "minThreshold <= threshold <= maxThreshold" in message(
        "policy-threshold-outside-dynamic"
    )
    unknown = message("pool-unknown-field")
    assert "unknown field (accepted: runtime, source, sha256, contextLength, chatTemplate)" in (
        unknown
    )
    assert "greater than 0" in message("expert-input-price-zero")
    assert "such as 2, 500m, 1.5 or 4Gi" in message("pool-cpu-not-quantity")
    assert "must be builtin://NAME, file:///ABSOLUTE/PATH, https://HOST/PATH or hf://" in (
        message("pool-source-ftp")
    )
    assert "RFC 1123 subdomain" in message("expert-secret-name-invalid")


def test_every_problem_is_reported_on_its_own_line() -> None:
    docs = [
        api_invalid_cases.pool(model={"runtime": "tgi"}, replicas={"min": -1}),
        api_invalid_cases.expert(budget={"window": "weekly"}),
    ]
    with pytest.raises(v1alpha1.ValidationFailed) as raised:
        v1alpha1.load_objects(docs, source="many.yaml")
    lines = str(raised.value).splitlines()
    assert len(lines) == 3 == len(raised.value.problems)
    assert lines[0].startswith("many.yaml, document 1: LocalModelPool/pool: spec.model.runtime: ")
    assert lines[1].startswith("many.yaml, document 1: LocalModelPool/pool: spec.replicas.min: ")
    assert lines[2].startswith("many.yaml, document 2: CloudExpert/expert: spec.budget.window: ")


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://localhost:8080/v1",
        "http://127.0.0.1:9000",
        "http://sim.kascade-test.svc:8000/v1",
        "http://sim.kascade-test.svc.cluster.local/v1",
    ],
)
def test_http_endpoint_accepted_for_local_hosts_with_opt_in(endpoint: str) -> None:
    body = api_invalid_cases.expert(
        provider="openai-compatible", endpoint=endpoint, allowInsecureHttp=True
    )
    [obj] = v1alpha1.load_objects([body], source="x.yaml")
    assert isinstance(obj, v1alpha1.CloudExpert)
    assert obj.spec.endpoint == endpoint


@pytest.mark.parametrize(
    "endpoint",
    ["http://localhost.evil.com/v1", "http://svc.example.com", "http://10.0.0.1:8000"],
)
def test_http_endpoint_rejected_for_other_hosts_even_with_opt_in(endpoint: str) -> None:
    body = api_invalid_cases.expert(endpoint=endpoint, allowInsecureHttp=True)
    with pytest.raises(
        v1alpha1.ValidationFailed, match=r"spec\.endpoint: http:// endpoints are accepted only"
    ):
        v1alpha1.load_objects([body], source="x.yaml")


def test_defaults_fill_a_minimal_pool() -> None:
    [obj] = v1alpha1.load_objects([api_invalid_cases.pool()], source="x.yaml")
    assert isinstance(obj, v1alpha1.LocalModelPool)
    assert obj.spec.replicas.min == obj.spec.replicas.max == 1
    assert obj.spec.replicas.initial is None
    assert obj.spec.resources.gpu == 0
    assert obj.spec.capacity.max_concurrent_per_replica == 4
    assert obj.spec.autoscaling.enabled is False
    assert obj.spec.model.context_length == 2048


def test_non_kascade_documents_are_skipped_and_other_versions_rejected() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    assert v1alpha1.load_objects([secret, None], source="x.yaml") == []
    future = {**api_invalid_cases.pool(), "apiVersion": "kascade.io/v1beta1"}
    with pytest.raises(v1alpha1.ValidationFailed, match=r"accepted: kascade\.io/v1alpha1"):
        v1alpha1.load_objects([future], source="x.yaml")
    unknown = {**api_invalid_cases.pool(), "kind": "ModelPool"}
    with pytest.raises(
        v1alpha1.ValidationFailed, match="accepted: LocalModelPool, CloudExpert, RoutingPolicy"
    ):
        v1alpha1.load_objects([unknown], source="x.yaml")
    with pytest.raises(v1alpha1.ValidationFailed, match="must be a mapping"):
        v1alpha1.load_objects([["a list"]], source="x.yaml")


def test_duplicate_objects_are_rejected() -> None:
    with pytest.raises(v1alpha1.ValidationFailed, match=r"duplicate: x\.yaml, document 1"):
        v1alpha1.load_objects([api_invalid_cases.pool(), api_invalid_cases.pool()], source="x.yaml")


def test_yaml_errors_name_file_and_line(tmp_path: Path) -> None:
    good = tmp_path / "a.yaml"
    good.write_text(yaml.safe_dump(api_invalid_cases.pool()))
    bad = tmp_path / "b.yaml"
    bad.write_text("apiVersion: kascade.io/v1alpha1\nkind: LocalModelPool\nspec: [unclosed\n")
    (tmp_path / "notes.txt").write_text("not yaml: [")
    with pytest.raises(v1alpha1.ValidationFailed) as raised:
        v1alpha1.load_path(tmp_path)
    assert str(raised.value).startswith(f"{bad}:4:1: invalid YAML: ")
    bad.unlink()
    assert [o.metadata.name for o in v1alpha1.load_path(tmp_path)] == ["pool"]


def test_directory_errors_are_reported(tmp_path: Path) -> None:
    with pytest.raises(v1alpha1.ValidationFailed, match=r"no \*\.yaml or \*\.yml files"):
        v1alpha1.load_path(tmp_path)
    with pytest.raises(v1alpha1.ValidationFailed, match="no such file or directory"):
        v1alpha1.load_path(tmp_path / "missing")


def test_subdirectories_are_read_only_when_recursive(tmp_path: Path) -> None:
    (tmp_path / "top.yaml").write_text(yaml.safe_dump(api_invalid_cases.pool()))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "expert.yml").write_text(yaml.safe_dump(api_invalid_cases.expert()))
    assert [o.kind for o in v1alpha1.load_path(tmp_path)] == ["LocalModelPool"]
    assert [o.kind for o in v1alpha1.load_path(tmp_path, recursive=True)] == [
        "CloudExpert",
        "LocalModelPool",
    ]


def test_runtime_is_immutable_on_update() -> None:
    [old] = v1alpha1.load_objects([api_invalid_cases.pool()], source="x.yaml")
    [new] = v1alpha1.load_objects(
        [api_invalid_cases.pool(model={"runtime": "vllm"}, resources={"gpu": 1})], source="x.yaml"
    )
    [same] = v1alpha1.load_objects(
        [api_invalid_cases.pool(model={"contextLength": 4096})], source="x.yaml"
    )
    v1alpha1.check_update(old=old, new=same)
    with pytest.raises(v1alpha1.ValidationFailed, match=r"spec\.model\.runtime is immutable"):
        v1alpha1.check_update(old=old, new=new)


def test_objects_read_back_from_the_server_validate() -> None:
    body = api_invalid_cases.pool()
    body["metadata"].update(
        uid="0f8d",
        resourceVersion="12",
        generation=3,
        creationTimestamp="2026-01-01T00:00:00Z",
        managedFields=[{"manager": "kubectl"}],
    )
    body["status"] = {
        "observedGeneration": 3,
        "replicas": {"desired": 2, "ready": 1},
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "ScalingUp",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "lastScaleDecision": {
            "time": "2026-01-01T00:00:00Z",
            "from": 1,
            "to": 2,
            "reason": "OverflowSpendAboveReplicaCost",
            "inputs": {"overflowSpendUSDPerHour": 0.3},
        },
    }
    obj = v1alpha1.LocalModelPool.model_validate(body)
    assert obj.metadata.generation == 3
    assert obj.status is not None
    assert obj.status.last_scale_decision is not None
    assert obj.status.last_scale_decision.from_ == 1
    assert obj.to_manifest()["status"]["lastScaleDecision"]["from"] == 1


def test_public_names_are_exactly_all() -> None:
    public = {n for n in dir(v1alpha1) if not n.startswith("_")}
    modules = {
        "affinity",
        "cloudexpert",
        "common",
        "localmodelpool",
        "manifests",
        "problems",
        "regex",
        "routingpolicy",
        "timezones",
        "tenant",
    }
    assert public - modules == set(v1alpha1.__all__)


def _contains(big: object, small: object) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and _contains(big[k], v) for k, v in small.items()
        )
    if isinstance(small, list):
        return (
            isinstance(big, list)
            and len(big) == len(small)
            and all(_contains(b, s) for b, s in zip(big, small, strict=True))
        )
    return big == small


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (api_invalid_cases.pool(replicas={"max": "2"}), "spec.replicas.max"),
        (api_invalid_cases.pool(autoscaling={"enabled": "true"}), "spec.autoscaling.enabled"),
        (api_invalid_cases.pool(autoscaling={"enabled": 1}), "spec.autoscaling.enabled"),
        (api_invalid_cases.policy(confidence={"threshold": "0.5"}), "spec.confidence.threshold"),
        (api_invalid_cases.pool(resources={"cpu": 1.5}), "spec.resources.cpu"),
        (
            api_invalid_cases.patched(api_invalid_cases.pool(), {"metadata": {"labels": {"a": 1}}}),
            "metadata.labels.a",
        ),
    ],
    ids=["int-as-string", "bool-as-string", "bool-as-int", "float-as-string", "cpu-float", "label"],
)
def test_values_are_not_coerced(body: dict[str, object], field: str) -> None:
    # The API server rejects a string where a number belongs, so embedded mode must too.
    with pytest.raises(v1alpha1.ValidationFailed) as raised:
        v1alpha1.load_objects([body], source="x.yaml")
    assert f": {field}: " in str(raised.value)


def test_integers_are_accepted_where_numbers_belong() -> None:
    [obj] = v1alpha1.load_objects(
        [api_invalid_cases.expert(budget={"limitUSD": 10}, pricing={"inputPerMillionTokens": 1})],
        source="x.yaml",
    )
    assert isinstance(obj, v1alpha1.CloudExpert)
    assert obj.spec.budget.limit_usd == 10.0
    assert isinstance(obj.spec.budget.limit_usd, float)


def test_duplicate_yaml_keys_are_rejected_with_their_line(tmp_path: Path) -> None:
    # kubectl refuses a mapping key defined twice; silently keeping the last would hide
    # half of the user's spec.
    path = tmp_path / "pool.yaml"
    path.write_text(
        "apiVersion: kascade.io/v1alpha1\nkind: LocalModelPool\nmetadata: {name: pool}\n"
        "spec:\n  model: {runtime: llama-cpp, source: 'builtin://a'}\n"
        "spec:\n  replicas: {max: 2}\n"
    )
    with pytest.raises(v1alpha1.ValidationFailed) as raised:
        v1alpha1.load_path(path)
    assert str(raised.value) == f"{path}:6:1: invalid YAML: mapping key 'spec' is defined twice"


@pytest.mark.parametrize(
    ("quantity", "value"),
    [(2, "2"), ("500m", "0.5"), ("1Gi", "1073741824"), ("1.5k", "1500"), ("100u", "0.0001")],
)
def test_quantities_have_their_numeric_value(quantity: int | str, value: str) -> None:
    from decimal import Decimal

    from kascade.api.v1alpha1 import common

    assert common.decimal_quantity(quantity) == Decimal(value)


def test_every_failed_rule_of_an_object_is_reported() -> None:
    # The API server reports every failed CEL rule; so do the models.
    body = api_invalid_cases.expert(endpoint="http://api.example.com/v1", credentials=None)
    del body["spec"]["credentials"]
    with pytest.raises(v1alpha1.ValidationFailed) as raised:
        v1alpha1.load_objects([body], source="x.yaml")
    assert [(p.path, p.message.split(" ")[0]) for p in raised.value.problems] == [
        ("spec.endpoint", "endpoint"),
        ("spec.endpoint", "http://"),
        ("spec.credentials", "credentials.secretRef"),
    ]


def test_fit_score_makes_the_combined_weights_optional() -> None:
    target = {"maxLocalErrorRate": 0.1, "fitScore": True}
    policy = api_invalid_cases.policy(
        confidence={"method": "combined", "target": target},
        variants=[
            {"name": "a", "weight": 1, "overrides": {"confidence": {"threshold": 0.6}}},
            {"name": "b", "weight": 1, "overrides": {"confidence": {"method": "margin"}}},
        ],
    )
    [loaded] = v1alpha1.load_objects([policy], source="fit.yaml")
    assert isinstance(loaded, v1alpha1.RoutingPolicy)
    assert loaded.spec.confidence.target is not None
    assert loaded.spec.confidence.target.fit_score
    assert loaded.spec.confidence.combined is None
    with pytest.raises(v1alpha1.ValidationFailed, match="accepted: fitScore false"):
        v1alpha1.load_objects(
            [api_invalid_cases.policy(confidence={"method": "margin", "target": target})],
            source="fit.yaml",
        )
