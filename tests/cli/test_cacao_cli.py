"""``quell playbook validate --cacao``, ``import-cacao``, ``export-cacao`` and ``run`` on CACAO
files, against the shared corpus (public CACAO 2.0 playbooks, the official schemas, and the
playbooks their authors meant to be invalid). The storage tests run on both backends."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from sqlalchemy import select

from quell.engine.cacao import CredentialStore
from quell.playbooks.cacao.schema import validate_cacao
from quell.runtime import Runtime
from quell.sdk import SecretValue
from quell.store.schema import metadata, playbook_credentials, playbook_versions
from tests.cli.conftest import Invoke
from tests.fixtures.cacao import CACAO_PLAYBOOKS
from tests.fixtures.requirements import corpus_path

pytestmark = pytest.mark.requires("corpus")

PLAYBOOKS = CACAO_PLAYBOOKS
INVALID = ["soarca_test_invalid_playbook.json", "soarca_test_missing_step_playbook.json"]
SSH_TARGET = "ssh--1c3900b4-f86b-430d-b415-12312b9e31f4"
SSH_AUTH = "user-auth--b7ddc2ea-9f6a-4e82-8eaa-be202e942090"
SSH_PLAYBOOK_ID = "playbook--300270f9-0e64-42c8-93cc-0927edbe3ae7"
FIN_ID = "playbook--3c9885e6-95cc-49cb-9044-0e1d2c22be4a"
FIN_COMMAND = "$.workflow['action--2fd6bca0-24ed-4d74-8eae-da126a84f7c4'].commands[0]"
BASIC_ID = "playbook--fe85f68d-1960-4596-96a2-228113e143cf"
PASSWORD = "correct horse battery staple"


def playbook(name: str) -> Path:
    return corpus_path() / "cacao" / "playbooks" / name


def invalid(name: str) -> Path:
    return corpus_path() / "cacao" / "invalid" / name


def lines(output: str) -> list[str]:
    return output.splitlines()


def errors(stderr: str) -> list[str]:
    """The ``error: ...`` lines (a first use of a data dir also logs its new key there)."""
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"QUELL_DATABASE_URL": database_url}


def import_json(invoke: Invoke, env: dict[str, str], path: Path, *more: str) -> dict[str, Any]:
    done = invoke("playbook", "import-cacao", str(path), "--json", *more, env=env)
    assert done.exit_code == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


# -- validate ---------------------------------------------------------------------------------


def test_the_corpus_is_the_one_these_tests_know() -> None:
    found = sorted(p.name for p in (corpus_path() / "cacao" / "playbooks").glob("*.json"))
    assert found == PLAYBOOKS
    assert sorted(p.name for p in (corpus_path() / "cacao" / "invalid").glob("*.json")) == INVALID


@pytest.mark.parametrize("name", PLAYBOOKS)
def test_every_corpus_playbook_is_valid_in_lenient_mode(invoke: Invoke, name: str) -> None:
    path = playbook(name)
    done = invoke("playbook", "validate", "--cacao", "lenient", str(path))
    assert done.exit_code == 0, done.output
    assert done.stdout == ""  # errors only go to stdout; warnings and the verdict to stderr
    assert re.search(rf"^{re.escape(str(path))}: valid CACAO 2\.0 \(lenient, \d+ steps\)$",
                     done.stderr, re.M), done.stderr  # fmt: skip


def test_all_corpus_playbooks_at_once_in_lenient_mode(invoke: Invoke) -> None:
    done = invoke("playbook", "validate", "--cacao", "lenient", *map(str, map(playbook, PLAYBOOKS)))
    assert done.exit_code == 0, done.output
    assert done.stderr.count("valid CACAO 2.0 (lenient,") == len(PLAYBOOKS)


@pytest.mark.parametrize("name", ["basic-example-1.json", "spec-3.1-example.json"])
def test_the_official_examples_are_valid_in_strict_mode(invoke: Invoke, name: str) -> None:
    path = playbook(name)
    done = invoke("playbook", "validate", "--cacao", "strict", str(path))
    assert done.exit_code == 0, done.output
    assert done.stdout == ""
    assert lines(done.stderr) == [f"{path}: valid CACAO 2.0 (strict, 3 steps)"]


def test_strict_mode_refuses_soarca_agent_types_naming_the_path(invoke: Invoke) -> None:
    path = playbook("soarca_http-playbook.json")
    done = invoke("playbook", "validate", "--cacao", "strict", str(path))
    assert done.exit_code == 1
    assert lines(done.stdout) == [
        f"{path}: $.agent_definitions['soarca--00020001-1000-1000-a000-000100010001']: "
        "'soarca' is not a CACAO 2.0 agent-target type"
    ]
    lenient = invoke("playbook", "validate", "--cacao", "lenient", str(path))
    assert lenient.exit_code == 0
    assert (
        f"{path}: warning: $.agent_definitions['soarca--00020001-1000-1000-a000-000100010001']: "
        "'soarca' is not a CACAO 2.0 agent-target type: a custom type: its properties are not "
        "checked"
    ) in lines(lenient.stderr)


def test_strict_mode_refuses_the_soarca_parallel_test_playbook(invoke: Invoke) -> None:
    # Valid as the schemas declare themselves (draft-07), but under 2020-12 with
    # unevaluatedProperties enforced in every schema resource, ``agent`` is no property of a
    # parallel step and ``banana`` none of an individual; the reference checks add the rest.
    path = playbook("soarca_test_parallels_playbook.json")
    done = invoke("playbook", "validate", "--cacao", "strict", str(path))
    assert done.exit_code == 1
    assert lines(done.stdout) == [
        f"{path}: $.agent_definitions['individual--6b23a237-ade8-4d00-9aa1-75999732d557'].banana:"
        " not a CACAO 2.0 property",
        f"{path}: $.workflow['action--9fcc5c3b-0b70-4d73-b922-cf5491dcd1a4'].on_completion: the "
        "branch from parallel--a76dbc32-b739-427b-ae13-4ec703d5797e (next_steps[0]) ends in "
        "end--6b23c237-ade8-4d00-9aa1-75999738d557, the end step of the main flow; each branch "
        "needs its own end step",
        f"{path}: $.workflow['parallel--a76dbc32-b739-427b-ae13-4ec703d5797e'].agent: not a "
        "CACAO 2.0 property",
        f"{path}: $.workflow_exception: 'end--40131926-89e9-44df-a018-5f92f2df7914' is not a "
        "step in the workflow",
        f"{path}: $.workflow_start: 'parallel--a76dbc32-b739-427b-ae13-4ec703d5797e' is a step "
        "of type 'parallel', not a start step",
    ]


INVALID_REASONS = {
    "soarca_test_invalid_playbook.json": (
        "$.agent_definitions['http-api--7e9174ec-a293-43df-a72d-471c79e276bf'].type: "
        "'invalid' is not one of ['http-api']"
    ),
    "soarca_test_missing_step_playbook.json": (
        "$.workflow['action--2190f685-1857-44ac-ad0e-0ded6c6ef3ce'].on_completion: "
        "'end--6b23c237-ade8-4d00-9aa1-75999738d558' is not a step in the workflow"
    ),
}


@pytest.mark.parametrize("mode", ["lenient", "strict"])
@pytest.mark.parametrize("name", INVALID)
def test_each_invalid_corpus_playbook_is_refused_naming_its_reason(
    invoke: Invoke, name: str, mode: str
) -> None:
    path = invalid(name)
    done = invoke("playbook", "validate", "--cacao", mode, str(path))
    assert done.exit_code == 1
    assert f"{path}: {INVALID_REASONS[name]}" in lines(done.stdout)
    assert all(line.startswith(f"{path}: $") for line in lines(done.stdout)), done.stdout
    assert "valid CACAO" not in done.stderr


def test_in_lenient_mode_the_invalid_playbooks_fail_for_their_reasons_only(invoke: Invoke) -> None:
    wrong_type = invalid("soarca_test_invalid_playbook.json")
    done = invoke("playbook", "validate", "--cacao", "lenient", str(wrong_type))
    assert lines(done.stdout) == [f"{wrong_type}: {INVALID_REASONS[wrong_type.name]}"]
    missing = invalid("soarca_test_missing_step_playbook.json")
    done = invoke("playbook", "validate", "--cacao", "lenient", str(missing))
    assert lines(done.stdout) == [
        f"{missing}: {INVALID_REASONS[missing.name]}",
        f"{missing}: $.workflow['end--6b23c237-ade8-4d00-9aa1-75999738d557']: step "
        "end--6b23c237-ade8-4d00-9aa1-75999738d557 is not reachable from workflow_start",
    ]


# What import-cacao says when it refuses: the first error (in path order) on one line, and how
# many more there are; in lenient mode that first error is the reason the file is invalid.
@pytest.mark.parametrize("name", INVALID)
def test_import_refuses_each_invalid_corpus_playbook(
    invoke: Invoke, env: dict[str, str], name: str
) -> None:
    for mode in ("lenient", "strict"):
        done = invoke("playbook", "import-cacao", str(invalid(name)), "--mode", mode, "--json",
                      env=env)  # fmt: skip
        assert done.exit_code == 1
        answer = json.loads(done.stdout)
        assert answer["valid"] is False
        texts = [f"{p['path']}: {p['message']}" for p in answer["problems"]]
        assert INVALID_REASONS[name] in texts  # every problem is listed, the reason among them
        plain = invoke("playbook", "import-cacao", str(invalid(name)), "--mode", mode, env=env)
        assert plain.exit_code == 1
        assert f"{invalid(name)}: {INVALID_REASONS[name]}" in plain.stdout.splitlines()
    listed = invoke("playbook", "list", "--json", env=env)
    assert json.loads(listed.stdout) == []


def test_strict_needs_the_schemas_and_says_where_to_point(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "corpus"
    empty.mkdir()
    here = tmp_path / "elsewhere"  # its parent holds no shared/corpora
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.delenv("QUELL_CACAO_SCHEMAS", raising=False)
    no_schemas = {"QUELL_CORPUS": str(empty)}
    path = playbook("basic-example-1.json")
    strict = invoke("playbook", "validate", "--cacao", "strict", str(path), env=no_schemas)
    assert strict.exit_code != 0
    assert strict.stdout == ""
    assert errors(strict.stderr) == [
        "error: --cacao strict checks against the official CACAO JSON schemas, and they are not "
        "here: set QUELL_CACAO_SCHEMAS to the schemas/ folder of a checkout of "
        "github.com/oasis-open/cacao-json-schemas"
    ]
    lenient = invoke("playbook", "validate", "--cacao", "lenient", str(path), env=no_schemas)
    assert lenient.exit_code == 0, lenient.output
    assert lines(lenient.stderr) == [
        f"{path}: warning: $: the CACAO JSON schemas were not found (set QUELL_CACAO_SCHEMAS): "
        "only reference checks ran",
        f"{path}: valid CACAO 2.0 (lenient, 3 steps)",
    ]
    # Named explicitly, the schemas are found whatever the corpus setting says.
    schemas = corpus_path() / "cacao" / "schemas" / "schemas"
    named = {**no_schemas, "QUELL_CACAO_SCHEMAS": str(schemas)}
    found = invoke("playbook", "validate", "--cacao", "strict", str(path), env=named)
    assert found.exit_code == 0, found.output
    assert lines(found.stderr) == [f"{path}: valid CACAO 2.0 (strict, 3 steps)"]
    wrong = {**no_schemas, "QUELL_CACAO_SCHEMAS": str(empty)}
    refused = invoke("playbook", "validate", "--cacao", "lenient", str(path), env=wrong)
    assert refused.exit_code != 0
    assert f"QUELL_CACAO_SCHEMAS={empty}: no playbook.json there" in refused.stderr


# -- import and export ------------------------------------------------------------------------


@pytest.mark.parametrize("name", PLAYBOOKS)
def test_every_corpus_playbook_imports_and_exports_as_strictly_valid_cacao(
    invoke: Invoke, env: dict[str, str], tmp_path: Path, name: str
) -> None:
    source = json.loads(playbook(name).read_text())
    report = import_json(invoke, env, playbook(name))
    assert report["id"] == source["id"]
    assert report["steps"] == len(source["workflow"])
    assert (report["version"], report["state"]) == (1, "draft")
    assert report["version_id"].startswith("pbv_")
    if name == "soarca_fin-playbook.json":
        assert [(u["path"], u["construct"]) for u in report["unsupported"]] == [
            (FIN_COMMAND, "command type pong")
        ]
        assert report["unsupported"][0]["reason"].startswith(
            "command type 'pong' is not one Quell runs"
        )
    else:
        assert report["unsupported"] == []

    exported = invoke("playbook", "export-cacao", report["id"], env=env)
    assert exported.exit_code == 0, exported.stderr
    doc = json.loads(exported.stdout)
    assert (doc["type"], doc["spec_version"], doc["id"]) == ("playbook", "cacao-2.0", source["id"])
    assert [p for p in validate_cacao(doc, "strict") if p.severity == "error"] == []

    written = tmp_path / f"exported-{name}"
    to_file = invoke("playbook", "export-cacao", report["id"], "-o", str(written), env=env)
    assert to_file.exit_code == 0, to_file.stderr
    assert to_file.stdout == ""
    assert json.loads(written.read_text()) == doc
    checked = invoke("playbook", "validate", "--cacao", "strict", str(written))
    assert checked.exit_code == 0, checked.output
    assert checked.stdout == ""
    assert f"{written}: valid CACAO 2.0 (strict," in checked.stderr

    # The export imports again, as the same playbook.
    again = import_json(invoke, env, written, "--mode", "strict")
    assert again["id"] == source["id"]
    assert [u["construct"] for u in again["unsupported"]] == [
        u["construct"] for u in report["unsupported"]
    ]


def test_the_same_file_is_the_same_version_and_a_change_a_new_one(
    invoke: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    path = playbook("basic-example-1.json")
    first = import_json(invoke, env, path)
    second = import_json(invoke, env, path)
    assert (first["version"], second["version"]) == (1, 1)
    assert first["version_id"] == second["version_id"]
    changed = tmp_path / "basic-example-1.json"
    doc = json.loads(path.read_text())
    changed.write_text(json.dumps({**doc, "name": "Bad MAC Address, again"}))
    third = import_json(invoke, env, changed)
    assert (third["id"], third["version"], third["state"]) == (BASIC_ID, 2, "draft")
    assert third["version_id"] != first["version_id"]
    listed = json.loads(invoke("playbook", "list", "--json", env=env).stdout)
    assert sorted((v["playbook_id"], v["version"]) for v in listed) == [
        (BASIC_ID, 1), (BASIC_ID, 2),
    ]  # fmt: skip


def test_the_human_import_report(invoke: Invoke, env: dict[str, str]) -> None:
    done = invoke("playbook", "import-cacao", str(playbook("soarca_fin-playbook.json")), env=env)
    assert done.exit_code == 0, done.stderr
    shown = lines(done.stdout)
    assert shown[0] == f"{FIN_ID} v1 draft (3 steps)"
    assert shown[1] == (
        f"  unsupported: {FIN_COMMAND}: command type 'pong' is not one Quell runs (it runs "
        "http-api, ssh, openc2-http, bash, powershell and manual commands)"
    )


_PLAINTEXT = re.compile(r"""password['"]?\s*[:=]\s*['"]password['"]""")


def test_inline_credentials_are_sealed_and_kept_out_of_the_playbook(
    invoke: Invoke, env: dict[str, str], runtime: Runtime
) -> None:
    report = import_json(invoke, env, playbook("soarca_ssh-playbook.json"))
    assert report["credentials"] == [SSH_AUTH]
    with runtime.db.read() as conn:
        stored = conn.execute(
            select(playbook_versions.c.source, playbook_versions.c.ir).where(
                playbook_versions.c.playbook_id == SSH_PLAYBOOK_ID
            )
        ).one()
        sealed = conn.execute(select(playbook_credentials)).all()
    ((row_id, playbook_id, kind, secret, hosts, _at, by),) = sealed
    credential = row_id  # <playbook>/<auth info>/<one per set of values>
    assert credential.startswith(f"{SSH_PLAYBOOK_ID}/{SSH_AUTH}/cred_")
    source = json.loads(stored.source)
    assert source["authentication_info_definitions"][SSH_AUTH] == {
        "type": "user-auth",
        "username": "root",
        "kms": True,
        "kms_key_identifier": f"quell:{credential}",
    }
    assert '"password"' not in stored.source
    assert '"password"' not in stored.ir
    assert (playbook_id, kind, by) == (SSH_PLAYBOOK_ID, "user-auth", "cli:root")
    assert hosts == "[]"  # an SSH credential goes to the instance's host, not to an HTTP one
    assert b"password" not in bytes(secret)
    assert b"root" not in bytes(secret)
    opened = CredentialStore(runtime.db, runtime.secret_box, runtime.clock).get(credential)
    assert {name: value.reveal() for name, value in opened.items()} == {
        "username": "root",
        "password": "password",
    }
    # Nowhere else in the database either (runs, audit trail, reviews...).
    with runtime.db.read() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                assert not _PLAINTEXT.search(repr(tuple(row))), table.name
    exported = invoke("playbook", "export-cacao", SSH_PLAYBOOK_ID, env=env)
    auth = json.loads(exported.stdout)["authentication_info_definitions"][SSH_AUTH]
    assert auth == {
        "type": "user-auth",
        "username": "root",
        "kms": True,
        "kms_key_identifier": f"quell:{credential}",
    }


# -- publishing what Quell cannot run ---------------------------------------------------------


def test_a_playbook_with_an_unsupported_command_is_never_published(
    invoke: Invoke, env: dict[str, str], runtime: Runtime
) -> None:
    optional = {**env, "QUELL_PLAYBOOK_REVIEW": "optional"}
    fin = str(playbook("soarca_fin-playbook.json"))
    refused = invoke("playbook", "import-cacao", fin, "--publish", env=optional)
    assert refused.exit_code == 1
    assert errors(refused.stderr) == [
        "error: this playbook needs what Quell does not support (command type pong): it "
        "imports as a draft only"
    ]
    assert json.loads(invoke("playbook", "list", "--json", env=optional).stdout) == []
    fine = import_json(invoke, optional, playbook("basic-example-1.json"), "--publish")
    assert (fine["version"], fine["state"]) == (1, "published")

    # Where review is required: imported as a draft, submitted, and the approver is refused.
    required = {**env, "QUELL_PLAYBOOK_REVIEW": "required"}
    runtime.users.add("dana", "author", password=SecretValue(PASSWORD), by="setup")
    runtime.users.add("pat", "approver", password=SecretValue(PASSWORD), by="setup")

    def quell(*args: str) -> Any:
        return invoke("playbook", *args, env=required, input=f"{PASSWORD}\n")

    draft = quell("import-cacao", fin, "--as", "dana")
    assert draft.exit_code == 0, draft.stderr
    assert lines(draft.stdout)[0] == f"{FIN_ID} v1 draft (3 steps)"
    submitted = quell("submit", FIN_ID, "--as", "dana")
    assert (submitted.exit_code, submitted.stdout) == (0, f"{FIN_ID} v1: in_review\n")
    published = quell("publish", FIN_ID, "-m", "looks fine", "--as", "pat")
    assert published.exit_code == 1
    assert (
        f"error: {FIN_ID} version 1 needs what Quell does not support (command type pong at "
        f"{FIN_COMMAND}: command type 'pong' is not one Quell runs"
    ) in published.stderr
    (fin_version,) = [
        v for v in json.loads(quell("list", "--json").stdout) if v["playbook_id"] == FIN_ID
    ]
    assert (fin_version["state"], fin_version["active"]) == ("in_review", False)


# -- signatures -------------------------------------------------------------------------------


def _write_key(path: Path, kind: str) -> Path:
    key = (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "Ed25519"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.mark.parametrize(("kind", "algorithm"), [("Ed25519", "Ed25519"), ("RSA", "RS256")])
def test_a_signed_export_verifies_and_a_change_after_signing_does_not(
    invoke: Invoke, env: dict[str, str], tmp_path: Path, kind: str, algorithm: str
) -> None:
    key = _write_key(tmp_path / f"{kind}.pem", kind)
    import_json(invoke, env, playbook("basic-example-1.json"))
    signed = tmp_path / "signed.json"
    done = invoke("playbook", "export-cacao", BASIC_ID, "--key", str(key), "-o", str(signed),
                  env=env)  # fmt: skip
    assert done.exit_code == 0, done.stderr
    doc = json.loads(signed.read_text())
    (signature,) = doc["signatures"]
    assert signature["type"] == "jss"
    assert (signature["algorithm"], signature["signee"]) == (algorithm, "Quell")
    assert (signature["related_to"], signature["related_version"]) == (BASIC_ID, doc["modified"])

    for mode in ("lenient", "strict"):
        checked = invoke("playbook", "validate", "--cacao", mode, str(signed))
        assert checked.exit_code == 0, checked.output
        assert lines(checked.stderr) == [
            f"{signed}: signature {signature['id']}: verified",
            f"{signed}: valid CACAO 2.0 ({mode}, 3 steps)",
        ]
    signed_report = import_json(invoke, env, signed)
    assert signed_report["signatures"] == [
        {"id": signature["id"], "signee": "Quell", "algorithm": algorithm, "valid": True,
         "reason": "verified"},
    ]  # fmt: skip

    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps({**doc, "name": "Bad MAC Address (edited)"}))
    checked = invoke("playbook", "validate", "--cacao", "lenient", str(tampered))
    # A signature that does not hold is reported, not a schema error: the file is still valid.
    assert checked.exit_code == 0, checked.output
    assert checked.stdout == ""
    assert lines(checked.stderr) == [
        f"{tampered}: signature {signature['id']}: value does not match the playbook",
        f"{tampered}: valid CACAO 2.0 (lenient, 3 steps)",
    ]
    report = import_json(invoke, env, tampered)
    assert report["signatures"] == [
        {"id": signature["id"], "signee": "Quell", "algorithm": algorithm, "valid": False,
         "reason": "value does not match the playbook"},
    ]  # fmt: skip
    # Imported all the same, as a changed playbook: a new version.
    assert report["version"] == signed_report["version"] + 1


def test_sign_uses_the_configured_key_and_needs_one(
    invoke: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    import_json(invoke, env, playbook("spec-3.1-example.json"))
    spec_id = "playbook--61a6c41e-6efc-4516-a242-dfbc5c89d562"
    without = invoke("playbook", "export-cacao", spec_id, "--sign", env=env)
    assert without.exit_code == 1
    assert without.stdout == ""
    assert errors(without.stderr) == [
        "error: --sign needs a key: --key FILE, or set cacao_signing_key"
    ]
    key = _write_key(tmp_path / "signing.pem", "Ed25519")
    configured = {**env, "QUELL_CACAO_SIGNING_KEY": str(key), "QUELL_CACAO_SIGNEE": "SOC Team"}
    signed = invoke("playbook", "export-cacao", spec_id, "--sign", env=configured)
    assert signed.exit_code == 0, signed.stderr
    doc = json.loads(signed.stdout)
    (signature,) = doc["signatures"]
    assert (signature["algorithm"], signature["signee"]) == ("Ed25519", "SOC Team")
    path = tmp_path / "signed.json"
    path.write_text(signed.stdout)
    checked = invoke("playbook", "validate", "--cacao", "strict", str(path))
    assert checked.exit_code == 0, checked.output
    assert f"{path}: signature {signature['id']}: verified" in lines(checked.stderr)


# -- run --------------------------------------------------------------------------------------


def test_running_a_cacao_file_enqueues_a_run(invoke: Invoke, env: dict[str, str]) -> None:
    path = playbook("soarca_manual-playbook.json")
    done = invoke("playbook", "run", str(path), "--json", env=env)
    assert done.exit_code == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["id"].startswith("run_")
    assert (run["playbook"], run["status"]) == (
        "playbook--fe65ef7b-e8b1-4ed9-ba60-3c380ae5ab28",
        "ready",
    )
    shown = json.loads(invoke("run", "show", run["id"], "--json", env=env).stdout)
    assert (shown["id"], shown["status"]) == (run["id"], "ready")
    plain = invoke("playbook", "run", str(path), env=env)
    assert plain.exit_code == 0, plain.stderr
    assert re.fullmatch(r"run_[0-9a-z]+\n", plain.stdout), plain.stdout
    # Both runs pin the one imported version.
    versions = json.loads(invoke("playbook", "list", "--json", env=env).stdout)
    assert [(v["playbook_id"], v["version"]) for v in versions] == [
        ("playbook--fe65ef7b-e8b1-4ed9-ba60-3c380ae5ab28", 1)
    ]


def test_bind_errors_are_clear_and_store_nothing(invoke: Invoke, env: dict[str, str]) -> None:
    path = str(playbook("soarca_ssh-playbook.json"))
    for command in ("import-cacao", "run"):
        malformed = invoke("playbook", command, path, "--bind", "nonsense", env=env)
        assert malformed.exit_code == 1
        assert errors(malformed.stderr) == [
            "error: --bind 'nonsense': expected AGENT_OR_TARGET_ID=INSTANCE"
        ]
        missing = invoke("playbook", command, path, "--bind", f"{SSH_TARGET}=missing", env=env)
        assert missing.exit_code == 1
        assert errors(missing.stderr) == [
            f"error: binding {SSH_TARGET}=missing: no connector instance 'missing'"
        ]
    assert json.loads(invoke("playbook", "list", "--json", env=env).stdout) == []
    assert json.loads(invoke("run", "list", "--json", env=env).stdout) == []
