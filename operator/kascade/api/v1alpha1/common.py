"""Types shared by the three kinds: the model base, CEL rules, quantities, references.

Every model derives from :class:`KascadeModel`. A model may declare cross-field rules in
``__kascade_rules__``: each :class:`CelRule` carries the CEL expression the API server
evaluates (emitted into the CRD as ``x-kubernetes-validations``) and the same check in
Python, so embedded mode rejects exactly what ``kubectl apply`` rejects, with the same
message.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import pydantic
import pydantic_core
from pydantic import json_schema as pydantic_json_schema

from kascade.api import limits

API_GROUP = "kascade.io"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

# Kubernetes name formats. Kept as plain strings: they go into the CRD as `pattern`s
# (Go RE2) and are used with re.fullmatch here, so they must stay in the common subset.
DNS1123_LABEL = limits.DNS1123_LABEL
DNS1123_SUBDOMAIN = limits.DNS1123_SUBDOMAIN
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
# A positive quantity without sign or exponent: "500m", "2", "1.5", "4Gi". The mantissa
# must contain a non-zero digit, so "0" and "0Gi" are rejected by the pattern alone.
POSITIVE_QUANTITY = (
    r"^([0-9]*[1-9][0-9]*(\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*)(([KMGTPE]i)|[numkMGTPE])?$"
)

CEL_RULES_KEY = "x-kubernetes-validations"

PATTERN_HINTS: dict[str, str] = {
    DNS1123_LABEL: "lowercase letters, digits and '-', starting and ending with a letter or "
    "digit (RFC 1123 label)",
    DNS1123_SUBDOMAIN: "lowercase letters, digits, '-' and '.', starting and ending with a "
    "letter or digit (RFC 1123 subdomain)",
    SECRET_KEY: "letters, digits, '-', '_' and '.'",
    POSITIVE_QUANTITY: "a positive quantity such as 2, 500m, 1.5 or 4Gi (suffixes m, k, M, G, "
    "T, P, E, Ki, Mi, Gi, Ti, Pi, Ei)",
}
"""What a pattern accepts, in words, for messages from the Python side."""


def hinted(pattern: str, hint: str) -> str:
    """Registers what ``pattern`` accepts in words and returns the pattern."""
    PATTERN_HINTS[pattern] = hint
    return pattern


@dataclasses.dataclass(frozen=True, kw_only=True)
class CelRule:
    """A cross-field rule, enforced by the API server (CEL) and by the models (Python).

    ``check`` receives the validated model and returns True when the object is valid.
    ``field_path`` (relative, e.g. ``.initial``) points the error at the offending field
    on both sides. ``message`` names the field and what is accepted.
    """

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def to_schema(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry for this rule."""
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            entry["fieldPath"] = self.field_path
        return entry


def immutable(*, field: str) -> dict[str, Any]:
    """Field schema extra that makes a field immutable on the API server.

    Transition rules cannot be checked on a single object; :func:`check_update` in the
    package root does the Python side.
    """
    return {
        CEL_RULES_KEY: [
            {
                "rule": "self == oldSelf",
                "message": f"{field} is immutable: delete and re-create the object to change it",
            }
        ]
    }


class KascadeModel(pydantic.BaseModel):
    """Base of every Kascade API model: strict about unknown fields, camelCase on the wire."""

    model_config = pydantic.ConfigDict(
        use_attribute_docstrings=True,
        populate_by_name=True,
        extra="forbid",
        # No coercion ("2" is not 2, 1 is not true): the API server accepts no such
        # thing, and embedded mode must reject what kubectl apply rejects.
        strict=True,
    )

    __kascade_rules__: ClassVar[tuple[CelRule, ...]] = ()

    @pydantic.model_validator(mode="after")
    def _check_kascade_rules(self) -> KascadeModel:
        # Every failure is collected, as the API server reports every failed rule; pydantic
        # takes one error per validator, so the rest travel in its ctx.
        failures: list[tuple[str, str]] = []
        for field_name, info in type(self).model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and "x-kubernetes-list-type" in extra:
                duplicate = _duplicate(
                    getattr(self, field_name),
                    keys=extra.get("x-kubernetes-list-map-keys"),
                    wire_name=info.alias or field_name,
                )
                if duplicate is not None:
                    failures.append(duplicate)
        for rule in type(self).__dict__.get("__kascade_rules__", ()):
            if not rule.check(self):
                failures.append((rule.message, rule.field_path or ""))
        if failures:
            (message, field_path), *more = failures
            raise pydantic_core.PydanticCustomError(
                "kascade_rule",
                "{message}",
                {"message": message, "field_path": field_path, "more": more},
            )
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls,
        core_schema: pydantic_core.core_schema.CoreSchema,
        handler: pydantic.GetJsonSchemaHandler,
    ) -> pydantic_json_schema.JsonSchemaValue:
        schema = handler(core_schema)
        rules = cls.__dict__.get("__kascade_rules__", ())
        if rules:
            target = handler.resolve_ref_schema(schema)
            target[CEL_RULES_KEY] = [rule.to_schema() for rule in rules]
        return schema

    def to_manifest(self) -> dict[str, Any]:
        """The object as a Kubernetes manifest dict: camelCase keys; unset fields, empty
        lists and empty maps left out (as the API server stores them)."""
        return _without_empty(self.model_dump(mode="json", by_alias=True, exclude_none=True))


def _duplicate(items: Any, *, keys: Any, wire_name: str) -> tuple[str, str] | None:
    """(message, field path) for the first duplicate in a list the CRD declares as a set
    or a map (by key), or None."""
    seen = set()
    for index, item in enumerate(items or ()):
        key = tuple(getattr(item, k) for k in keys) if isinstance(keys, list) else item
        if key in seen:
            if isinstance(keys, list):
                shown = ", ".join(f"{k}={v!r}" for k, v in zip(keys, key, strict=True))
            else:
                shown = repr(item)
            message = f"duplicate value {shown}: entries of {wire_name} must be unique"
            return message, f".{wire_name}[{index}]"
        seen.add(key)
    return None


def _parse_quantity(value: object) -> int | str:
    # One plain validator instead of an int|str union, so a bad value yields one error
    # at the field's own path rather than one per union branch.
    accepted = f"must be {PATTERN_HINTS[POSITIVE_QUANTITY]}"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{accepted}: an integer or a string")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(accepted)
        return value
    if len(value) > 64 or not re.fullmatch(POSITIVE_QUANTITY, value):
        raise ValueError(accepted)
    return value


Quantity = Annotated[
    int | str,
    pydantic.PlainValidator(_parse_quantity),
    pydantic.WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "minimum": 1,
            "maxLength": 64,
            "pattern": POSITIVE_QUANTITY,
        }
    ),
]
"""A Kubernetes resource quantity (integer, or string such as ``500m`` or ``4Gi``)."""

DnsLabel = Annotated[
    str, pydantic.Field(min_length=1, max_length=limits.DNS1123_LABEL_MAX, pattern=DNS1123_LABEL)
]
"""An RFC 1123 label: lowercase letters, digits and '-', at most 63 characters."""

ObjectName = Annotated[
    str,
    pydantic.Field(
        min_length=1, max_length=limits.DNS1123_SUBDOMAIN_MAX, pattern=DNS1123_SUBDOMAIN
    ),
]
"""The name of another object in the same namespace (RFC 1123 subdomain)."""

Timestamp = Annotated[datetime.datetime, pydantic.Field(strict=False)]
"""An RFC 3339 time; parsed from strings (as they come from YAML and the API server)."""

Fraction = Annotated[float, pydantic.Field(ge=0.0, le=1.0)]
"""A number in [0, 1]."""

UsdAmount = Annotated[float, pydantic.Field(gt=0.0, le=limits.USD_MAX)]
"""A positive amount of US dollars, at most 9,000,000 (the ledger's exact range)."""


class SecretKeyRef(KascadeModel):
    """A key of a Secret in the object's own namespace."""

    name: ObjectName
    """Name of the Secret, in the same namespace as the object that refers to it."""

    key: Annotated[str, pydantic.Field(min_length=1, max_length=253, pattern=SECRET_KEY)]
    """Key within the Secret's data whose value is used (letters, digits, '-', '_', '.')."""


class Condition(KascadeModel):
    """A standard Kubernetes condition (the shape of metav1.Condition)."""

    type: Annotated[
        str,
        pydantic.Field(
            min_length=1,
            max_length=316,
            pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        ),
    ]
    """Condition type in CamelCase, e.g. Ready."""

    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds: True, False or Unknown."""

    reason: Annotated[
        str,
        pydantic.Field(
            min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
        ),
    ]
    """Machine-readable CamelCase reason for the last transition."""

    message: Annotated[str, pydantic.Field(max_length=32768)] = ""
    """Human-readable details about the last transition."""

    last_transition_time: Timestamp = pydantic.Field(alias="lastTransitionTime")
    """When the condition last changed status (RFC 3339)."""

    observed_generation: Annotated[int, pydantic.Field(ge=0)] | None = pydantic.Field(
        default=None, alias="observedGeneration"
    )
    """The metadata.generation the condition was computed from."""


CONDITIONS_LIST: pydantic.config.JsonDict = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class ObjectMeta(pydantic.BaseModel):
    """The part of Kubernetes object metadata Kascade reads.

    Other metadata fields written by the API server (uid, resourceVersion, managedFields…)
    are kept as they are, so objects read from the cluster validate too.
    """

    model_config = pydantic.ConfigDict(
        use_attribute_docstrings=True, populate_by_name=True, extra="allow", strict=True
    )

    name: ObjectName
    """Object name, unique per kind within the namespace."""

    namespace: DnsLabel | None = None
    """Namespace of the object; embedded mode uses 'default' when absent."""

    labels: dict[str, str] = pydantic.Field(default_factory=dict)
    """Labels of the object."""

    annotations: dict[str, str] = pydantic.Field(default_factory=dict)
    """Annotations of the object."""

    generation: int | None = None
    """Set by the API server; increases with every change to spec."""


class CrdSchemaGenerator(pydantic_json_schema.GenerateJsonSchema):
    """JSON schema generator that writes defaults built by ``default_factory``.

    pydantic leaves factory defaults out of the schema; the CRD needs them (so the API
    server fills in the same nested defaults as the models), with unset fields omitted.
    """

    def default_schema(
        self, schema: pydantic_core.core_schema.WithDefaultSchema
    ) -> pydantic_json_schema.JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().default_schema(schema)
        json_schema = self.generate_inner(schema["schema"])
        # pydantic types the factory as taking data or not; the branch above ruled data out.
        value = factory()  # type: ignore[call-arg]
        if isinstance(value, pydantic.BaseModel):
            default: Any = _without_empty(
                value.model_dump(mode="json", by_alias=True, exclude_none=True)
            )
        else:
            default = pydantic_core.to_jsonable_python(value)
        if default in ({}, []) and not isinstance(value, pydantic.BaseModel):
            # An empty dict or list is the same as absent for Kubernetes; leave it out.
            return json_schema
        json_schema["default"] = default
        return json_schema


def _without_empty(value: dict[str, Any]) -> dict[str, Any]:
    # Empty lists and maps mean the same as absent to Kubernetes (Go's omitempty); leaving
    # them out keeps defaults short and manifests equal to what the API server returns.
    out = {}
    for key, item in value.items():
        if isinstance(item, dict):
            item = _without_empty(item)
        elif isinstance(item, list):
            item = [_without_empty(i) if isinstance(i, dict) else i for i in item]
        if item not in ({}, []):
            out[key] = item
    return out


def decimal_quantity(value: int | str) -> decimal.Decimal:
    """The numeric value of a quantity (``"500m"`` -> 0.5, ``"1Gi"`` -> 1073741824)."""
    if isinstance(value, int):
        return decimal.Decimal(value)
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", value)
    if match is None:
        raise ValueError(f"not a quantity: {value!r}")
    number, suffix = match.groups()
    factors: dict[str, decimal.Decimal | int] = {
        "": 1,
        "m": decimal.Decimal("0.001"),
        "n": decimal.Decimal("0.000000001"),
        "u": decimal.Decimal("0.000001"),
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
        "P": 10**15,
        "E": 10**18,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "Pi": 2**50,
        "Ei": 2**60,
    }
    return decimal.Decimal(number) * decimal.Decimal(factors[suffix])
