"""CACAO 2.0 import into the IR and export out of it: the corpus, round trips, and a property
test over random well-formed workflows."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quell.playbooks.cacao.exporter import export_cacao
from quell.playbooks.cacao.importer import QUELL_EXTENSION, import_cacao, is_cacao
from quell.playbooks.cacao.schema import CacaoInvalid, validate_cacao
from quell.playbooks.compiler import parse_playbook
from quell.playbooks.ir import Playbook, StepKind, WaitKind
from tests.fixtures.requirements import corpus_path

pytestmark = pytest.mark.requires("corpus")


def _corpus(kind: str) -> list[Path]:
    return sorted((corpus_path() / "cacao" / kind).glob("*.json"))


def _load(name: str) -> dict[str, Any]:
    return orjson.loads((corpus_path() / "cacao" / "playbooks" / name).read_bytes())  # type: ignore[no-any-return]


def _errors(doc: dict[str, Any], mode: str = "strict") -> list[str]:
    return [str(p) for p in validate_cacao(doc, mode) if p.severity == "error"]  # type: ignore[arg-type]


def _comparable(playbook: Playbook) -> dict[str, Any]:
    """The IR minus what only records where it came from, with end steps taken out (a branch
    ending at an end step, or at nothing, ends the same way: an export adds end steps where
    CACAO asks for them)."""
    data = orjson.loads(playbook.to_json())
    data.pop("file")
    data.pop("extensions")
    ends = {key for key, step in data["steps"].items() if step["kind"] == "end"}
    for key in ends:
        del data["steps"][key]
    for step in data["steps"].values():
        step.pop("position")
        step.pop("extensions")
        for edge in ("on_success", "on_failure", "on_completion", "on_true", "on_false",
                     "default", "body"):  # fmt: skip
            if step[edge] in ends:
                step[edge] = (
                    "<end>" if edge not in ("on_success", "on_failure", "on_completion") else None
                )
        step["branches"] = ["<end>" if b in ends else b for b in step["branches"]]
        step["cases"] = {k: "<end>" if v in ends else v for k, v in step["cases"].items()}
    return data  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", _corpus("playbooks"), ids=lambda p: p.name)
def test_every_corpus_playbook_imports_leniently_and_exports_strictly_valid(path: Path) -> None:
    doc = orjson.loads(path.read_bytes())
    imported = import_cacao(doc, mode="lenient", file=path.name)
    playbook = imported.playbook
    assert playbook.source_format == "cacao"
    assert playbook.start == doc["workflow_start"]
    assert set(doc["workflow"]) <= set(playbook.steps)
    assert imported.report.steps == len(doc["workflow"])
    exported, _notes = export_cacao(playbook)
    assert _errors(exported) == []
    assert is_cacao(exported)
    # ... and the export reads back to the same steps and flow
    again = import_cacao(exported, mode="strict").playbook
    first, second = _comparable(playbook), _comparable(again)
    if exported["workflow_start"] != doc["workflow_start"]:  # a start step was put in front
        start = exported["workflow"][exported["workflow_start"]]
        assert start == {"type": "start", "on_completion": doc["workflow_start"]}
        second["steps"].pop(exported["workflow_start"])
        second["start"] = first["start"]
    assert second == first


def test_the_corpus_steps_map_to_what_quell_runs() -> None:
    http = import_cacao(_load("soarca_http-playbook.json")).playbook
    get = http.steps["action--eb9372d4-d524-49fc-bf24-be26ea084779"]
    assert (get.kind, get.action) == (StepKind.ACTION, "http.get")
    assert get.inputs == {"url": "https://httpbin.org/get"}

    ssh = import_cacao(_load("soarca_ssh-playbook.json"))
    run = ssh.playbook.steps["action--eb9372d4-d524-49fc-bf24-be26ea084779"]
    assert run.action == "ssh.run_line"
    assert run.instance == "ssh--1c3900b4-f86b-430d-b415-12312b9e31f4"  # named like the target
    assert run.credential == (
        "playbook--300270f9-0e64-42c8-93cc-0927edbe3ae7/user-auth--b7ddc2ea-9f6a-4e82-8eaa-be202e942090"
    )
    assert "__command__" in run.variables
    assert "{{" in run.inputs["line"]
    assert [need["ref"] for need in ssh.report.needs] == [
        "ssh--1c3900b4-f86b-430d-b415-12312b9e31f4"
    ]
    # the password left the playbook: sealed elsewhere, a reference kept
    assert ssh.credentials == {run.credential: {"username": "root", "password": "password"}}
    auth = ssh.source["authentication_info_definitions"][
        "user-auth--b7ddc2ea-9f6a-4e82-8eaa-be202e942090"
    ]
    assert "password" not in auth
    assert auth["kms"] is True
    assert b'"password":"password"' not in ssh.playbook.to_json()

    openc2 = import_cacao(_load("soarca_openc2-playbook.json")).playbook
    deny = openc2.steps["action--eb9372d4-d524-49fc-bf24-be26ea084779"]
    assert deny.action == "openc2.command"
    assert deny.inputs["action"] == "deny"
    assert deny.inputs["target"]["ipv4_connection"]["dst_port"] == 80

    manual = import_cacao(_load("soarca_manual-playbook.json")).playbook
    task = manual.steps["action--eb9372d4-d524-49fc-bf24-be26ea084779"]
    assert task.kind is StepKind.WAIT
    assert task.wait is not None
    assert task.wait.kind is WaitKind.TASK
    assert task.wait.expires_in == 100.0
    assert task.wait.prompt == "prepare Falcon for hyperspeed jump"
    assert set(task.out) == {"__hyperspeed_ready__"}

    spec = import_cacao(_load("spec-3.1-example.json"))
    assert spec.playbook.tlp == "TLP:GREEN"
    step = spec.playbook.steps["action--7f40f9d7-de39-4027-ab97-15035beff2ff"]
    assert step.wait is not None
    assert step.wait.prompt == "Look up IP {{ vars['__data_exfil_site__'] }} in SIEM"


def test_what_quell_cannot_run_is_listed_never_dropped() -> None:
    fin = import_cacao(_load("soarca_fin-playbook.json"))
    assert [item["construct"] for item in fin.report.unsupported] == ["command type pong"]
    assert fin.report.unsupported[0]["path"].startswith(
        "$.workflow['action--2fd6bca0-24ed-4d74-8eae-da126a84f7c4'].commands[0]"
    )
    assert fin.playbook.steps["action--2fd6bca0-24ed-4d74-8eae-da126a84f7c4"].kind is StepKind.FAIL
    assert fin.playbook.extensions["unsupported"] == fin.report.unsupported
    # the command is kept for export exactly
    exported, notes = export_cacao(fin.playbook)
    step = exported["workflow"]["action--2fd6bca0-24ed-4d74-8eae-da126a84f7c4"]
    assert step["commands"] == [{"type": "pong"}]
    assert any("soarca-fin-pong" in note["path"] for note in notes)  # an ill-formed id renamed


def test_undeclared_variables_become_run_inputs_and_hosts_are_named() -> None:
    # SOARCA's fixture writes __imc_address__ without :value, so CACAO reads it literally:
    # the report names each host the playbook would call and each name it never declares.
    imported = import_cacao(_load("soarca_test_playbook.json"))
    hosts = [need["ref"] for need in imported.report.needs if need["kind"] == "host"]
    assert hosts == ["__imc_address__", "__bia_address__", "__coagenerator_address__"]
    warned = " ".join(w["message"] for w in imported.report.warnings)
    assert "'__cve__' is not a declared variable" in warned
    assert any("workflow_exception" in w["path"] for w in imported.report.warnings)
    assert imported.playbook.on_exception is None


@pytest.mark.parametrize("path", _corpus("invalid"), ids=lambda p: p.name)
def test_the_invalid_corpus_is_refused_naming_the_reason(path: Path) -> None:
    doc = orjson.loads(path.read_bytes())
    with pytest.raises(CacaoInvalid) as caught:
        import_cacao(doc, mode="lenient")
    paths = [problem.path for problem in caught.value.problems]
    if path.name == "soarca_test_invalid_playbook.json":
        assert "$.agent_definitions['http-api--7e9174ec-a293-43df-a72d-471c79e276bf'].type" in paths
    else:
        assert any("on_completion" in p for p in paths)
        assert "end--6b23c237-ade8-4d00-9aa1-75999738d558" in str(caught.value.problems)


YAML = """
id: contain-host
name: Contain a host
inputs:
  host: {type: string}
vars: {verdict: unknown, tries: 0}
trigger: {on: alert.created, if: "alert.severity_id >= 4"}
steps:
  - id: lookup
    action: core.echo
    with: {value: "{{ host }}"}
    out: {verdict: "{{ output.value }}"}
    retry: {attempts: 3, backoff: 2s}
    timeout: 30s
  - id: decide
    if: verdict == 'malicious'
    then:
      - id: ask
        wait: approval
        prompt: Isolate {{ host }}?
        expires_in: 1h
      - {id: isolate, action: core.log, with: {message: "isolating {{ host }}"}}
    else:
      - {id: note, action: core.log, with: {message: benign}}
  - id: each
    for_each: "{{ [1, 2, 3] }}"
    do:
      - {id: say, action: core.log, with: {message: "{{ item }}"}}
  - id: again
    while: tries < 3
    max_iterations: 5
    do:
      - {id: count, set: {tries: "{{ tries + 1 }}"}}
"""


def test_a_yaml_playbook_exports_strictly_valid_and_reimports_with_the_same_steps() -> None:
    original = parse_playbook(YAML, "contain.yaml")
    exported, notes = export_cacao(original)
    assert _errors(exported) == []
    assert QUELL_EXTENSION in exported["extension_definitions"]
    assert any("for_each" in note["message"] for note in notes)
    again = import_cacao(exported, mode="strict").playbook
    assert again.id == "contain-host"
    assert again.triggers == original.triggers
    assert again.variables == original.variables
    # The steps Quell exported come back under their own ids, so ``steps.lookup`` still holds.
    for step_id, step in original.steps.items():
        if step.kind is StepKind.END:
            continue
        twin = again.steps[step_id]
        assert (twin.kind, twin.action, twin.inputs, twin.condition, twin.retry) == (
            step.kind, step.action, step.inputs, step.condition, step.retry,
        )  # fmt: skip
        assert (twin.on_true, twin.on_false, twin.body) == (step.on_true, step.on_false, step.body)
        assert twin.out == step.out
        assert twin.wait == step.wait
        assert twin.max_iterations == step.max_iterations
        assert twin.credential is None


def test_a_quell_extension_cannot_name_a_credential_or_smuggle_bad_data() -> None:
    exported, _ = export_cacao(parse_playbook(YAML, "contain.yaml"))
    step_id = next(
        key for key, raw in exported["workflow"].items()
        if (raw.get("step_extensions") or {}).get(QUELL_EXTENSION, {}).get("step", {}).get("action")
    )  # fmt: skip
    native = exported["workflow"][step_id]["step_extensions"][QUELL_EXTENSION]["step"]
    native["credential"] = "playbook--other/http-basic--x/cred_stolen"
    imported = import_cacao(exported, mode="strict").playbook
    assert all(step.credential is None for step in imported.steps.values())
    # an instance it names must exist, and be of the action's connector
    native["instance"] = "prod-runner"
    with pytest.raises(CacaoInvalid, match="'prod-runner' is not a core connector instance"):
        import_cacao(exported, mode="strict", instance_connector=lambda name: "runner")
    native["instance"] = None
    ext = exported["playbook_extensions"][QUELL_EXTENSION]
    for bad, message in [
        ({"triggers": [{"on": "nonsense"}]}, "not a trigger"),
        ({"triggers": [{"on": "schedule", "cron": "garbage"}]}, "not a trigger"),
        ({"triggers": [{"on": "alert.created", "condition": "{{ ) }}"}]}, "not a trigger"),
        ({"variables": {"x": {"bogus": 1}}}, "not a variable"),
        ({"timeout": -5}, "a positive number"),
    ]:
        broken = copy.deepcopy(exported)
        broken["playbook_extensions"][QUELL_EXTENSION] = {**ext, **bad}
        with pytest.raises(CacaoInvalid, match=message):
            import_cacao(broken, mode="strict")
    native["max_iterations"] = 10**12
    with pytest.raises(CacaoInvalid, match="max_iterations"):
        import_cacao(exported, mode="strict")


def test_inline_secrets_of_any_kind_never_stay_in_the_text_or_in_errors() -> None:
    doc = _load("soarca_ssh-playbook.json")
    auth = "user-auth--b7ddc2ea-9f6a-4e82-8eaa-be202e942090"
    doc["authentication_info_definitions"]["private-key--1b0c6d5e-6f1a-4b7c-9d1e-2f3a4b5c6d7e"] = {
        "type": "private-key", "private_key": "-----BEGIN KEY----- s3cr3t-key",
    }  # fmt: skip
    doc["authentication_info_definitions"][auth]["api_key"] = "s3cr3t-extra"
    imported = import_cacao(doc, mode="lenient")
    text = orjson.dumps(imported.source).decode() + imported.playbook.to_json().decode()
    for secret in ("s3cr3t-key", "s3cr3t-extra", '"password":"password"'):
        assert secret not in text
    assert any(item["construct"] == "authentication_info" for item in imported.report.unsupported)
    # a schema error about a secret never quotes it
    doc["authentication_info_definitions"][auth]["password"] = 123456789
    problems = validate_cacao(doc, "strict")
    assert problems
    assert all("123456789" not in str(problem) for problem in problems)


# -- a property test: random well-formed workflows survive import -> export -> import --------


_COUNTER = iter(range(1, 2**62))


def _uuid(draw: st.DrawFn) -> str:
    """A fresh id for each object (hypothesis's draws repeat; ids must not)."""
    return str(uuid.UUID(int=next(_COUNTER), version=4))


_NAMES = st.sampled_from(["__a__", "__b__", "__count__", "__host-name__"])
_VALUES = st.one_of(
    st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=12),
    st.integers(-1000, 1000).map(str),
)


@st.composite
def _condition(draw: st.DrawFn, depth: int = 0) -> str:
    if depth < 2 and draw(st.booleans()):
        op = draw(st.sampled_from(["AND", "OR"]))
        return f"({draw(_condition(depth + 1))} {op} {draw(_condition(depth + 1))})"
    name = draw(_NAMES)
    op = draw(st.sampled_from(["=", "!=", "<", ">=", "<>"]))
    value = draw(st.one_of(st.integers(-50, 50).map(str), st.text("abcxyz' ", max_size=6)))
    if not value.lstrip("-").isdigit():
        value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    text = f"{name}:value {op} {value}"
    return f"NOT {text}" if draw(st.booleans()) else text


@st.composite
def _workflow(draw: st.DrawFn) -> dict[str, Any]:
    """A playbook whose main flow is a sequence of blocks; a block is an action, an
    if-condition, a while-condition, a switch or a parallel, each branch with its own end."""
    workflow: dict[str, Any] = {}
    agent = f"individual--{_uuid(draw)}"

    def action(next_id: str | None) -> str:
        step_id = f"action--{_uuid(draw)}"
        kind = draw(st.sampled_from(["manual", "http-api"]))
        command = (
            {
                "type": "manual",
                "command": draw(st.sampled_from(["Check __a__:value", "Call {{ x }}"])),
            }
            if kind == "manual"
            else {"type": "http-api", "command": "GET https://intel.example/q/__a__:value"}
        )
        entry: dict[str, Any] = {"type": "action", "commands": [command], "agent": agent}
        if draw(st.booleans()):
            entry["name"] = draw(st.text("abc ", min_size=1, max_size=8))
        if draw(st.booleans()):
            entry["timeout"] = draw(st.integers(1, 10**6))
        if draw(st.booleans()):
            entry["delay"] = draw(st.integers(1, 10**5))
        if next_id is not None:
            entry[draw(st.sampled_from(["on_completion", "on_success"]))] = next_id
        workflow[step_id] = entry
        return step_id

    def branch() -> str:
        end = f"end--{_uuid(draw)}"
        workflow[end] = {"type": "end"}
        return action(end)

    def block(next_id: str) -> str:
        kind = draw(st.sampled_from(["action", "if", "while", "switch", "parallel"]))
        if kind == "action":
            return action(next_id)
        if kind == "if":
            step_id = f"if-condition--{_uuid(draw)}"
            workflow[step_id] = {
                "type": "if-condition", "condition": draw(_condition()),
                "on_true": branch(), "on_completion": next_id,
            }  # fmt: skip
            if draw(st.booleans()):
                workflow[step_id]["on_false"] = branch()
        elif kind == "while":
            step_id = f"while-condition--{_uuid(draw)}"
            workflow[step_id] = {
                "type": "while-condition", "condition": draw(_condition()),
                "on_true": branch(), "on_completion": next_id,
            }  # fmt: skip
        elif kind == "switch":
            step_id = f"switch-condition--{_uuid(draw)}"
            cases = {str(n): branch() for n in range(draw(st.integers(1, 3)))}
            if draw(st.booleans()):
                cases["default"] = branch()
            workflow[step_id] = {
                "type": "switch-condition", "switch": draw(_NAMES), "cases": cases,
                "on_completion": next_id,
            }  # fmt: skip
        else:
            step_id = f"parallel--{_uuid(draw)}"
            workflow[step_id] = {
                "type": "parallel",
                "next_steps": [branch() for _ in range(draw(st.integers(2, 3)))],
                "on_completion": next_id,
            }
        return step_id

    end = f"end--{_uuid(draw)}"
    workflow[end] = {"type": "end"}
    current = end
    for _ in range(draw(st.integers(1, 4))):
        current = block(current)
    start = f"start--{_uuid(draw)}"
    workflow[start] = {"type": "start", "on_completion": current}
    variables = {
        name: {"type": "string", "value": draw(_VALUES)}
        | ({"external": True} if draw(st.booleans()) else {})
        for name in ["__a__", "__b__", "__count__", "__host-name__"]
    }
    return {
        "type": "playbook",
        "spec_version": "cacao-2.0",
        "id": f"playbook--{_uuid(draw)}",
        "name": "random",
        "created_by": f"identity--{_uuid(draw)}",
        "created": "2024-01-01T00:00:00.000Z",
        "modified": "2024-01-01T00:00:00.000Z",
        "workflow_start": start,
        "workflow": workflow,
        "playbook_variables": variables,
        "agent_definitions": {agent: {"type": "individual", "name": "responder"}},
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_workflow())
def test_random_workflows_import_export_import_to_the_same_ir(doc: dict[str, Any]) -> None:
    assert _errors(doc) == [], "the generator makes strictly valid playbooks"
    first = import_cacao(doc, mode="strict").playbook
    exported, _notes = export_cacao(first)
    assert _errors(exported) == []
    second = import_cacao(exported, mode="strict").playbook
    # The same IR: every step, edge, expression, variable and bound. Only what the IR keeps of
    # the source for the next export may differ (the export writes the loop bound it ran with).
    assert _executable(second) == _executable(first)


def _executable(playbook: Playbook) -> dict[str, Any]:
    data = orjson.loads(playbook.to_json())
    data.pop("extensions")
    for step in data["steps"].values():
        step.pop("extensions")
    return data  # type: ignore[no-any-return]


def test_credentials_written_into_a_url_are_refused_not_kept() -> None:
    target = "http-api--1c3900b4-f86b-430d-b415-12312b9e31f4"
    step_id = "action--eb9372d4-d524-49fc-bf24-be26ea084779"
    doc = _load("soarca_http-playbook.json")
    with pytest.raises(CacaoInvalid, match="its binding carries credentials") as caught:
        import_cacao(doc, bindings={target: "http://admin:hunter2@127.0.0.1:8080/"})
    assert "hunter2" not in str(caught.value.problems)
    doc["workflow"][step_id]["commands"][0]["command"] = "GET https://u:hunter2@intel.example/x"
    with pytest.raises(CacaoInvalid, match="its URL carries credentials") as caught:
        import_cacao(doc)
    assert "hunter2" not in str(caught.value.problems)
    assert step_id in caught.value.problems[0].path
    # in an address, the schema refuses it first, and its message does not quote the password
    doc = _load("soarca_http-playbook.json")
    doc["target_definitions"][target]["address"] = {"url": ["https://u:hunter2@intel.example"]}
    with pytest.raises(CacaoInvalid) as caught:
        import_cacao(doc)
    assert "hunter2" not in str(caught.value.problems)
    assert "https://***@intel.example" in str(caught.value.problems)


def test_the_hosts_a_playbook_calls_are_needs_as_the_outbound_policy_sees_them() -> None:
    """The import report told to allow 127.0.0.1 in outbound_allow when it was allowed, and
    gave the same advice for a public name."""
    from quell.engine.cacao import outbound_needs
    from quell.sdk.http import OutboundPolicy

    loopback = OutboundPolicy.parse(["127.0.0.1"])
    report = import_cacao(_load("soarca_http-playbook.json")).report
    (need,) = outbound_needs(report.needs, loopback)
    assert (need["kind"], need["ref"]) == ("host", "httpbin.org")
    assert need["message"] == (
        "outbound HTTP to httpbin.org: reached if the name resolves to a public address; "
        "a private one must be allowed in outbound_allow"
    )

    def needs(host: str, policy: OutboundPolicy) -> list[str]:
        found = outbound_needs([{"kind": "host", "ref": host, "message": "?"}], policy)
        return [str(item["message"]) for item in found]

    assert needs("127.0.0.1", loopback) == []  # allowed
    assert needs("93.184.216.34", loopback) == []  # public
    assert needs("10.1.2.3", loopback) == ["outbound HTTP to 10.1.2.3 (allow it in outbound_allow)"]
    assert needs("soar.internal", OutboundPolicy.parse(["soar.internal"])) == []
    other = {"kind": "instance", "ref": "x", "message": "an instance"}
    assert outbound_needs([other], loopback) == [other]  # only hosts are read
