"""RoutingPolicy: local pool first, then which experts, when, and at what cost."""

from __future__ import annotations

import enum
from typing import Annotated, ClassVar, Literal

import pydantic

from kascade.api import limits
from kascade.api.v1alpha1 import common
from kascade.api.v1alpha1 import regex as regex_mod

KIND = "RoutingPolicy"
PLURAL = "routingpolicies"

PoolName = Annotated[
    str,
    pydantic.Field(
        min_length=1,
        max_length=limits.POOL_NAME_MAX,
        pattern=common.hinted(
            limits.POOL_NAME,
            "a LocalModelPool name: lowercase letters, digits and '-', starting with a letter",
        ),
    ),
]
"""The name of a LocalModelPool in the same namespace."""

ExpertName = Annotated[
    str, pydantic.Field(min_length=1, max_length=63, pattern=common.DNS1123_SUBDOMAIN)
]
"""The name of a CloudExpert in the same namespace."""

Label = Annotated[
    str,
    pydantic.Field(
        min_length=1,
        max_length=63,
        pattern=common.hinted(
            r"^[A-Za-z0-9][-A-Za-z0-9_.]*$",
            "letters, digits, '-', '_' and '.', starting with a letter or digit",
        ),
    ),
]
"""A task label such as 'code' or 'summarize'."""

PiiDetector = Literal[
    "email",
    "phone",
    "credit-card",
    "iban",
    "ip-address",
    "ssn",
    "date-of-birth",
    "national-id",
    "secret",
]


class PolicyConditionType(enum.StrEnum):
    """Condition types a RoutingPolicy reports."""

    READY = "Ready"
    """The gateway serves this policy."""
    REFERENCES_RESOLVED = "ReferencesResolved"
    """Every referenced pool and expert exists."""
    DEGRADED = "Degraded"
    """No listed expert can take escalations now (all suspended, invalid, without
    credentials or out of budget): escalations degrade to the local answer (or fail,
    with fallback.whenExpertsUnavailable: error)."""


class Tier(common.KascadeModel):
    """One local pool in an ordered list of local tiers (smallest first)."""

    name: common.DnsLabel
    """Tier name, referenced by rules with action 'tier'."""

    pool: PoolName
    """LocalModelPool serving this tier."""

    max_prompt_tokens: Annotated[int, pydantic.Field(ge=1, le=10_000_000)] | None = pydantic.Field(
        default=None, alias="maxPromptTokens"
    )
    """Longer prompts (estimated tokens, as rules count them) skip this tier and go to
    the next one; unset takes any length. A prompt longer than every tier takes skips
    the local pass and escalates with reason 'prompt_too_long'."""


class DynamicThreshold(common.KascadeModel):
    """Bounds within which the threshold moves with budget burn and expert health."""

    min_threshold: common.Fraction = pydantic.Field(alias="minThreshold")
    """Lowest threshold (fewest escalations), used when budgets run hot or experts fail."""

    max_threshold: common.Fraction = pydantic.Field(alias="maxThreshold")
    """Highest threshold (most escalations), used when budget is plentiful."""

    budget_pressure: common.Fraction = pydantic.Field(default=1.0, alias="budgetPressure")
    """How strongly budget burn moves the threshold: 0 ignores the budget. Spend on
    pace to use exactly the budget by the window's end keeps the base threshold; with 1,
    twice that pace (the budget gone half-way) reaches minThreshold and no spend
    reaches maxThreshold. Formula: docs/gateway.md, 'Dynamic threshold'."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="self.minThreshold <= self.maxThreshold",
            message="confidence.dynamic.minThreshold must be <= confidence.dynamic.maxThreshold",
            field_path=".minThreshold",
            check=lambda d: d.min_threshold <= d.max_threshold,
        ),
    )


COMBINED_FEATURES = (
    "log_mean_token_prob",
    "log_min_token_prob",
    "log_token_prob_q05",
    "log_token_prob_q10",
    "log_token_prob_q25",
    "log_token_prob_q50",
    "log_novel_token_prob_mean",
    "log_novel_token_prob_min",
    "log_first_line_prob_mean",
    "log_first_line_prob_min",
    "margin",
    "mean_logprob",
    "log_tokens",
    "repetition",
    "prompt_echo",
    "cut_off",
    "degenerate_empty",
    "log_answer_words",
)
"""Feature names a combined score may weigh (besides ``task:<label>``); the gateway's
``route.combined_score.FEATURE_NAMES`` is the same list (a test holds them equal)."""

_CEL_FEATURES = "[" + ", ".join(f"'{name}'" for name in COMBINED_FEATURES) + "]"


class DegenerationSpec(common.KascadeModel):
    """Escalates answers that loop, parrot the prompt, or are empty, whatever their
    token probabilities (reason 'degenerate')."""

    enabled: bool = True
    """Turns the detector on (the default) or off."""

    max_repetition: common.Fraction = pydantic.Field(default=0.5, alias="maxRepetition")
    """Largest share of the answer's word trigrams that may repeat an earlier one."""

    max_prompt_echo: common.Fraction = pydantic.Field(default=0.9, alias="maxPromptEcho")
    """Largest share of the answer's word trigrams that may also be in the last user
    message."""

    escalate_cut_off: bool = pydantic.Field(default=False, alias="escalateCutOff")
    """Also escalate answers cut off at max_tokens."""


class CombinedScoreSpec(common.KascadeModel):
    """A calibrated logistic model over confidence signals: score = 1 / (1 + exp(-(
    intercept + sum of weight * feature))). Fit it with bench/routing_quality.py, or let
    the gateway fit it from its own labels (confidence.target.fitScore)."""

    intercept: float = pydantic.Field(ge=-1000.0, le=1000.0)
    """The model's intercept."""

    weights: Annotated[
        dict[str, Annotated[float, pydantic.Field(ge=-1000.0, le=1000.0)]],
        pydantic.Field(max_length=64),
    ]
    """Feature name -> weight. Features: log_mean_token_prob, log_min_token_prob,
    log_token_prob_q05/q10/q25/q50, log_novel_token_prob_mean/min (tokens not in the
    prompt), log_first_line_prob_mean/min, margin, mean_logprob, log_tokens, repetition,
    prompt_echo, cut_off, degenerate_empty, log_answer_words, and task:<label> (1 when
    the request's x-kascade-task header is that label)."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule=f"self.weights.all(k, k in {_CEL_FEATURES} || k.startsWith('task:'))",
            message="confidence.combined.weights: unknown feature name (accepted: "
            + ", ".join(COMBINED_FEATURES)
            + ", or task:<label>)",
            field_path=".weights",
            check=lambda c: all(k in COMBINED_FEATURES or k.startswith("task:") for k in c.weights),
        ),
    )


class ConfidenceTargetSpec(common.KascadeModel):
    """A declared quality target: the gateway learns the threshold that keeps the error
    rate of local answers under maxLocalErrorRate, from labels it collects itself (the
    expert's answer on a sampled share of requests; shadow calls for answers kept local).
    Method and guarantee: docs/gateway.md, 'Learned threshold'."""

    max_local_error_rate: float = pydantic.Field(gt=0.0, lt=1.0, alias="maxLocalErrorRate")
    """Highest error rate allowed among answers kept local, as judged against the expert."""

    confidence_level: float = pydantic.Field(default=0.9, gt=0.0, lt=1.0, alias="confidenceLevel")
    """Probability with which the learned threshold holds the rate."""

    shadow_fraction: common.Fraction = pydantic.Field(default=0.1, alias="shadowFraction")
    """Share of scored requests that are labelled; kept ones cost a shadow expert call."""

    max_shadow_budget_share: common.Fraction = pydantic.Field(
        default=0.1, alias="maxShadowBudgetShare"
    )
    """Most of the first expert's budget limit that shadow calls may spend per budget
    window (all the policy's variants and gateway replicas together)."""

    window_labels: int = pydantic.Field(default=1000, ge=10, le=100_000, alias="windowLabels")
    """Most recent labels kept per task; older ones age out so the threshold follows drift."""

    min_labels: int = pydantic.Field(default=50, ge=10, le=100_000, alias="minLabels")
    """Labels needed before the learned threshold replaces confidence.threshold."""

    tasks: Annotated[list[common.DnsLabel], pydantic.Field(max_length=32)] = pydantic.Field(
        default_factory=list
    )
    """Task labels (header x-kascade-task) that learn their own threshold once they have
    minLabels labels; other requests use the threshold learned on all traffic."""

    fit_score: bool = pydantic.Field(default=False, alias="fitScore")
    """Fit the combined score's weights from these labels (needs confidence.method
    'combined'): about half of the labels fit the model, the other half choose the
    threshold, so the target's guarantee holds for the fitted score. confidence.combined
    is then optional: the starting model (unset: the pool's mean token probability)
    until a model is fitted. Method: docs/gateway.md, 'Fitted combined score'."""

    feedback_labels: bool = pydantic.Field(default=False, alias="feedbackLabels")
    """User ratings (POST /v1/kascade/feedback) of scored local answers this policy
    returned also label them: up/positive/4-5 right, down/negative/1-2 wrong, one label
    per request, only from the caller that made it. Ratings are not a uniform sample,
    so the target's guarantee then holds only as far as ratings are representative
    (they usually over-report bad answers: a more conservative threshold). See
    docs/gateway.md, 'Learned threshold'."""


_CEL_FITS = "(has(self.target) && has(self.target.fitScore) && self.target.fitScore)"
"""CEL: the confidence spec's target fits the combined score."""


def _fits(confidence: ConfidenceSpec) -> bool:
    return confidence.target is not None and confidence.target.fit_score


class ConfidenceSpec(common.KascadeModel):
    """When a local answer is good enough to return without escalating."""

    method: Literal[
        "mean-token-prob", "min-token-prob", "margin", "sequence-prob", "token-prob-q10", "combined"
    ] = "mean-token-prob"
    """Score of the local answer: 'mean-token-prob' (mean token probability),
    'min-token-prob' (least confident token), 'margin' (mean gap between the top two
    token probabilities), 'sequence-prob' (probability of the whole answer, exp of its
    log-prob), 'token-prob-q10' (10th percentile of token probabilities) or 'combined'
    (the calibrated model in 'combined')."""

    degeneration: DegenerationSpec = pydantic.Field(default_factory=DegenerationSpec)
    """The degeneration detector's limits."""

    combined: CombinedScoreSpec | None = None
    """Weights of the combined score; required when method is 'combined', unless
    target.fitScore (then they only start the model)."""

    target: ConfidenceTargetSpec | None = None
    """A quality target; when set the threshold is learned (confidence.threshold applies
    until enough labels exist)."""

    threshold: common.Fraction = 0.5
    """Answers scoring below this, in [0, 1], are escalated."""

    dynamic: DynamicThreshold | None = None
    """Lets the threshold move between bounds; unset keeps it fixed."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="!has(self.dynamic) || (self.dynamic.minThreshold <= self.threshold && "
            "self.threshold <= self.dynamic.maxThreshold)",
            message="confidence.threshold must lie between dynamic.minThreshold and "
            "dynamic.maxThreshold (accepted: minThreshold <= threshold <= maxThreshold)",
            field_path=".threshold",
            check=lambda c: (
                c.dynamic is None
                or c.dynamic.min_threshold <= c.threshold <= c.dynamic.max_threshold
            ),
        ),
        common.CelRule(
            rule="self.method != 'combined' || has(self.combined) || " + _CEL_FITS,
            message="confidence.method 'combined' needs confidence.combined (its weights), "
            "or confidence.target.fitScore to fit them from labels",
            field_path=".combined",
            check=lambda c: c.method != "combined" or c.combined is not None or _fits(c),
        ),
        common.CelRule(
            rule="!(" + _CEL_FITS + ") || self.method == 'combined'",
            message="confidence.target.fitScore fits the combined score's weights: it needs "
            "confidence.method 'combined' (accepted: fitScore false, or method 'combined')",
            field_path=".target.fitScore",
            check=lambda c: not _fits(c) or c.method == "combined",
        ),
    )


class ConfidenceOverride(common.KascadeModel):
    """Confidence fields a variant changes; each set field replaces the policy's field
    of the same name, unset ones are the policy's. The quality target (``target``) is
    the policy's: a variant cannot change it."""

    method: (
        Literal[
            "mean-token-prob",
            "min-token-prob",
            "margin",
            "sequence-prob",
            "token-prob-q10",
            "combined",
        ]
        | None
    ) = None
    """Score of the local answer (as confidence.method)."""

    threshold: common.Fraction | None = None
    """Answers scoring below this, in [0, 1], are escalated (as confidence.threshold)."""

    dynamic: DynamicThreshold | None = None
    """Bounds of a moving threshold (as confidence.dynamic)."""

    combined: CombinedScoreSpec | None = None
    """Weights of the combined score (as confidence.combined)."""

    degeneration: DegenerationSpec | None = None
    """The degeneration detector's limits (as confidence.degeneration)."""


class VariantOverrides(common.KascadeModel):
    """What a variant changes in the policy; unset fields are the policy's."""

    confidence: ConfidenceOverride | None = None
    """Confidence fields that differ from spec.confidence."""

    local_pool: PoolName | None = pydantic.Field(default=None, alias="localPool")
    """Another LocalModelPool answering first (only for policies with spec.localPool)."""

    experts: Annotated[list[ExpertName], pydantic.Field(max_length=16)] | None = pydantic.Field(
        default=None, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Other CloudExperts to escalate to, in order of preference (empty keeps this
    variant's requests local); each must exist like spec.experts."""

    expert_selection: Literal["ordered", "cheapest"] | None = pydantic.Field(
        default=None, alias="expertSelection"
    )
    """Another expertSelection."""


class Variant(common.KascadeModel):
    """One arm of an A/B split of the policy's traffic."""

    name: common.DnsLabel
    """Variant name, unique in the policy; reported in the x-kascade-variant header,
    audit lines and the kascade_variant_* metrics."""

    weight: Annotated[int, pydantic.Field(ge=1, le=10_000)]
    """Relative share of callers (a positive integer): a variant with weight 1 next to one
    with weight 3 gets a quarter of them."""

    overrides: VariantOverrides = pydantic.Field(default_factory=VariantOverrides)
    """What this variant changes; empty serves the policy as written (a control arm)."""


class HeaderMatch(common.KascadeModel):
    """Matches a request header."""

    name: Annotated[
        str,
        pydantic.Field(
            min_length=1,
            max_length=256,
            pattern=common.hinted(
                r"^[A-Za-z0-9-]+$", "an HTTP header name: letters, digits and '-'"
            ),
        ),
    ]
    """Header name, case-insensitive."""

    values: Annotated[
        list[Annotated[str, pydantic.Field(max_length=256)]], pydantic.Field(max_length=16)
    ] = pydantic.Field(default_factory=list)
    """Values that match (exact); empty matches any value, the header must be present."""


class RuleMatch(common.KascadeModel):
    """Request features a rule matches; all set conditions must hold."""

    min_prompt_tokens: Annotated[int, pydantic.Field(ge=1, le=10_000_000)] | None = pydantic.Field(
        default=None, alias="minPromptTokens"
    )
    """Matches prompts with at least this many tokens."""

    max_prompt_tokens: Annotated[int, pydantic.Field(ge=1, le=10_000_000)] | None = pydantic.Field(
        default=None, alias="maxPromptTokens"
    )
    """Matches prompts with at most this many tokens."""

    task_labels: Annotated[list[Label], pydantic.Field(max_length=16)] | None = pydantic.Field(
        default=None, alias="taskLabels", json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Matches requests whose task label (header x-kascade-task) is one of these."""

    header: HeaderMatch | None = None
    """Matches a request header."""

    has_tools: bool | None = pydantic.Field(default=None, alias="hasTools")
    """true matches requests that offer tools (function calling); false matches
    requests that offer none."""

    response_formats: (
        Annotated[list[Literal["text", "json_object", "json_schema"]], pydantic.Field(max_length=3)]
        | None
    ) = pydantic.Field(
        default=None, alias="responseFormats", json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """Matches requests whose response_format.type is one of these ('text' also
    matches requests without a response_format)."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="has(self.minPromptTokens) || has(self.maxPromptTokens) || "
            "has(self.taskLabels) || has(self.header) || has(self.hasTools) || "
            "has(self.responseFormats)",
            message="rules[].when needs at least one of minPromptTokens, maxPromptTokens, "
            "taskLabels, header, hasTools or responseFormats",
            check=lambda w: (
                w.min_prompt_tokens is not None
                or w.max_prompt_tokens is not None
                or w.task_labels is not None
                or w.header is not None
                or w.has_tools is not None
                or w.response_formats is not None
            ),
        ),
        common.CelRule(
            rule="!has(self.minPromptTokens) || !has(self.maxPromptTokens) || "
            "self.minPromptTokens <= self.maxPromptTokens",
            message="rules[].when.minPromptTokens must be <= rules[].when.maxPromptTokens",
            field_path=".minPromptTokens",
            check=lambda w: (
                w.min_prompt_tokens is None
                or w.max_prompt_tokens is None
                or w.min_prompt_tokens <= w.max_prompt_tokens
            ),
        ),
    )


class Rule(common.KascadeModel):
    """Routes matching requests before the local first pass. The first match wins."""

    name: common.DnsLabel
    """Rule name, unique in the policy; reported in the x-kascade-rule header (the
    reason is 'rule' only for action 'expert') and audit lines."""

    when: RuleMatch
    """What the request must look like."""

    action: Literal["local", "expert", "tier"]
    """'local' (answer locally, never escalate), 'expert' (straight to an expert) or
    'tier' (answer with the named local tier)."""

    expert: ExpertName | None = None
    """With action 'expert': this expert, which must be listed in spec.experts; unset
    picks one by expertSelection."""

    tier: common.DnsLabel | None = None
    """With action 'tier': the tier name from spec.tiers (required)."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="self.action != 'tier' || has(self.tier)",
            message="rules[].tier is required when action is 'tier'",
            field_path=".tier",
            check=lambda r: r.action != "tier" or r.tier is not None,
        ),
        common.CelRule(
            rule="!has(self.tier) || self.action == 'tier'",
            message="rules[].tier is accepted only when action is 'tier'",
            field_path=".tier",
            check=lambda r: r.tier is None or r.action == "tier",
        ),
        common.CelRule(
            rule="!has(self.expert) || self.action == 'expert'",
            message="rules[].expert is accepted only when action is 'expert'",
            field_path=".expert",
            check=lambda r: r.expert is None or r.action == "expert",
        ),
    )


class CustomPattern(common.KascadeModel):
    """A regular expression treated as personal data."""

    name: common.DnsLabel
    """Pattern name, used in redaction markers and audit lines."""

    regex: Annotated[
        str,
        pydantic.Field(
            min_length=1,
            max_length=1024,
            json_schema_extra={
                common.CEL_RULES_KEY: [
                    {
                        # Compiling the pattern is the check: CEL's matches() is RE2, and an
                        # invalid pattern is an evaluation error, which rejects the object.
                        "rule": "''.matches(self) || !''.matches(self)",
                        "message": "must be a regular expression in RE2 syntax (no "
                        "backreferences or lookaround)",
                    }
                ]
            },
        ),
        pydantic.AfterValidator(regex_mod.check_re2),
    ]
    """Regular expression in RE2 syntax (Go's regexp; Python's re without backreferences
    or lookaround), matched in time linear in the prompt. Checked when the policy is
    applied."""


def _all_detectors() -> list[PiiDetector]:
    return [
        "email",
        "phone",
        "credit-card",
        "iban",
        "ip-address",
        "ssn",
        "date-of-birth",
        "national-id",
        "secret",
    ]


class PrivacySpec(common.KascadeModel):
    """Personal data detection and what to do about it."""

    detectors: Annotated[list[PiiDetector], pydantic.Field(max_length=9)] = pydantic.Field(
        default_factory=_all_detectors,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    """Built-in detectors: email (internationalised), phone (number plans of 15
    countries), credit-card (Luhn and issuer prefix), iban (mod-97), ip-address (IPv4,
    IPv6), ssn (US), date-of-birth (dates next to words like "born"), national-id
    (check-digit IDs of 10 countries, passport numbers next to "passport"), secret
    (API keys, AWS keys, JWTs, PEM blocks). None detects person names or postal
    addresses."""

    custom_patterns: Annotated[list[CustomPattern], pydantic.Field(max_length=32)] = pydantic.Field(
        default_factory=list,
        alias="customPatterns",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    """Extra patterns treated as personal data."""

    action: Literal["redact", "local-only", "allow"] = "redact"
    """'redact' (replace detected data before anything leaves the cluster), 'local-only'
    (never escalate such requests) or 'allow' (send as is, to experts whose dataPolicy
    allows personal data)."""

    unscannable: Literal["reject", "local-only", "allow"] = "reject"
    """Binary parts no detector can read (base64 images, audio, files) under action
    'redact' or 'local-only', when the policy has experts: 'reject' answers 400 naming
    the part, 'local-only' keeps the request in the cluster, 'allow' sends them
    unscanned."""


class ExactCache(common.KascadeModel):
    """Answers identical requests (normalised messages and parameters) from cache."""

    ttl_seconds: Annotated[int, pydantic.Field(ge=1, le=604800)] = pydantic.Field(
        default=300, alias="ttlSeconds"
    )
    """How long an answer stays cached."""


class SemanticCache(common.KascadeModel):
    """Answers near-identical requests from cache (embedding similarity)."""

    threshold: Annotated[float, pydantic.Field(ge=0.5, le=1.0)] = 0.95
    """Cosine similarity at or above which a cached answer is reused, in [0.5, 1].
    Requests that differ in numbers or negations never match."""

    ttl_seconds: Annotated[int, pydantic.Field(ge=1, le=604800)] = pydantic.Field(
        default=300, alias="ttlSeconds"
    )
    """How long an answer stays cached."""


class CacheSpec(common.KascadeModel):
    """Response caching; each kind is on when its section is present."""

    exact: ExactCache | None = None
    """Exact-match cache."""

    semantic: SemanticCache | None = None
    """Semantic cache."""

    shared_across_tenants: bool = pydantic.Field(default=False, alias="sharedAcrossTenants")
    """Serve answers cached for one tenant to other tenants too. Off: each tenant has its
    own cache partition, so no answer crosses from one team to another."""


class FallbackSpec(common.KascadeModel):
    """What happens when an escalation finds no usable expert."""

    when_experts_unavailable: Literal["local", "error"] = pydantic.Field(
        default="local", alias="whenExpertsUnavailable"
    )
    """'local' returns the local answer marked degraded; 'error' fails with 503."""

    message: Annotated[str, pydantic.Field(max_length=1024)] | None = None
    """Text returned in the error (with 'error') or at the start of the x-kascade-degraded
    header on the local answer (with 'local'), followed by why each expert failed."""


class AuditSpec(common.KascadeModel):
    """One audit line per request with the routing decision."""

    enabled: bool = True
    """Whether audit lines are written."""

    include_prompts: bool = pydantic.Field(default=False, alias="includePrompts")
    """Whether audit lines contain the prompt text and the answer's tool-call arguments,
    redacted by the policy's privacy detectors whatever its privacy action."""


class RoutingPolicySpec(common.KascadeModel):
    """Desired state of a RoutingPolicy. Clients select it with "model": "<name>"."""

    local_pool: PoolName | None = pydantic.Field(default=None, alias="localPool")
    """The LocalModelPool that answers first. Exactly one of localPool or tiers."""

    tiers: Annotated[list[Tier], pydantic.Field(min_length=1, max_length=8)] | None = (
        pydantic.Field(
            default=None,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        )
    )
    """Ordered local tiers, tried first to last: a request goes to the first whose
    maxPromptTokens takes its prompt (a rule with action 'tier' names one outright).
    Exactly one of localPool or tiers."""

    experts: Annotated[list[ExpertName], pydantic.Field(max_length=16)] = pydantic.Field(
        default_factory=list, json_schema_extra={"x-kubernetes-list-type": "set"}
    )
    """CloudExperts that may be escalated to, in order of preference; names are unique.
    Empty keeps every request local."""

    expert_selection: Literal["ordered", "cheapest"] = pydantic.Field(
        default="ordered", alias="expertSelection"
    )
    """'ordered' tries experts in list order; 'cheapest' picks the healthy expert within
    budget with the lowest expected cost."""

    confidence: ConfidenceSpec = pydantic.Field(default_factory=ConfidenceSpec)
    """The rule that decides whether a local answer is escalated."""

    rules: Annotated[list[Rule], pydantic.Field(max_length=32)] = pydantic.Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Routing by request features, checked in order before the local pass."""

    overflow: Literal["escalate", "wait", "reject"] = "escalate"
    """When the pool is saturated: 'escalate' to an expert, 'wait' for a slot (up to the
    pool's capacity.maxQueueWaitMillis), or 'reject' with 429."""

    privacy: PrivacySpec = pydantic.Field(default_factory=PrivacySpec)
    """Personal data handling."""

    cache: CacheSpec = pydantic.Field(default_factory=CacheSpec)
    """Response caching."""

    fallback: FallbackSpec = pydantic.Field(default_factory=FallbackSpec)
    """Behaviour when no expert can be used."""

    max_cost_per_request_usd: common.UsdAmount | None = pydantic.Field(
        default=None, alias="maxCostPerRequestUSD"
    )
    """Escalations whose worst-case cost exceeds this are not made."""

    audit: AuditSpec = pydantic.Field(default_factory=AuditSpec)
    """Audit logging."""

    allow_anonymous: bool = pydantic.Field(default=False, alias="allowAnonymous")
    """Accept callers without an API key. Off: the operator-rendered gateway answers 401
    to requests for this policy that carry no key of a Tenant of the namespace."""

    variants: Annotated[list[Variant], pydantic.Field(max_length=16)] = pydantic.Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """An A/B split: each caller is assigned one variant by weight and keeps it (sticky:
    a hash of the request's `user` field, else its API key, else its tenant; anonymous
    callers without `user` are assigned per request). Empty serves every request by the
    policy as written."""

    __kascade_rules__: ClassVar[tuple[common.CelRule, ...]] = (
        common.CelRule(
            rule="has(self.localPool) != has(self.tiers)",
            message="exactly one of localPool or tiers is required",
            field_path=".localPool",
            check=lambda s: (s.local_pool is None) != (s.tiers is None),
        ),
        common.CelRule(
            rule="!has(self.rules) || self.rules.all(r, !has(r.expert) || "
            "(has(self.experts) && r.expert in self.experts))",
            message="rules[].expert must name an expert listed in spec.experts",
            field_path=".rules",
            check=lambda s: all(r.expert is None or r.expert in s.experts for r in s.rules),
        ),
        common.CelRule(
            rule="!has(self.rules) || self.rules.all(r, r.action != 'expert' || "
            "(has(self.experts) && size(self.experts) > 0))",
            message="rules with action 'expert' need at least one entry in spec.experts",
            field_path=".experts",
            check=lambda s: all(r.action != "expert" for r in s.rules) or len(s.experts) > 0,
        ),
        common.CelRule(
            rule="!has(self.rules) || self.rules.all(r, !has(r.tier) || "
            "(has(self.tiers) && self.tiers.exists(t, t.name == r.tier)))",
            message="rules[].tier must name a tier listed in spec.tiers",
            field_path=".rules",
            check=lambda s: all(
                r.tier is None or any(t.name == r.tier for t in s.tiers or []) for r in s.rules
            ),
        ),
        common.CelRule(
            rule="!has(self.variants) || self.variants.all(v, !has(v.overrides) || "
            "!has(v.overrides.localPool) || has(self.localPool))",
            message="variants[].overrides.localPool is accepted only when spec.localPool is "
            "set (a policy with tiers cannot swap one pool)",
            field_path=".variants",
            check=lambda s: (
                all(v.overrides.local_pool is None for v in s.variants) or s.local_pool is not None
            ),
        ),
        common.CelRule(
            rule="!has(self.variants) || self.variants.all(v, self.variants.exists_one(w, "
            "w.name == v.name))",
            message="variants[].name must be unique in the policy",
            field_path=".variants",
            check=lambda s: len({v.name for v in s.variants}) == len(s.variants),
        ),
        common.CelRule(
            rule="!has(self.variants) || self.variants.all(v, !has(v.overrides) || "
            "!has(v.overrides.confidence) || "
            "(has(v.overrides.confidence.method) ? v.overrides.confidence.method : "
            "self.confidence.method) != 'combined' || has(v.overrides.confidence.combined) || "
            "has(self.confidence.combined) || "
            "(has(self.confidence.target) && has(self.confidence.target.fitScore) && "
            "self.confidence.target.fitScore))",
            message="variants[].overrides.confidence.method 'combined' needs "
            "confidence.combined (its weights) in the variant or the policy, or the "
            "policy's confidence.target.fitScore",
            field_path=".variants",
            check=lambda s: all(_variant_has_weights(s, v) for v in s.variants),
        ),
        common.CelRule(
            rule="!has(self.variants) || self.variants.all(v, !has(v.overrides) || "
            "!has(v.overrides.confidence) || "
            "!(has(v.overrides.confidence.dynamic) || has(self.confidence.dynamic)) || ("
            "(has(v.overrides.confidence.dynamic) ? v.overrides.confidence.dynamic.minThreshold"
            " : self.confidence.dynamic.minThreshold) <= "
            "(has(v.overrides.confidence.threshold) ? v.overrides.confidence.threshold"
            " : self.confidence.threshold) && "
            "(has(v.overrides.confidence.threshold) ? v.overrides.confidence.threshold"
            " : self.confidence.threshold) <= "
            "(has(v.overrides.confidence.dynamic) ? v.overrides.confidence.dynamic.maxThreshold"
            " : self.confidence.dynamic.maxThreshold)))",
            message="variants[].overrides.confidence.threshold must lie between the "
            "variant's (or the policy's) dynamic.minThreshold and dynamic.maxThreshold",
            field_path=".variants",
            check=lambda s: all(_variant_threshold_in_bounds(s, v) for v in s.variants),
        ),
    )


def _variant_has_weights(spec: RoutingPolicySpec, variant: Variant) -> bool:
    """A variant whose (own or inherited) method is 'combined' has weights to use."""
    override = variant.overrides.confidence
    if override is None:
        return True
    method = override.method or spec.confidence.method
    return (
        method != "combined"
        or override.combined is not None
        or (spec.confidence.combined is not None)
        or _fits(spec.confidence)
    )


def _variant_threshold_in_bounds(spec: RoutingPolicySpec, variant: Variant) -> bool:
    """A variant's (own or inherited) threshold lies within its (own or inherited)
    dynamic bounds."""
    override = variant.overrides.confidence
    if override is None:
        return True
    dynamic = override.dynamic or spec.confidence.dynamic
    threshold = spec.confidence.threshold if override.threshold is None else override.threshold
    return dynamic is None or dynamic.min_threshold <= threshold <= dynamic.max_threshold


class PolicyStats(common.KascadeModel):
    """Traffic figures since the gateway started serving this generation."""

    requests: Annotated[int, pydantic.Field(ge=0)] = 0
    """Requests served."""

    escalation_rate: common.Fraction = pydantic.Field(default=0.0, alias="escalationRate")
    """Fraction of requests answered by an expert."""

    cache_hit_rate: common.Fraction = pydantic.Field(default=0.0, alias="cacheHitRate")
    """Fraction of requests answered from cache."""

    cost_usd: Annotated[float, pydantic.Field(ge=0.0)] = pydantic.Field(
        default=0.0, alias="costUSD"
    )
    """Expert spend caused by this policy."""

    since: common.Timestamp | None = None
    """Start of the period these figures cover."""


class LearnedThreshold(common.KascadeModel):
    """The threshold learned for one task (or '*' for all traffic) and what it rests on."""

    variant: common.DnsLabel | None = None
    """The variant (spec.variants) whose own labels this threshold is learned from; each
    variant learns on its own. Unset for a policy without variants."""

    task: Annotated[str, pydantic.Field(max_length=253)]
    """Task label from the policy's rules, or '*' for all traffic."""

    threshold: common.Fraction | None = None
    """Learned threshold; unset while fewer than minLabels labels exist."""

    labels: int = pydantic.Field(default=0, ge=0)
    """Labels in the window."""

    local_error_estimate: common.Fraction | None = pydantic.Field(
        default=None, alias="localErrorEstimate"
    )
    """Observed error rate of labelled answers at the learned threshold."""

    local_error_upper_bound: common.Fraction | None = pydantic.Field(
        default=None, alias="localErrorUpperBound"
    )
    """Upper confidence bound of that rate (Clopper-Pearson, at confidenceLevel)."""

    score_labels: int | None = pydantic.Field(default=None, ge=0, alias="scoreLabels")
    """With confidence.target.fitScore: the labels the combined score in use was fitted
    on (the variant's own); unset while no model is fitted."""

    feedback_labels: int | None = pydantic.Field(default=None, ge=0, alias="feedbackLabels")
    """With confidence.target.feedbackLabels: the labels (of the variant, all tasks)
    that came from user ratings since the target was set; unset without it."""


class QualityStatus(common.KascadeModel):
    """What the gateway learned for the policy's quality target (confidence.target)."""

    max_local_error_rate: float = pydantic.Field(gt=0.0, lt=1.0, alias="maxLocalErrorRate")
    """The declared target."""

    learned: Annotated[list[LearnedThreshold], pydantic.Field(max_length=64)] = pydantic.Field(
        default_factory=list
    )
    """One entry per task (and variant) with labels; every '*' entry first."""


class RoutingPolicyStatus(common.KascadeModel):
    """Observed state of a RoutingPolicy, written by the operator."""

    conditions: Annotated[list[common.Condition], pydantic.Field(max_length=16)] = pydantic.Field(
        default_factory=list, json_schema_extra=common.CONDITIONS_LIST
    )
    """Ready, ReferencesResolved and Degraded."""

    observed_generation: int | None = pydantic.Field(default=None, alias="observedGeneration")
    """The metadata.generation this status describes."""

    endpoint: Annotated[str, pydantic.Field(max_length=2048)] | None = None
    """In-cluster URL of the gateway serving this policy (POST /v1/chat/completions)."""

    stats: PolicyStats | None = None
    """Traffic figures."""

    quality: QualityStatus | None = None
    """The learned threshold, its label count and estimated local error rate (policies
    with confidence.target; read from the gateway)."""


class RoutingPolicy(common.KascadeModel):
    """How requests for one model name are answered: local first, experts when needed."""

    api_version: Literal["kascade.io/v1alpha1"] = pydantic.Field(
        default="kascade.io/v1alpha1", alias="apiVersion"
    )
    """kascade.io/v1alpha1."""

    kind: Literal["RoutingPolicy"] = "RoutingPolicy"
    """RoutingPolicy."""

    metadata: common.ObjectMeta
    """Standard object metadata."""

    spec: RoutingPolicySpec
    """Desired state."""

    status: RoutingPolicyStatus | None = None
    """Observed state, written by the operator."""
