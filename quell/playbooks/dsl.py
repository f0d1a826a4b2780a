"""The YAML playbook language, as pydantic models (which also give its JSON Schema).

A playbook is a list of steps; each step is one kind, named by its key::

    id: block-bad-source
    name: Block a malicious source address
    inputs:
      alert: {type: object, required: true}
    vars: {verdict: unknown}
    trigger: {on: alert.created, if: "alert.severity_id >= severity('medium')"}
    steps:
      - id: lookup                      # action: call a connector action
        action: intel.lookup
        with: {value: "{{ alert.src.ip }}"}
        out: {verdict: "{{ output.verdict }}"}
        retry: {attempts: 3, backoff: 2s}
        timeout: 30s
      - id: decide                      # if / then / else
        if: verdict == 'malicious'
        then:
          - id: block
            action: firewall.deny_ip
            with: {ip: "{{ alert.src.ip }}", expires_in: 24h}
        else:
          - {id: note, action: core.log, with: {message: benign}}

Other kinds: ``switch``/``cases``/``default``; ``while``/``max_iterations``/``do``;
``parallel`` (a list of step lists); ``for_each``/``as``/``concurrency`` with ``do`` (or an
``action`` directly); ``playbook``/``version``/``with`` (a sub-playbook); ``wait`` (approval,
task, timer, event); ``set`` (assign variables); ``fail`` (end failed); ``end``. Any step may
have ``on_success``, ``on_failure``, ``on_completion`` (ids of steps in the same list),
``delay``, ``timeout``, step-scoped ``vars`` and ``out`` write-backs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.json_schema import JsonSchemaValue

from quell.durations import parse_duration
from quell.errors import InvalidInput

STEP_ID = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
PLAYBOOK_ID = r"^[a-z0-9][a-z0-9._-]{0,127}$"
VARIABLE = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
TRIGGERS = (
    "alert.created",
    "incident.created",
    "incident.updated",
    "incident.sla_breached",
    "schedule",
    "manual",
)
SCHEMA_ID = "https://quell.dev/schemas/playbook-1.json"


def _seconds(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_duration(value).total_seconds()
        except InvalidInput as exc:
            raise ValueError(exc.message.split(": ", 1)[-1]) from None
    return value


def _duration_schema(schema: JsonSchemaValue) -> None:
    schema.clear()
    schema.update(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*(\d+\s*(ms|s|m|h|d|w)\s*)+$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: 30s, 15m, 24h, 7d, 1h30m, or seconds.",
        }
    )


Duration = Annotated[
    float,
    BeforeValidator(_seconds),
    Field(ge=0, json_schema_extra=_duration_schema),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RetryModel(_Model):
    """Retries of a failed action (exponential backoff with jitter)."""

    attempts: int = Field(1, ge=1, le=100, description="Attempts in all (1: no retry).")
    backoff: Duration = Field(1.0, description="Wait before the second attempt.")
    max_backoff: Duration = Field(300.0, description="The longest wait between attempts.")
    multiplier: float = Field(2.0, ge=1, le=10)


class InputModel(_Model):
    """A run input (CACAO's ``external`` variables)."""

    type: Literal["any", "string", "integer", "number", "boolean", "list", "object"] = "any"
    description: str | None = None
    required: bool = False
    default: Any = None


class TriggerModel(_Model):
    """When the playbook starts by itself."""

    on: Literal[TRIGGERS] = Field(  # type: ignore[valid-type]
        description=(
            "alert.created, incident.created, incident.updated, incident.sla_breached (an SLA "
            "clock ran out: `sla.metric` is acknowledge, contain or close), schedule or manual."
        )
    )
    if_: str | None = Field(None, alias="if", description="A condition on the event.")
    cron: str | None = Field(None, description="schedule: a cron expression (5 fields).")
    timezone: str = "UTC"


# The keys that choose a step's kind, and the keys each kind may have besides the common ones.
KIND_KEYS = (
    "action", "if", "switch", "while", "parallel", "for_each", "playbook", "wait", "set", "fail",
    "end",
)  # fmt: skip
COMMON_KEYS = frozenset(
    {
        "id", "name", "description", "on_success", "on_failure", "on_completion", "delay",
        "timeout", "vars", "out",
    }
)  # fmt: skip
KIND_EXTRAS: dict[str, frozenset[str]] = {
    "action": frozenset({"with", "retry", "approval"}),
    "if": frozenset({"then", "else"}),
    "switch": frozenset({"cases", "default"}),
    "while": frozenset({"max_iterations", "do"}),
    "parallel": frozenset(),
    "for_each": frozenset({"as", "concurrency", "do", "action", "with", "retry", "approval"}),
    "playbook": frozenset({"version", "with"}),
    "wait": frozenset({"prompt", "duration", "until", "expires_in", "on_expiry", "approvers"}),
    "set": frozenset(),
    "fail": frozenset(),
    "end": frozenset(),
}


class StepModel(_Model):
    """One step. Its kind is the one kind key it has (``action``, ``if``, ``wait`` …)."""

    id: str = Field(pattern=STEP_ID, description="Unique in the playbook; `steps.<id>` reads it.")
    name: str | None = None
    description: str | None = None

    action: str | None = Field(None, description="The action key, `connector.verb_object`.")
    with_: dict[str, Any] | None = Field(None, alias="with", description="Inputs (templates).")
    retry: RetryModel | None = None
    approval: bool = Field(False, description="Ask for an approval before the action runs.")

    if_: str | None = Field(None, alias="if", description="A condition.")
    then: list[StepModel] | None = None
    else_: list[StepModel] | None = Field(None, alias="else")

    switch: str | None = Field(None, description="An expression whose value picks a case.")
    cases: dict[str, list[StepModel]] | None = None
    default: list[StepModel] | None = None

    while_: str | None = Field(None, alias="while", description="Repeat `do` while this holds.")
    max_iterations: int | None = Field(None, ge=1, le=100_000)
    do: list[StepModel] | None = None

    parallel: list[list[StepModel]] | None = Field(None, description="Branches run at once.")

    for_each: str | list[Any] | None = Field(None, description="A list (or template) to walk.")
    as_: str = Field("item", alias="as", pattern=VARIABLE)
    concurrency: int = Field(1, ge=1, le=1000)

    playbook: str | None = Field(None, pattern=PLAYBOOK_ID, description="A sub-playbook's id.")
    version: int | None = Field(None, ge=1)

    wait: Literal["approval", "task", "timer", "event"] | None = None
    prompt: str | None = None
    duration: Duration | None = None
    until: str | None = None
    expires_in: Duration | None = None
    on_expiry: Literal["skip", "fail", "escalate"] = "fail"
    approvers: list[str] = Field(default_factory=list)

    set: dict[str, Any] | None = Field(None, description="Variables to assign (templates).")
    fail: str | None = Field(None, description="End the branch failed, with this message.")
    end: bool | None = None

    on_success: str | None = Field(None, pattern=STEP_ID)
    on_failure: str | None = Field(None, pattern=STEP_ID)
    on_completion: str | None = Field(None, pattern=STEP_ID)
    delay: Duration | None = None
    timeout: Duration | None = None
    vars: dict[str, Any] = Field(default_factory=dict, description="Step-scoped variables.")
    out: dict[str, Any] = Field(default_factory=dict, description="Variables set on success.")

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kinds = [key for key in KIND_KEYS if key in data]
        if "for_each" in kinds and "action" in kinds:
            kinds.remove("action")  # for_each with an action: the action is the body
        if len(kinds) != 1:
            given = " and ".join(kinds) if kinds else "none"
            raise ValueError(
                f"a step has exactly one of {', '.join(KIND_KEYS)}; this one has {given}"
            )
        kind = kinds[0]
        allowed = COMMON_KEYS | KIND_EXTRAS[kind] | {kind}
        for key in data:
            if key not in allowed and key in _ALL_KIND_FIELDS:
                raise ValueError(f"{key!r} does not belong to a {kind} step")
        return data

    @property
    def kind(self) -> str:
        """The kind key this step has."""
        for key, value in (
            ("for_each", self.for_each),
            ("action", self.action),
            ("if", self.if_),
            ("switch", self.switch),
            ("while", self.while_),
            ("parallel", self.parallel),
            ("playbook", self.playbook),
            ("wait", self.wait),
            ("set", self.set),
            ("fail", self.fail),
            ("end", self.end),
        ):
            if value is not None:
                return key
        return "end"


_ALL_KIND_FIELDS = frozenset().union(*KIND_EXTRAS.values()) | set(KIND_KEYS)


class PlaybookModel(_Model):
    """A playbook written in YAML (or JSON)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        title="Quell playbook",
        json_schema_extra={"$id": SCHEMA_ID},
    )

    id: str = Field(pattern=PLAYBOOK_ID, description="Stable id; sub-playbooks call it.")
    name: str = Field(min_length=1, max_length=200)
    version: int = Field(1, ge=1)
    description: str | None = None
    inputs: dict[str, InputModel | None] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict, description="Playbook variables.")
    trigger: TriggerModel | None = None
    triggers: list[TriggerModel] = Field(default_factory=list)
    timeout: Duration | None = None
    on_exception: list[StepModel] | None = Field(
        None, description="Steps run when a failure reaches the top, before the run fails."
    )
    steps: list[StepModel] = Field(min_length=1)


StepModel.model_rebuild()
PlaybookModel.model_rebuild()


def json_schema() -> dict[str, Any]:
    """The playbook language's JSON Schema (draft 2020-12), for editors."""
    schema = PlaybookModel.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


__all__ = [
    "KIND_KEYS",
    "PlaybookModel",
    "RetryModel",
    "StepModel",
    "TriggerModel",
    "json_schema",
]
