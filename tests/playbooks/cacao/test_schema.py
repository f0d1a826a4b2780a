"""CACAO 2.0 validation: the official schemas in both modes, the reference checks, loading."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from quell.errors import ConfigurationError, ErrorCode, InvalidInput
from quell.playbooks.cacao.schema import (
    MAX_CACAO_BYTES,
    SCHEMAS_MISSING,
    TLP_MARKINGS,
    CacaoInvalid,
    CacaoProblem,
    Mode,
    json_path,
    load_cacao,
    schemas_dir,
    validate_cacao,
)
from tests.fixtures.cacao import CACAO_PLAYBOOKS
from tests.fixtures.requirements import corpus_path

CACAO = corpus_path() / "cacao"
SCHEMAS = CACAO / "schemas" / "schemas"
PLAYBOOKS = CACAO_PLAYBOOKS
MODES: list[Mode] = ["lenient", "strict"]


def sid(kind: str, n: int) -> str:
    """A deterministic identifier of the ``type--uuid`` form the schema accepts."""
    return f"{kind}--{uuid.UUID(int=n, version=4)}"


START, ACTION, END = sid("start", 1), sid("action", 2), sid("end", 3)
AGENT = sid("individual", 10)
VAR = "__host__"


def action(after: str | None = END, **extra: Any) -> dict[str, Any]:
    step: dict[str, Any] = {
        "type": "action",
        "commands": [{"type": "manual", "command": f"look at {VAR}:value"}],
        "agent": AGENT,
    }
    if after:
        step["on_completion"] = after
    return step | extra


def playbook(workflow: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """start → action → end, with one agent and one variable: valid in strict mode."""
    doc: dict[str, Any] = {
        "type": "playbook",
        "spec_version": "cacao-2.0",
        "id": sid("playbook", 100),
        "name": "hand-made",
        "created_by": sid("identity", 101),
        "created": "2024-01-01T00:00:00.000Z",
        "modified": "2024-01-01T00:00:00.000Z",
        "workflow_start": START,
        "workflow": workflow
        or {
            START: {"type": "start", "on_completion": ACTION},
            ACTION: action(),
            END: {"type": "end"},
        },
        "agent_definitions": {AGENT: {"type": "individual", "name": "analyst"}},
        "playbook_variables": {VAR: {"type": "string", "value": "db1"}},
    }
    return doc | extra


def check(doc: Any, mode: Mode = "strict", schemas: Path | None = None) -> list[CacaoProblem]:
    return validate_cacao(doc, mode, schemas=schemas)


def errors(doc: Any, mode: Mode = "strict", schemas: Path | None = None) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in check(doc, mode, schemas) if p.severity == "error"]


def warnings(
    doc: Any, mode: Mode = "lenient", schemas: Path | None = None
) -> list[tuple[str, str]]:
    found = check(doc, mode, schemas)
    return [(p.path, p.message) for p in found if p.severity == "warning"]


def has(found: list[tuple[str, str]], path: str, fragment: str) -> bool:
    return any(p == path and fragment in m for p, m in found)


def step_path(key: str, *more: str | int) -> str:
    return json_path(("workflow", key, *more))


def corpus_doc(folder: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((CACAO / folder / name).read_text())
    return doc


# -- the corpus --------------------------------------------------------------------------------


@pytest.mark.requires("corpus")
def test_the_list_names_every_corpus_playbook() -> None:
    assert sorted(p.name for p in (CACAO / "playbooks").glob("*.json")) == PLAYBOOKS


@pytest.mark.requires("corpus")
@pytest.mark.parametrize("name", PLAYBOOKS)
def test_every_published_playbook_is_accepted_in_lenient_mode(name: str) -> None:
    assert errors(corpus_doc("playbooks", name), "lenient", SCHEMAS) == []


@pytest.mark.requires("corpus")
@pytest.mark.parametrize("name", ["basic-example-1.json", "spec-3.1-example.json"])
@pytest.mark.parametrize("mode", MODES)
def test_the_tc_examples_are_clean_in_both_modes(name: str, mode: Mode) -> None:
    assert check(corpus_doc("playbooks", name), mode, SCHEMAS) == []


LAYOUT_ACTIONS = [
    "action--4005472a-0b74-48c6-b04b-45bb8cf2b1ae",
    "action--63483dce-6122-4975-8c7c-795d2453243d",
    "action--9a4ef680-ba51-4c1b-9b2d-715caf06ef3a",
    "action--9ae9e500-155e-4f63-a76e-a43856063f55",
]
LAYOUT_SWITCH = "switch-condition--72c55a11-5091-4714-8050-baa854d72eda"
LAYOUT = "oasis-tcs-cacao_layout_playbook--aa1898b6-5251-49b4-aeb7-fd5e912583ff.json"


@pytest.mark.requires("corpus")
def test_layout_example_descriptive_steps_and_unknown_property_are_warnings() -> None:
    doc = corpus_doc("playbooks", LAYOUT)
    expected = {("$.playbook_extension", "not a CACAO 2.0 property: ignored")}
    for key in LAYOUT_ACTIONS:
        for name in ("commands", "agent"):
            expected.add(
                (
                    step_path(key),
                    f"action step without '{name}': a descriptive step, imported as a manual task",
                )
            )
    expected.add(
        (
            step_path(LAYOUT_SWITCH),
            "switch-condition step without 'switch': a descriptive decision",
        )
    )
    assert set(warnings(doc, "lenient", SCHEMAS)) == expected
    assert len(warnings(doc, "lenient", SCHEMAS)) == 10


@pytest.mark.requires("corpus")
def test_layout_example_is_refused_in_strict_mode() -> None:
    found = errors(corpus_doc("playbooks", LAYOUT), "strict", SCHEMAS)
    expected = {("$.playbook_extension", "not a CACAO 2.0 property")}
    expected |= {
        (step_path(k), f"action step without '{n}'")
        for k in LAYOUT_ACTIONS
        for n in ("commands", "agent")
    }
    expected.add((step_path(LAYOUT_SWITCH), "switch-condition step without 'switch'"))
    assert sorted(found) == sorted(expected)


FIN_AGENT = "soarca-fin-pong-f896bb3b-bb37-429e-8ece-2d4286cf326d"
FIN_ACTION = "action--2fd6bca0-24ed-4d74-8eae-da126a84f7c4"


@pytest.mark.requires("corpus")
def test_fin_agent_name_is_a_warning_in_lenient_and_an_error_in_strict() -> None:
    doc = corpus_doc("playbooks", "soarca_fin-playbook.json")
    message = f"'{FIN_AGENT}' is not a CACAO identifier (type--uuid)"
    places = [json_path(("agent_definitions", FIN_AGENT)), step_path(FIN_ACTION, "agent")]
    assert warnings(doc, "lenient", SCHEMAS) == [
        (p, f"{message}: accepted as a name") for p in places
    ]
    assert errors(doc, "strict", SCHEMAS) == [(p, message) for p in places]


@pytest.mark.requires("corpus")
def test_http_custom_agent_type_is_refused_in_strict_mode() -> None:
    doc = corpus_doc("playbooks", "soarca_http-playbook.json")
    agent = json_path(("agent_definitions", "soarca--00020001-1000-1000-a000-000100010001"))
    assert errors(doc, "strict", SCHEMAS) == [
        (agent, "'soarca' is not a CACAO 2.0 agent-target type")
    ]
    assert warnings(doc, "lenient", SCHEMAS) == [
        (
            agent,
            "'soarca' is not a CACAO 2.0 agent-target type: "
            "a custom type: its properties are not checked",
        )
    ]


SOARCA_FIRST = "action--a76dbc32-b739-427b-ae13-4ec703d5797e"
SOARCA_INDIVIDUAL = "individual--6b23a237-ade8-4d00-9aa1-75999732d557"
SOARCA_EXCEPTION = "'end--40131926-89e9-44df-a018-5f92f2df7914' is not a step in the workflow"


@pytest.mark.requires("corpus")
def test_soarca_test_playbook_warnings() -> None:
    found = warnings(corpus_doc("playbooks", "soarca_test_playbook.json"), "lenient", SCHEMAS)
    assert ("$.workflow_exception", f"{SOARCA_EXCEPTION}: ignored") in found
    assert has(
        found, "$.workflow_start", f"'{SOARCA_FIRST}' is a step of type 'action', not a start step"
    )
    command = step_path(SOARCA_FIRST, "commands", 0, "command")
    assert has(found, command, "'__imc_address__' is not a declared variable")
    assert has(found, command, "'__cve__' is not a declared variable")
    assert has(
        found,
        json_path(("agent_definitions", SOARCA_INDIVIDUAL, "banana")),
        "not a CACAO 2.0 property",
    )


@pytest.mark.requires("corpus")
def test_strict_mode_checks_unknown_properties_inside_referenced_schemas() -> None:
    """jsonschema turns back into draft-07 inside each file unless ``$schema`` is rewritten."""
    found = errors(corpus_doc("playbooks", "soarca_test_playbook.json"), "strict", SCHEMAS)
    banana = json_path(("agent_definitions", SOARCA_INDIVIDUAL, "banana"))
    assert (banana, "not a CACAO 2.0 property") in found
    assert ("$.workflow_exception", SOARCA_EXCEPTION) in found
    # variables referenced but never declared stay warnings, even in strict mode
    assert not any("declared variable" in message for _, message in found)


@pytest.mark.requires("corpus")
def test_parallels_shared_end_and_agent_on_a_parallel_step_are_warnings() -> None:
    found = warnings(
        corpus_doc("playbooks", "soarca_test_parallels_playbook.json"), "lenient", SCHEMAS
    )
    parallel = "parallel--a76dbc32-b739-427b-ae13-4ec703d5797e"
    shared = step_path("action--9fcc5c3b-0b70-4d73-b922-cf5491dcd1a4", "on_completion")
    assert has(found, shared, f"the branch from {parallel} (next_steps[0]) ends in end--6b23c237")
    assert has(found, shared, "each branch needs its own end step: accepted")
    assert (step_path(parallel, "agent"), "not a CACAO 2.0 property: ignored") in found
    assert has(found, "$.workflow_start", "is a step of type 'parallel', not a start step")


INVALID_AGENT = json_path(
    ("agent_definitions", "http-api--7e9174ec-a293-43df-a72d-471c79e276bf", "type")
)
MISSING_END = "end--6b23c237-ade8-4d00-9aa1-75999738d558"


@pytest.mark.requires("corpus")
@pytest.mark.parametrize("mode", MODES)
def test_soarca_invalid_agent_type_is_refused(mode: Mode) -> None:
    found = errors(corpus_doc("invalid", "soarca_test_invalid_playbook.json"), mode, SCHEMAS)
    assert has(found, INVALID_AGENT, "'invalid'")
    assert sum(1 for path, _ in found if path == INVALID_AGENT) == 1


@pytest.mark.requires("corpus")
@pytest.mark.parametrize("schemas", [SCHEMAS, None], ids=["schemas", "no-schemas"])
@pytest.mark.parametrize("mode", MODES)
def test_soarca_missing_step_is_refused(mode: Mode, schemas: Path | None) -> None:
    found = errors(corpus_doc("invalid", "soarca_test_missing_step_playbook.json"), mode, schemas)
    pointer = step_path("action--2190f685-1857-44ac-ad0e-0ded6c6ef3ce", "on_completion")
    assert (pointer, f"'{MISSING_END}' is not a step in the workflow") in found


@pytest.mark.requires("corpus")
def test_invalid_agent_type_is_found_by_the_reference_checks_alone() -> None:
    found = errors(corpus_doc("invalid", "soarca_test_invalid_playbook.json"), "lenient", None)
    assert found == [(INVALID_AGENT, "type 'invalid' does not match the key prefix 'http-api--'")]


@pytest.mark.requires("corpus")
def test_tlp_markings_are_the_tc_common_objects() -> None:
    published = {}
    for path in (CACAO / "common").glob("marking-tlp--*.json"):
        ((key, marking),) = json.loads(path.read_text()).items()
        published[key] = marking["tlpv2_level"]
    assert dict(TLP_MARKINGS) == published


@pytest.mark.requires("corpus")
@pytest.mark.parametrize("mode", MODES)
def test_a_hand_made_playbook_is_clean_against_the_schemas(mode: Mode) -> None:
    assert check(playbook(), mode, SCHEMAS) == []


@pytest.mark.requires("corpus")
def test_the_schema_and_the_reference_checks_do_not_report_twice() -> None:
    workflow = playbook()["workflow"] | {sid("action", 5): {"type": "end", "on_completion": END}}
    workflow[START]["on_success"] = ACTION
    found = errors(playbook(workflow), "strict", SCHEMAS)
    wrong = sid("action", 5)
    assert (step_path(wrong, "type"), "'end' is not one of ['action']") in found
    assert [p for p, _ in found].count(step_path(wrong, "type")) == 1
    assert (step_path(START, "on_success"), "start steps cannot have on_success") in found
    assert not any(path == step_path(START) for path, _ in found)  # no raw "not"/"anyOf" report


@pytest.mark.requires("corpus")
def test_schemas_auto_uses_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUELL_CACAO_SCHEMAS", str(SCHEMAS))
    assert schemas_dir() == SCHEMAS.resolve()
    doc = corpus_doc("playbooks", "soarca_http-playbook.json")
    assert validate_cacao(doc, "strict") == validate_cacao(doc, "strict", schemas=SCHEMAS)


@pytest.mark.requires("corpus")
def test_schemas_dir_falls_back_to_the_corpus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("QUELL_CACAO_SCHEMAS", raising=False)
    monkeypatch.setenv("QUELL_CORPUS", str(corpus_path()))
    assert schemas_dir() == SCHEMAS.resolve()
    monkeypatch.delenv("QUELL_CORPUS")
    work = tmp_path / "main"
    work.mkdir()
    (tmp_path / "shared").symlink_to(corpus_path().parent)
    monkeypatch.chdir(work)
    # never a path relative to where a process started: what validates must not depend on it
    assert schemas_dir() is None


def test_schemas_dir_is_none_without_schemas(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("QUELL_CACAO_SCHEMAS", raising=False)
    monkeypatch.setenv("QUELL_CORPUS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert schemas_dir() is None
    found = validate_cacao(playbook(), "strict")  # strict cannot be without the schemas
    assert [(p.path, p.message, p.severity) for p in found] == [("$", SCHEMAS_MISSING, "error")]
    found = validate_cacao(playbook(), "lenient")
    assert [(p.path, p.message, p.severity) for p in found] == [("$", SCHEMAS_MISSING, "warning")]


def test_a_configured_schemas_folder_must_hold_playbook_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("QUELL_CACAO_SCHEMAS", str(tmp_path))
    with pytest.raises(ConfigurationError, match="QUELL_CACAO_SCHEMAS"):
        schemas_dir()
    with pytest.raises(ConfigurationError, match=r"playbook\.json"):
        validate_cacao(playbook(), schemas=tmp_path)


# -- without schemas: the reference checks -----------------------------------------------------


def test_without_schemas_only_reference_checks_run_and_one_warning_says_so() -> None:
    doc = playbook()
    doc["workflow"][ACTION]["on_completion"] = sid("end", 99)
    found = check(doc, "strict")
    assert [p for p in found if p.message == SCHEMAS_MISSING] == [
        CacaoProblem("$", SCHEMAS_MISSING, "warning")
    ]
    assert (
        step_path(ACTION, "on_completion"),
        f"'{sid('end', 99)}' is not a step in the workflow",
    ) in [(p.path, p.message) for p in found]


@pytest.mark.parametrize("mode", MODES)
def test_a_valid_playbook_has_no_findings(mode: Mode) -> None:
    assert errors(playbook(), mode) == []
    assert warnings(playbook(), mode) == [("$", SCHEMAS_MISSING)]


def test_orphan_step() -> None:
    orphan = sid("action", 7)
    doc = playbook(playbook()["workflow"] | {orphan: action()})
    assert errors(doc) == [
        (step_path(orphan), f"step {orphan} is not reachable from workflow_start")
    ]


def test_a_step_reached_only_through_workflow_exception_is_no_orphan() -> None:
    handler, handler_end = sid("action", 7), sid("end", 8)
    doc = playbook(
        playbook()["workflow"] | {handler: action(handler_end), handler_end: {"type": "end"}},
        workflow_exception=handler,
    )
    assert errors(doc) == []


def if_playbook(on_true: dict[str, Any], on_false: dict[str, Any] | None = None) -> dict[str, Any]:
    """start → if (branches given as {id: step}, the first one the branch start) → action → end."""
    decide = sid("if-condition", 20)
    workflow: dict[str, Any] = {
        START: {"type": "start", "on_completion": decide},
        decide: {
            "type": "if-condition",
            "condition": f"{VAR}:value = 'db1'",
            "on_completion": ACTION,
        },
        ACTION: action(),
        END: {"type": "end"},
    }
    workflow[decide]["on_true"] = next(iter(on_true))
    workflow |= on_true
    if on_false:
        workflow[decide]["on_false"] = next(iter(on_false))
        workflow |= on_false
    return playbook(workflow)


def test_branch_without_end() -> None:
    body = sid("action", 21)
    doc = if_playbook({body: action(None)})
    decide = sid("if-condition", 20)
    message = f"the branch from {decide} (on_true) reaches {body}, which is not an end step"
    assert errors(doc) == [(step_path(body), message)]


def test_main_flow_without_end() -> None:
    doc = playbook()
    del doc["workflow"][ACTION]["on_completion"]
    found = errors(doc)
    assert (step_path(ACTION), f"the main flow reaches {ACTION}, which is not an end step") in found


def test_branch_joining_main_flow() -> None:
    body = sid("action", 21)
    doc = if_playbook({body: action(ACTION)})
    decide = sid("if-condition", 20)
    assert errors(doc) == [
        (
            step_path(body, "on_completion"),
            f"the branch from {decide} (on_true) joins the main flow at {ACTION}",
        )
    ]


def test_branches_joining_each_other() -> None:
    first, second, shared, end = (
        sid("action", 21),
        sid("action", 22),
        sid("action", 23),
        sid("end", 24),
    )
    doc = if_playbook(
        {first: action(shared), shared: action(end), end: {"type": "end"}}, {second: action(shared)}
    )
    decide = sid("if-condition", 20)
    assert errors(doc) == [
        (
            step_path(second, "on_completion"),
            f"the branch from {decide} (on_false) joins "
            f"the branch from {decide} (on_true) at {shared}",
        )
    ]


def test_shared_end_is_a_warning_in_lenient_and_an_error_in_strict() -> None:
    first, second, end = sid("action", 21), sid("action", 22), sid("end", 24)
    doc = if_playbook({first: action(end), end: {"type": "end"}}, {second: action(end)})
    path = step_path(second, "on_completion")
    fragment = f"ends in {end}, the end step of the branch from {sid('if-condition', 20)} (on_true)"
    assert has(errors(doc, "strict"), path, fragment)
    assert errors(doc, "lenient") == []
    assert has(warnings(doc, "lenient"), path, "each branch needs its own end step: accepted")


def test_a_branch_may_end_in_its_own_end_step() -> None:
    first, second = sid("action", 21), sid("action", 22)
    doc = if_playbook(
        {first: action(sid("end", 31)), sid("end", 31): {"type": "end"}},
        {second: action(sid("end", 32)), sid("end", 32): {"type": "end"}},
    )
    assert errors(doc) == []


def test_on_completion_with_on_success() -> None:
    doc = playbook()
    doc["workflow"][ACTION]["on_success"] = END
    assert errors(doc) == [
        (
            step_path(ACTION, "on_completion"),
            "on_completion cannot be combined with on_success or on_failure",
        )
    ]


def test_start_and_end_steps_with_forbidden_pointers() -> None:
    doc = playbook()
    doc["workflow"][START]["on_failure"] = END
    doc["workflow"][END]["on_completion"] = ACTION
    found = errors(doc)
    assert (step_path(START, "on_failure"), "start steps cannot have on_failure") in found
    assert (step_path(END, "on_completion"), "end steps cannot have on_completion") in found


@pytest.mark.parametrize(
    ("where", "path", "message"),
    [
        (
            "agent",
            step_path(ACTION, "agent"),
            f"'{sid('individual', 66)}' is not in agent_definitions",
        ),
        (
            "target",
            step_path(ACTION, "targets", 0),
            f"'{sid('ssh', 66)}' is not in target_definitions",
        ),
        (
            "auth",
            json_path(("agent_definitions", AGENT, "authentication_info")),
            f"'{sid('user-auth', 66)}' is not in authentication_info_definitions",
        ),
        (
            "marking",
            "$.markings[1]",
            f"'{sid('marking-tlp', 66)}' is not in data_marking_definitions "
            "nor a standard TLP marking",
        ),
    ],
)
def test_unknown_references(where: str, path: str, message: str) -> None:
    doc = playbook()
    if where == "agent":
        doc["workflow"][ACTION]["agent"] = sid("individual", 66)
    elif where == "target":
        doc["workflow"][ACTION]["targets"] = [sid("ssh", 66)]
    elif where == "auth":
        doc["agent_definitions"][AGENT]["authentication_info"] = sid("user-auth", 66)
    else:  # the first is a standard TLP marking: it needs no definition
        doc["markings"] = [next(iter(TLP_MARKINGS)), sid("marking-tlp", 66)]
    assert errors(doc, "lenient") == [(path, message)]


def test_undefined_extension_is_a_warning_in_both_modes() -> None:
    doc = playbook()
    extension = sid("extension-definition", 40)
    doc["workflow"][ACTION]["step_extensions"] = {extension: {"x": 1}}
    path = json_path(("workflow", ACTION, "step_extensions", extension))
    for mode in MODES:
        assert errors(doc, mode) == []
        assert (
            path,
            f"'{extension}' is not in extension_definitions: its data is ignored",
        ) in warnings(doc, mode)


@pytest.mark.parametrize("scope", ["playbook", "step"])
def test_bad_variable_name(scope: str) -> None:
    doc = playbook()
    if scope == "playbook":
        doc["playbook_variables"]["host"] = {"type": "string"}
        path = "$.playbook_variables.host"
    else:
        doc["workflow"][ACTION]["step_variables"] = {"__bad name__": {"type": "string"}}
        path = step_path(ACTION, "step_variables", "__bad name__")
    for mode in MODES:
        assert [(p, m.split(" does not match")[0]) for p, m in errors(doc, mode)] == [
            (path, f"variable name {'host' if scope == 'playbook' else '__bad name__'!r}")
        ]


def test_constant_in_out_args() -> None:
    doc = playbook()
    doc["playbook_variables"][VAR]["constant"] = True
    doc["workflow"][ACTION]["out_args"] = [VAR]
    assert errors(doc, "lenient") == [
        (step_path(ACTION, "out_args", 0), f"'{VAR}' is a constant: a step cannot write it back")
    ]


def test_a_step_variable_shadows_a_constant() -> None:
    doc = playbook()
    doc["playbook_variables"][VAR]["constant"] = True
    doc["workflow"][ACTION] |= {"out_args": [VAR], "step_variables": {VAR: {"type": "string"}}}
    assert errors(doc) == []


def test_undeclared_variables() -> None:
    doc = playbook()
    doc["workflow"][ACTION]["commands"][0]["command"] = "ping __target__:value and __host__"
    doc["workflow"][ACTION]["in_args"] = ["__missing__"]
    command = (
        step_path(ACTION, "commands", 0, "command"),
        "'__target__' is not a declared variable",
    )
    in_arg = (step_path(ACTION, "in_args", 0), "'__missing__' is not a declared variable")
    assert errors(doc, "strict") == [in_arg]
    assert has(warnings(doc, "strict"), *command)  # a warning even in strict mode
    assert errors(doc, "lenient") == []
    assert has(warnings(doc, "lenient"), *in_arg)


def test_agent_address_may_use_variables_of_the_steps_using_it() -> None:
    doc = playbook()
    ssh = sid("ssh", 50)
    doc["agent_definitions"][ssh] = {
        "type": "ssh",
        "name": "box",
        "address": {"ipv4": ["__ip__:value"]},
    }
    doc["workflow"][ACTION]["agent"] = ssh
    path = json_path(("agent_definitions", ssh, "address", "ipv4", 0))
    assert warnings(doc, "strict") == [
        ("$", SCHEMAS_MISSING),
        (path, "'__ip__' is not a declared variable: a runtime leaves it unset"),
    ]
    doc["workflow"][ACTION]["step_variables"] = {"__ip__": {"type": "ipv4-addr"}}
    assert warnings(doc, "strict") == [("$", SCHEMAS_MISSING)]


def test_switch_must_name_a_variable() -> None:
    switch, case = sid("switch-condition", 60), sid("action", 61)
    doc = playbook(
        {
            START: {"type": "start", "on_completion": switch},
            switch: {
                "type": "switch-condition",
                "switch": "colour",
                "cases": {"red": case},
                "on_completion": ACTION,
            },
            case: action(sid("end", 62)),
            sid("end", 62): {"type": "end"},
            ACTION: action(),
            END: {"type": "end"},
        }
    )
    assert errors(doc) == [
        (step_path(switch, "switch"), "switch must name a variable (__name__:value), not 'colour'")
    ]
    doc["workflow"][switch]["switch"] = f"{VAR}:value"
    assert errors(doc) == []


def test_parallel_needs_two_next_steps_and_playbook_action_a_playbook() -> None:
    parallel, sub = sid("parallel", 70), sid("playbook-action", 71)
    doc = playbook(
        {
            START: {"type": "start", "on_completion": parallel},
            parallel: {"type": "parallel", "next_steps": [sub], "on_completion": END},
            sub: {
                "type": "playbook-action",
                "playbook_id": ACTION,
                "on_completion": sid("end", 72),
            },
            sid("end", 72): {"type": "end"},
            END: {"type": "end"},
        }
    )
    assert errors(doc) == [
        (step_path(parallel, "next_steps"), "a parallel step needs at least 2 next_steps"),
        (step_path(sub, "playbook_id"), f"'{ACTION}' is not the id of a playbook (playbook--…)"),
    ]


def test_wrong_key_prefix() -> None:
    wrong = sid("end", 80)
    doc = playbook()
    doc["workflow"][START]["on_completion"] = wrong
    doc["workflow"][wrong] = doc["workflow"].pop(ACTION)
    doc["agent_definitions"][sid("ssh", 81)] = {"type": "individual", "name": "x"}
    assert errors(doc) == [
        (
            json_path(("agent_definitions", sid("ssh", 81), "type")),
            "type 'individual' does not match the key prefix 'ssh--'",
        ),
        (step_path(wrong, "type"), "type 'action' does not match the key prefix 'end--'"),
    ]


def test_custom_agent_type_under_its_own_prefix_is_not_a_prefix_error() -> None:
    doc = playbook()
    doc["agent_definitions"][sid("soarca-manual-capability", 82)] = {
        "type": "soarca-manual",
        "name": "x",
    }
    assert errors(doc) == []


def test_names_that_are_not_identifiers_are_tolerated_in_lenient_mode() -> None:
    doc = playbook()
    doc["agent_definitions"] = {"my-agent": {"type": "individual", "name": "me"}}
    doc["workflow"][ACTION]["agent"] = "my-agent"
    message = "'my-agent' is not a CACAO identifier (type--uuid)"
    places = [json_path(("agent_definitions", "my-agent")), step_path(ACTION, "agent")]
    assert errors(doc, "strict") == [(p, message) for p in places]
    assert errors(doc, "lenient") == []
    assert warnings(doc, "lenient")[1:] == [(p, f"{message}: accepted as a name") for p in places]


def test_descriptive_action_and_dangling_workflow_exception() -> None:
    doc = playbook(workflow_exception=sid("end", 90))
    doc["workflow"][ACTION] = {"type": "action", "name": "think", "on_completion": END}
    strict = errors(doc, "strict")
    assert (step_path(ACTION), "action step without 'commands'") in strict
    assert ("$.workflow_exception", f"'{sid('end', 90)}' is not a step in the workflow") in strict
    assert errors(doc, "lenient") == []


def test_an_if_condition_without_condition_is_an_error_in_both_modes() -> None:
    body, end = sid("action", 21), sid("end", 22)
    doc = if_playbook({body: action(end), end: {"type": "end"}})
    del doc["workflow"][sid("if-condition", 20)]["condition"]
    for mode in MODES:
        assert errors(doc, mode) == [
            (step_path(sid("if-condition", 20)), "if-condition step without 'condition'")
        ]


def test_start_that_is_not_a_start_step() -> None:
    doc = playbook(workflow_start=ACTION)
    del doc["workflow"][START]
    message = f"'{ACTION}' is a step of type 'action', not a start step"
    assert errors(doc, "strict") == [("$.workflow_start", message)]
    assert ("$.workflow_start", f"{message}: the playbook starts there") in warnings(doc, "lenient")


def test_missing_start() -> None:
    doc = playbook(workflow_start=sid("start", 91))
    assert (
        "$.workflow_start",
        f"'{sid('start', 91)}' is not a step in the workflow",
    ) in errors(doc)


def test_cycles_terminate() -> None:
    loop, a, b, self_loop = (
        sid("while-condition", 93),
        sid("action", 94),
        sid("action", 95),
        sid("action", 96),
    )
    doc = playbook(
        {
            START: {"type": "start", "on_completion": loop},
            loop: {
                "type": "while-condition",
                "condition": f"{VAR}:value = 'x'",
                "on_true": a,
                "on_completion": b,
            },
            a: action(loop),  # the loop body returns to the loop head instead of ending
            b: action(self_loop),
            self_loop: action(self_loop),  # a pointer loop without an end
            END: {"type": "end"},
        }
    )
    found = errors(doc)
    assert (
        step_path(a, "on_completion"),
        f"the branch from {loop} (on_true) joins the main flow at {loop}",
    ) in found
    assert (step_path(END), f"step {END} is not reachable from workflow_start") in found


def test_a_long_chain_is_walked_without_recursion() -> None:
    steps = [sid("action", 1000 + i) for i in range(3000)]
    workflow: dict[str, Any] = {
        START: {"type": "start", "on_completion": steps[0]},
        END: {"type": "end"},
    }
    for here, after in zip(steps, [*steps[1:], END], strict=True):
        workflow[here] = action(after)
    assert errors(playbook(workflow)) == []


def test_malformed_documents_never_raise() -> None:
    assert errors([1, 2]) == [("$", "a CACAO playbook is a JSON object, not array")]
    weird = playbook(workflow={"x": 1, START: "no"}, agent_definitions=[], markings="none")
    weird["workflow_start"] = 5
    found = check(weird)
    assert all(isinstance(p, CacaoProblem) for p in found)
    assert errors({"type": "playbook"}) == [("$.spec_version", "spec_version must be 'cacao-2.0'")]


@pytest.mark.requires("corpus")
def test_malformed_documents_never_raise_with_schemas() -> None:
    assert has(errors([1, 2], "lenient", SCHEMAS), "$", "is not of type 'object'")
    weird = playbook(workflow={"x": 1, START: "no"}, agent_definitions=[], markings="none")
    for mode in MODES:
        assert errors(weird, mode, SCHEMAS)


# -- problems and errors -----------------------------------------------------------------------


def test_problem_text_and_data() -> None:
    error = CacaoProblem("$.workflow_start", "missing")
    warning = CacaoProblem("$.x", "odd", "warning")
    assert str(error) == "$.workflow_start: missing"
    assert str(warning) == "warning: $.x: odd"
    assert warning.as_dict() == {"path": "$.x", "message": "odd", "severity": "warning"}


def test_cacao_invalid_puts_errors_first() -> None:
    problems = [
        CacaoProblem("$.a", "a note", "warning"),
        CacaoProblem("$.b", "bad"),
        CacaoProblem("$.c", "worse"),
    ]
    exc = CacaoInvalid(problems)
    assert isinstance(exc, InvalidInput)
    assert exc.code is ErrorCode.INVALID_INPUT
    assert str(exc) == "$.b: bad (and 1 more)"
    assert [p.path for p in exc.problems] == ["$.b", "$.c", "$.a"]
    assert exc.details["field"] == "$.b"
    assert exc.details["problems"][0] == {"path": "$.b", "message": "bad", "severity": "error"}


def test_json_path_matches_jsonschema() -> None:
    assert json_path(()) == "$"
    assert (
        json_path(("workflow", "action--1", "targets", 0)) == "$.workflow['action--1'].targets[0]"
    )
    assert json_path(("a", "it's")) == "$.a['it\\'s']"


# -- loading -----------------------------------------------------------------------------------


def test_load_returns_the_playbook() -> None:
    doc = playbook()
    assert load_cacao(json.dumps(doc)) == doc
    assert load_cacao(b"\xef\xbb\xbf" + json.dumps(doc).encode()) == doc


def test_load_truncated_json_names_line_and_column() -> None:
    with pytest.raises(InvalidInput, match=r"^pb\.json:3:\d+: not valid JSON") as caught:
        load_cacao('{\n  "type": "playbook",\n  "workflow": {', "pb.json")
    assert caught.value.details["line"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "not a CACAO playbook: the document is a JSON array, not an object"),
        ('{"type": "bundle"}', "not a CACAO playbook: type must be 'playbook' (it is 'bundle')"),
        (
            '{"type": "playbook"}',
            "not a CACAO playbook: spec_version must be 'cacao-2.0' (it is missing)",
        ),
        (
            '{"type": "playbook", "spec_version": "cacao-1.0"}',
            "not a CACAO playbook: spec_version must be 'cacao-2.0' (it is 'cacao-1.0')",
        ),
    ],
)
def test_load_refuses_other_json(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_cacao(text)
    assert str(caught.value) == f"playbook: {message}"


def test_load_refuses_too_large() -> None:
    with pytest.raises(InvalidInput, match="larger than"):
        load_cacao(b" " * (MAX_CACAO_BYTES + 1), "big.json")
    with pytest.raises(InvalidInput, match="larger than"):  # measured in bytes, not characters
        load_cacao("é" * (MAX_CACAO_BYTES // 2 + 1))
