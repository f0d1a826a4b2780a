"""CACAO conditions and ``__name__:value`` text, to and from Quell expressions and templates.

Generated expressions are evaluated two ways: by :func:`evaluate_condition` (the reference
semantics, plain Python) and in Quell's own expression sandbox, and the two must agree. The
sandbox runs here with the condition functions put in its globals directly, so these tests do
not hang on expressions.py; one test checks that expressions.py registers them itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from quell.errors import InvalidInput
from quell.playbooks import expressions
from quell.playbooks.cacao.conditions import (
    CONDITION_FUNCTIONS,
    MAX_DEPTH,
    MAX_SOURCE,
    NAME_PATTERN,
    And,
    Cmp,
    Cond,
    ConditionError,
    Items,
    Lit,
    Not,
    Or,
    Var,
    cacao_compare,
    cacao_like,
    cacao_matches,
    condition_to_expression,
    evaluate_condition,
    expression_to_condition,
    template_to_text,
    text_to_template,
    variable_references,
)
from quell.playbooks.expressions import compile_expression, compile_value, render_value

# -- helpers ------------------------------------------------------------------------------------


@contextmanager
def registered() -> Iterator[None]:
    """The condition functions in Quell's sandbox globals (where ``FUNCTIONS`` puts them)."""
    with mock.patch.dict(expressions._ENV.globals, CONDITION_FUNCTIONS):
        yield


def sandboxed(expression: str, variables: Mapping[str, Any]) -> bool:
    """The expression's truth in Quell's sandbox, in the scope the engine builds (``vars``)."""
    with registered():
        return compile_expression(expression, "if").truthy({"vars": dict(variables)})


def both(condition: str, variables: Mapping[str, Any]) -> bool:
    """The condition's truth, checked to be the same directly and through the sandbox."""
    direct = evaluate_condition(condition, variables)
    assert sandboxed(condition_to_expression(condition), variables) is direct
    return direct


def calls(expression: str) -> set[str]:
    """The names of the functions an expression calls (parsed by Jinja's sandboxed env)."""
    tree = ImmutableSandboxedEnvironment().parse("{{ " + expression + " }}")
    return {
        node.node.name for node in tree.find_all(nodes.Call) if isinstance(node.node, nodes.Name)
    }


# -- translation --------------------------------------------------------------------------------

EXAMPLES = [
    # the corpus: SOARCA's documentation, tests and examples
    (
        "__soarca_ssh_result__:value != '01-01-2025'",
        "cacao_compare('!=', vars['__soarca_ssh_result__'], '01-01-2025')",
    ),
    (
        "__var1__:value = 'correct-value'",
        "cacao_compare('==', vars['__var1__'], 'correct-value')",
    ),
    ("__var1__:value = testing", "cacao_compare('==', vars['__var1__'], 'testing')"),
    ("__approval__:value = confirm", "cacao_compare('==', vars['__approval__'], 'confirm')"),
    ("__var1__:value IN 10.0.0.0/8", "cacao_compare('in', vars['__var1__'], '10.0.0.0/8')"),
    ("__var1__:value = 2001:db8::1", "cacao_compare('==', vars['__var1__'], '2001:db8::1')"),
    (
        "__var1__:value = https://google.com",
        "cacao_compare('==', vars['__var1__'], 'https://google.com')",
    ),
    (
        "__var1__:value = BC-24-11-00-00-01",
        "cacao_compare('==', vars['__var1__'], 'BC-24-11-00-00-01')",
    ),
    ("__var1__:value = 1000.0", "cacao_compare('==', vars['__var1__'], 1000.0)"),
    ("__var1__:value >= 1000", "cacao_compare('>=', vars['__var1__'], 1000)"),
    # each operator
    ("__a__:value == 'x'", "cacao_compare('==', vars['__a__'], 'x')"),
    ("__a__:value <> 'x'", "cacao_compare('!=', vars['__a__'], 'x')"),
    ("__a__:value < 3", "cacao_compare('<', vars['__a__'], 3)"),
    ("__a__:value <= 3", "cacao_compare('<=', vars['__a__'], 3)"),
    ("__a__:value > 3", "cacao_compare('>', vars['__a__'], 3)"),
    ("__a__:value=3", "cacao_compare('==', vars['__a__'], 3)"),
    ("__a__:value IN ('x', 'y')", "cacao_compare('in', vars['__a__'], ['x', 'y'])"),
    ("__a__:value in ('x')", "cacao_compare('in', vars['__a__'], ['x'])"),
    ("__a__:value NOT IN (1, 2)", "not cacao_compare('in', vars['__a__'], [1, 2])"),
    ("__a__:value LIKE 'ab%_c'", "cacao_like(vars['__a__'], 'ab%_c')"),
    ("__a__:value MATCHES '^\\d+$'", "cacao_matches(vars['__a__'], '^\\\\d+$')"),
    ("__a__:value not like 'x%'", "not cacao_like(vars['__a__'], 'x%')"),
    (
        "__ip__:value ISSUBSET '10.0.0.0/8'",
        "cacao_compare('issubset', vars['__ip__'], '10.0.0.0/8')",
    ),
    (
        "__net__:value issuperset 10.1.2.3",
        "cacao_compare('issuperset', vars['__net__'], '10.1.2.3')",
    ),
    ("__a__:value = __b__:value", "cacao_compare('==', vars['__a__'], vars['__b__'])"),
    # precedence: NOT > AND > OR, and parentheses
    (
        "__a__:value = 1 OR __b__:value = 2 AND __c__:value = 3",
        "cacao_compare('==', vars['__a__'], 1) or cacao_compare('==', vars['__b__'], 2)"
        " and cacao_compare('==', vars['__c__'], 3)",
    ),
    (
        "(__a__:value = 1 OR __b__:value = 2) AND __c__:value = 3",
        "(cacao_compare('==', vars['__a__'], 1) or cacao_compare('==', vars['__b__'], 2))"
        " and cacao_compare('==', vars['__c__'], 3)",
    ),
    (
        "NOT __a__:value = 1 AND __b__:value = 2",
        "not cacao_compare('==', vars['__a__'], 1) and cacao_compare('==', vars['__b__'], 2)",
    ),
    (
        "NOT (__a__:value = 'x' OR __b__:value <= 3.5)",
        "not (cacao_compare('==', vars['__a__'], 'x') or cacao_compare('<=', vars['__b__'], 3.5))",
    ),
    ("((((__a__:value = 1))))", "cacao_compare('==', vars['__a__'], 1)"),
    (
        "__a__:value = 1 AND (__b__:value = 2 AND __c__:value = 3)",
        "cacao_compare('==', vars['__a__'], 1) and cacao_compare('==', vars['__b__'], 2)"
        " and cacao_compare('==', vars['__c__'], 3)",
    ),
    ("NOT NOT __a__", "not not cacao_compare('==', vars['__a__'], true)"),
    # case-insensitive keywords
    (
        "__count__:value > 5 and __ok__:value = TRUE Or not __x__:value",
        "cacao_compare('>', vars['__count__'], 5) and cacao_compare('==', vars['__ok__'], true)"
        " or not cacao_compare('==', vars['__x__'], true)",
    ),
    # bare operands, booleans, null
    ("__ok__:value", "cacao_compare('==', vars['__ok__'], true)"),
    ("__ok__", "cacao_compare('==', vars['__ok__'], true)"),
    ("true", "true"),
    ("False OR __ok__:value", "false or cacao_compare('==', vars['__ok__'], true)"),
    ("__a__:value = null", "cacao_compare('==', vars['__a__'], none)"),
    ("__a__:value != false", "cacao_compare('!=', vars['__a__'], false)"),
    # numbers
    ("__a__:value > -5", "cacao_compare('>', vars['__a__'], -5)"),
    ("__a__:value < -0.25", "cacao_compare('<', vars['__a__'], -0.25)"),
    ("__a__:value < 1e3", "cacao_compare('<', vars['__a__'], 1000.0)"),
    ("__a__:value = 007", "cacao_compare('==', vars['__a__'], 7)"),
    # strings and escapes
    ("__a__:value = 'it\\'s'", "cacao_compare('==', vars['__a__'], 'it\\'s')"),
    ('__a__:value = "say \\"hi\\""', "cacao_compare('==', vars['__a__'], 'say \"hi\"')"),
    ("__a__:value = 'back\\\\slash'", "cacao_compare('==', vars['__a__'], 'back\\\\slash')"),
    ("__a__:value = 'two\nlines'", "cacao_compare('==', vars['__a__'], 'two\\nlines')"),
    ("__a__:value = 'café ☕'", "cacao_compare('==', vars['__a__'], 'caf\\xe9 \\u2615')"),
    ("__a__:value = 'AND'", "cacao_compare('==', vars['__a__'], 'AND')"),
    ("__a__:value = android", "cacao_compare('==', vars['__a__'], 'android')"),
    # a reference inside a string is text, not a substitution
    ("__a__:value = '__b__:value'", "cacao_compare('==', vars['__a__'], '__b__:value')"),
    # hyphenated and underscore-heavy names
    ("__my-var__:value = 1", "cacao_compare('==', vars['__my-var__'], 1)"),
    ("___x__:value = 1", "cacao_compare('==', vars['___x__'], 1)"),
    ("__a__b__:value = 1", "cacao_compare('==', vars['__a__b__'], 1)"),
]


@pytest.mark.parametrize(("condition", "expected"), EXAMPLES)
def test_translation(condition: str, expected: str) -> None:
    assert condition_to_expression(condition) == expected


@pytest.mark.parametrize(("condition", "expected"), EXAMPLES)
def test_translation_reverses(condition: str, expected: str) -> None:
    back = expression_to_condition(expected)
    assert back is not None
    assert condition_to_expression(back) == expected


@pytest.mark.parametrize(("condition", "expected"), EXAMPLES)
def test_translation_is_a_sandbox_expression(condition: str, expected: str) -> None:
    assert calls(expected) <= set(CONDITION_FUNCTIONS)
    with registered():
        compiled = compile_expression(expected, "if")
    assert compiled.names <= {"vars", *CONDITION_FUNCTIONS}


def test_written_back_in_canonical_form() -> None:
    expression = condition_to_expression(
        "not (__a__ == 1 or __b-c__:value in (x, \"y\")) and __d__:value like 'a%'"
    )
    assert expression_to_condition(expression) == (
        "NOT (__a__:value = 1 OR __b-c__:value IN ('x', 'y')) AND __d__:value LIKE 'a%'"
    )


# -- evaluation ---------------------------------------------------------------------------------

EVALUATIONS: list[tuple[str, dict[str, Any], bool]] = [
    ("__d__:value != '01-01-2025'", {"__d__": "01-01-2025"}, False),
    ("__d__:value != '01-01-2025'", {"__d__": "02-01-2025"}, True),
    ("__var1__:value = testing", {"__var1__": "testing"}, True),
    # numbers: a number literal against numeric text compares as numbers
    ("__n__:value > 5", {"__n__": "10"}, True),
    ("__n__:value > 5", {"__n__": "4.5"}, False),
    ("__n__:value = 1000.0", {"__n__": "1000"}, True),
    ("__n__:value = 5", {"__n__": "five"}, False),
    ("__n__:value > 5", {"__n__": "five"}, False),
    ("__n__:value > 5", {"__n__": 7}, True),
    ("__n__:value > -1", {"__n__": " 0 "}, True),
    # two numeric texts order as numbers, equal as texts
    ("__a__:value > __b__:value", {"__a__": "10", "__b__": "9"}, True),
    ("__a__:value = __b__:value", {"__a__": "1.0", "__b__": "1"}, False),
    # texts order as texts (ISO dates order right)
    ("__t__:value < '2025-01-01'", {"__t__": "2024-12-31"}, True),
    ("__s__:value < b", {"__s__": "a"}, True),
    # booleans against 'true'/'false' text
    ("__ok__:value = true", {"__ok__": "true"}, True),
    ("__ok__:value = true", {"__ok__": "TRUE"}, True),
    ("__ok__:value = true", {"__ok__": "yes"}, False),
    ("__ok__:value", {"__ok__": "false"}, False),
    ("__ok__:value", {"__ok__": True}, True),
    ("NOT __ok__:value", {"__ok__": "false"}, True),
    ("__ok__:value = true", {"__ok__": 1}, False),
    ("__ok__:value > false", {"__ok__": True}, False),
    # null and missing
    ("__x__:value = null", {}, True),
    ("__x__:value = null", {"__x__": None}, True),
    ("__x__:value = null", {"__x__": ""}, False),
    ("__x__:value != 'a'", {}, True),
    ("__x__:value < 5", {}, False),
    ("__x__:value >= 5", {"__x__": None}, False),
    # IN
    ("__a__:value IN ('x', 'y')", {"__a__": "y"}, True),
    ("__a__:value IN ('x', 'y')", {"__a__": "z"}, False),
    ("__a__:value IN (1, 2)", {"__a__": "2"}, True),
    ("__a__:value NOT IN (1, 2)", {"__a__": "3"}, True),
    ("__a__:value IN __list__:value", {"__a__": "b", "__list__": ["a", "b"]}, True),
    ("__a__:value IN __map__:value", {"__a__": "k", "__map__": {"k": 1}}, True),
    ("__ip__:value IN 10.0.0.0/8", {"__ip__": "10.0.0.30"}, True),
    ("__ip__:value IN 10.30.0.0/16", {"__ip__": "10.0.0.30"}, False),
    ("__ip__:value IN '2001:db8::/64'", {"__ip__": "2001:db8::1"}, True),
    ("__ip__:value IN '2001:db8::/64'", {"__ip__": "10.0.0.1"}, False),
    ("__a__:value IN 'abc'", {"__a__": "abc"}, True),
    ("__a__:value IN 'abc'", {"__a__": "b"}, False),
    # network sets
    ("__n__:value ISSUBSET '10.0.0.0/8'", {"__n__": "10.1.0.0/16"}, True),
    ("__n__:value ISSUBSET '10.0.0.0/8'", {"__n__": "11.0.0.0/16"}, False),
    ("__n__:value ISSUPERSET 10.1.2.3", {"__n__": "10.0.0.0/8"}, True),
    ("__n__:value ISSUBSET '10.0.0.0/8'", {"__n__": "not a network"}, False),
    # LIKE and MATCHES
    ("__f__:value LIKE '%.exe'", {"__f__": "evil.exe"}, True),
    ("__f__:value LIKE '%.exe'", {"__f__": "evil.exe.txt"}, False),
    ("__f__:value LIKE 'a_c'", {"__f__": "abc"}, True),
    ("__f__:value LIKE 'a_c'", {"__f__": "abbc"}, False),
    ("__f__:value MATCHES '^[a-f0-9]{32}$'", {"__f__": "d41d8cd98f00b204e9800998ecf8427e"}, True),
    ("__f__:value MATCHES 'err(or)?'", {"__f__": "an error occurred"}, True),
    ("__f__:value MATCHES '^ok$'", {"__f__": "not ok"}, False),
    # logic
    ("__a__:value = 1 OR __b__:value = 2 AND __c__:value = 3", {"__a__": 1, "__b__": 0}, True),
    ("(__a__:value = 1 OR __b__:value = 2) AND __c__:value = 3", {"__a__": 1}, False),
    ("NOT (__a__:value = 'x' OR __b__:value <= 3.5)", {"__a__": "y", "__b__": "4"}, True),
    ("NOT (__a__:value = 'x' OR __b__:value <= 3.5)", {"__a__": "y", "__b__": "3.5"}, False),
    # hyphenated names
    ("__my-var__:value = 'v'", {"__my-var__": "v"}, True),
]


@pytest.mark.parametrize(("condition", "variables", "expected"), EVALUATIONS)
def test_evaluation(condition: str, variables: dict[str, Any], expected: bool) -> None:
    assert both(condition, variables) is expected


def test_expressions_registers_the_condition_functions() -> None:
    """No patching: the functions are among expressions.FUNCTIONS, so not a run's data."""
    assert set(CONDITION_FUNCTIONS) <= set(expressions.FUNCTIONS)
    assert set(CONDITION_FUNCTIONS) <= expressions.BUILTIN_NAMES
    condition = "__n__:value > 5 AND __f__:value LIKE '%.exe' AND NOT __f__:value MATCHES '^x'"
    compiled = compile_expression(condition_to_expression(condition), "if")
    assert compiled.names == {"vars"}
    assert compiled.truthy({"vars": {"__n__": "6", "__f__": "a.exe"}}) is True
    assert compiled.truthy({"vars": {"__n__": "6", "__f__": "x.exe"}}) is False


def test_evaluation_runs_as_an_engine_if_condition() -> None:
    """The expression works where the engine puts it: ``compile_value``'d ``{{ … }}``."""
    expression = condition_to_expression("__n__:value > 5 AND __ok__:value")
    with registered():
        compiled = compile_value("{{ " + expression + " }}", "if")
        assert render_value(compiled, {"vars": {"__n__": "6", "__ok__": "true"}}) is True
        assert render_value(compiled, {"vars": {"__n__": "6", "__ok__": "false"}}) is False


@pytest.mark.parametrize(
    ("op", "left", "right", "expected"),
    [
        ("==", None, None, True),
        ("==", None, "", False),
        ("!=", None, 0, True),
        ("==", "5", 5, True),
        ("==", 5, "5.0", True),
        ("==", "5", "5.0", False),
        ("==", True, "True", True),
        ("==", False, "false ", True),
        ("==", True, 1, False),
        ("==", 1, True, False),
        ("==", [1, 2], [1, 2], True),
        ("==", [1, 2], "[1, 2]", False),
        ("==", {"a": 1}, {"a": 1}, True),
        ("==", 5, "abc", False),
        ("<", "abc", 5, False),
        ("<", [1], [2], False),
        ("<", "a", None, False),
        (">", True, False, False),
        ("<=", "2", "10", True),
        ("<", "b", "a", False),
        (">=", 3.5, "3.5", True),
        ("in", "a", ["a", "b"], True),
        ("in", 2, ("1", "2"), True),
        ("in", "a", None, False),
        ("in", "10.0.0.1", "10.0.0.0/8", True),
        ("in", "10.0.0.0/24", "10.0.0.0/8", False),
        ("in", "x", "x/y", False),
        ("issubset", "10.0.0.1", "10.0.0.0/8", True),
        ("issubset", "::1", "10.0.0.0/8", False),
        ("issuperset", "10.0.0.0/8", "10.0.0.0/24", True),
    ],
)
def test_cacao_compare(op: str, left: Any, right: Any, expected: bool) -> None:
    assert cacao_compare(op, left, right) is expected


def test_cacao_compare_refuses_an_unknown_operator() -> None:
    with pytest.raises(ValueError, match="not a comparison"):
        cacao_compare("~", 1, 1)


@pytest.mark.parametrize(
    ("value", "pattern", "expected"),
    [
        ("abc", "abc", True),
        ("abc", "ab", False),
        ("abc", "%", True),
        ("", "%", True),
        ("", "_", False),
        ("abc", "a%", True),
        ("abc", "%c", True),
        ("abc", "%b%", True),
        ("abc", "a%b%c", True),
        ("abc", "a%%c", True),
        ("aXbXc", "a%b%c", True),
        ("ab", "a%b%b", False),
        ("abab", "%ab%ab", True),
        ("a.c", "a.c", True),
        ("abc", "a.c", False),
        ("a\nc", "a_c", True),
        ("ABC", "abc", False),
        ("[x]", "[%]", True),
        (12345, "12%", True),
        (True, "tr%", True),
        (None, "%", False),
        ("x", None, False),
    ],
)
def test_cacao_like(value: Any, pattern: Any, expected: bool) -> None:
    assert cacao_like(value, pattern) is expected


def test_cacao_like_is_fast_on_the_worst_case() -> None:
    text = "a" * 20_000
    assert cacao_like(text, "%a%a%a%a%a%a%a%a%b") is False
    assert cacao_like(text + "b", "%a%a%a%a%a%a%a%a%b") is True


def test_cacao_like_bounds_the_pattern() -> None:
    with pytest.raises(ValueError, match="longer than"):
        cacao_like("x", "%" * 2000)


@pytest.mark.parametrize(
    "pattern", ["(a)\\1", "(a{1,20}){1,20}[", "(a)(?(1)b)", "(?=a)a", "x(?<!y)"]
)
def test_cacao_matches_refuses_patterns_re2_cannot_run(pattern: str) -> None:
    with pytest.raises(ValueError, match="MATCHES pattern refused"):
        cacao_matches("aaaa", pattern)


@pytest.mark.parametrize(
    "pattern", ["(a+)+!", "(a*)*b", "(\\w+\\s?)*!", "(?:x|a+)+!", "(a|a)*b", "(a|aa)*c"]
)
def test_catastrophic_shapes_run_in_linear_time_on_re2(pattern: str) -> None:
    # Each of these takes exponential time on a backtracking engine for this text; on RE2
    # it is one linear pass (the test would not end otherwise).
    assert cacao_matches("a" * 5000, pattern) is False


def test_cacao_matches_allows_bounded_repetition() -> None:
    assert cacao_matches("10.0.0.1", "^(\\d{1,3}\\.){3}\\d{1,3}$") is True
    assert cacao_matches("foo bar", "(foo|bar)+") is True


def test_cacao_matches_bounds_the_pattern() -> None:
    with pytest.raises(ValueError, match="longer than"):
        cacao_matches("x", "x" * 2000)


def test_a_pattern_re2_cannot_run_is_refused_when_translating() -> None:
    with pytest.raises(ConditionError, match="column 21") as caught:
        condition_to_expression("__a__:value MATCHES '(a)\\\\1'")
    assert "RE2" in caught.value.message


def test_a_missing_variable_in_the_sandbox_reads_as_null() -> None:
    expression = condition_to_expression("__gone__:value = null AND NOT __gone__:value < 1")
    assert sandboxed(expression, {}) is True


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "column", "words"),
    [
        ("", 1, "empty"),
        ("   \n ", 1, "empty"),
        ("(__a__:value = 1", 17, "expected ')'"),
        ("((__a__:value = 1)", 19, "expected ')'"),
        ("__a__:value = 1)", 16, "unexpected ')'"),
        ("__a__:value = 1 garbage", 17, "expected AND, OR, the end"),
        ("__a__:value = 'x' 'y'", 19, "unexpected"),
        ("__a__:value ~ 1", 13, "expected an operator"),
        ("__a__:value EQ 1", 13, "expected an operator"),
        ("__a__:value === 1", 15, "expected a value"),
        ("__a__:value && __b__:value", 13, "unexpected '&&'"),
        ("__a__:value = 1 || __b__:value = 2", 17, "unexpected '||'"),
        ("! __a__:value", 1, "unexpected '!'"),
        ("__a__:value = 1 AND", 20, "ends early"),
        ("NOT", 4, "ends early"),
        ("__a__:value IN ()", 17, "unexpected ')'"),
        ("__a__:value IN (1 2)", 19, "expected ')', ','"),
        ("__a__:value = 'open", 15, "not closed with '"),
        ('__a__:value = "open', 15, 'not closed with "'),
        ("just-a-word", 1, "alone is not a condition"),
        ("'text'", 1, "alone is not a condition"),
        ("42", 1, "alone is not a condition"),
        ("__a__:value = and", 15, "is a keyword"),
        ("__a__:values = 1", 1, "not a variable reference"),
        ("__a__:value = x__b__:value", 15, "not a variable reference"),
        ("__a__:value = 1e999", 15, "out of range"),
        ("__a__:value = " + "9" * 5000, 15, "too long"),
        ("__a__:value MATCHES '(unclosed'", 21, "not a regular expression"),
        ("__a__:value LIKE '" + "%" * 1100 + "'", 18, "longer than"),
        ("x" * (MAX_SOURCE + 1), MAX_SOURCE + 1, "longer than 8192"),
        ("__a__:value = '" + "\u2615" * 2000 + "'", 1, "makes an expression longer than"),
        ("(" * 70 + "true" + ")" * 70, 7, "nests too deeply"),
        ("NOT " * 70 + "true", 25, "nests too deeply"),
        (" AND ".join(["true"] * 70), 64 * 9 + 1, "nests too deeply"),
    ],
)
def test_errors_name_the_column(condition: str, column: int, words: str) -> None:
    with pytest.raises(ConditionError) as caught:
        condition_to_expression(condition)
    error = caught.value
    assert isinstance(error, InvalidInput)
    assert error.details["column"] == column
    assert f"at column {column}:" in error.message
    assert words in error.message


def test_the_depth_limit_is_inclusive() -> None:
    condition_to_expression("(" * (MAX_DEPTH - 1) + "true" + ")" * (MAX_DEPTH - 1))
    condition_to_expression(" AND ".join(["true"] * MAX_DEPTH))
    with pytest.raises(ConditionError):
        condition_to_expression("(" * MAX_DEPTH + "true" + ")" * MAX_DEPTH)


def test_a_deep_chain_within_the_limit_compiles_in_the_sandbox() -> None:
    condition = " OR ".join(f"__v{i}__:value = {i}" for i in range(MAX_DEPTH))
    assert both(condition, {"__v63__": "63"}) is True


def test_very_deep_input_does_not_recurse() -> None:
    with pytest.raises(ConditionError, match="nests too deeply"):
        condition_to_expression("(" * 4000 + "true" + ")" * 4000)
    with pytest.raises(ConditionError, match="nests too deeply"):
        condition_to_expression("NOT " * 2000 + "true")


# -- injection ----------------------------------------------------------------------------------

PAYLOADS = [
    "it's",
    'say "hi"',
    "}}",
    "{{ 7*7 }}",
    "{% for x in range(9) %}x{% endfor %}",
    "{# hidden #}",
    "__class__",
    "x.__class__.__mro__",
    "line1\nline2\r\nline3",
    "back\\slash\\",
    "\\' + vars + \\'",
    "' ~ 7*7 ~ '",
    "\x00\x1b[31m\u2028\U0001f600",
    "__b__:value",
    "{{ vars['__secret__'] }}",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_strings_stay_literal(payload: str) -> None:
    quoted = "'" + payload.replace("\\", "\\\\").replace("'", "\\'") + "'"
    expression = condition_to_expression(f"__a__:value = {quoted}")
    assert not set("{}") & set(expression)
    assert all(" " <= char <= "~" for char in expression)
    assert calls(expression) == {"cacao_compare"}
    secret = {"__secret__": "s3cr3t", "__b__": "bee"}
    assert sandboxed(expression, {"__a__": payload, **secret}) is True
    assert sandboxed(expression, {"__a__": "49", **secret}) is False
    assert sandboxed(expression, {"__a__": "s3cr3t", **secret}) is False
    assert evaluate_condition(f"__a__:value = {quoted}", {"__a__": payload}) is True
    assert expression_to_condition(expression) == f"__a__:value = {quoted}"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_double_quoted_strings_stay_literal(payload: str) -> None:
    quoted = '"' + payload.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert both(f"__a__:value = {quoted}", {"__a__": payload}) is True


def test_variable_names_cannot_break_out() -> None:
    for condition in ("__a']+x+vars['b__:value = 1", "__a__.__class__:value = 1"):
        with pytest.raises(ConditionError):
            condition_to_expression(condition)


# -- reading expressions back -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "condition"),
    [
        ("vars['__a__'] == 'x'", "__a__:value = 'x'"),
        ("__a__ != 3", "__a__:value != 3"),
        ("vars['__a-b__'] >= -2.5", "__a-b__:value >= -2.5"),
        ("__a__ in ['x', 'y']", "__a__:value IN ('x', 'y')"),
        ("__a__ not in ('x',)", "NOT __a__:value IN ('x')"),
        ("__a__ in vars['__b__']", "__a__:value IN __b__:value"),
        ("__ok__ and not vars['__bad__']", "__ok__:value = true AND NOT __bad__:value = true"),
        ("{{ __a__ == none }}", "__a__:value = null"),
        ("true", "true"),
        (
            "__a__ and __b__ and __c__ or __d__",
            "__a__:value = true AND __b__:value = true AND __c__:value = true"
            " OR __d__:value = true",
        ),
        ("cacao_matches(__a__, '{x}')", "__a__:value MATCHES '{x}'"),
        ("cacao_compare('in', __a__, ['x'])", "__a__:value IN ('x')"),
    ],
)
def test_expression_to_condition(expression: str, condition: str) -> None:
    assert expression_to_condition(expression) == condition


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "steps.lookup.output.verdict == 'malicious'",
        "alert.severity_id >= severity('high')",
        "vars['__a__'] | length > 3",
        "vars['__a__'] == 'x' ~ 'y'",
        "vars.__a__ == 1",
        "vars['not-a-cacao-name'] == 1",
        "vars[__a__] == 1",
        "x == 1",
        "1 < __a__ < 3",
        "__a__ is defined",
        "cacao_compare('~', __a__, 1)",
        "cacao_compare('==', __a__)",
        "cacao_compare('==', __a__, 1, extra=2)",
        "cacao_compare('==', __a__, [1])",
        "cacao_compare('in', __a__, [])",
        "cacao_compare('==', __a__, 1 + 1)",
        "cacao_compare('==', __a__, {'k': 1})",
        "cacao_compare('==', __a__, -true)",
        "cacao_compare('==', __a__, 1e999)",
        "cacao_matches(__a__, '(a)\\\\1')",
        "cacao_like(__a__, '" + "%" * 2000 + "')",
        "other(__a__)",
        "'text'",
        "5",
        "{{ unclosed",
        "a {{ b }}",
        "not " * 1500 + "true",
        " and ".join(["true"] * (MAX_DEPTH + 1)),
        "x" * (MAX_SOURCE + 1),
    ],
)
def test_expression_to_condition_refuses_what_cacao_cannot_say(expression: str) -> None:
    assert expression_to_condition(expression) is None


# -- text and templates -------------------------------------------------------------------------

TEXTS = [
    ("touch __path__:value", "touch {{ vars['__path__'] }}"),
    ("__path__:value", "{{ vars['__path__'] }}"),
    ("no references", "no references"),
    ("awk '{print $1}' __f__:value", "awk '{print $1}' {{ vars['__f__'] }}"),
    (
        "ssh __user__:value@__host-name__:value",
        "ssh {{ vars['__user__'] }}@{{ vars['__host-name__'] }}",
    ),
    ("__a__:values", "{{ vars['__a__'] }}s"),
    ("__a__ and :value and __ :value", "__a__ and :value and __ :value"),
    ("echo {{ 7*7 }}", "echo {{ '\\x7b\\x7b' }} 7*7 {{ '\\x7d\\x7d' }}"),
    ("{% if x %}", "{{ '\\x7b' }}% if x %}"),
    ("{# c #}", "{{ '\\x7b' }}# c #}"),
    ("{__a__:value}", "{{ '\\x7b' }}{{ vars['__a__'] }}{{ '\\x7d' }}"),
    ("a\r\nb __x__:value", "a{{ '\\x0d' }}\nb {{ vars['__x__'] }}"),
    ("__x__:value\n", "{{ vars['__x__'] }}{{ '\\n' }}"),
    ("plain\n", "plain\n"),
    (" __x__:value ", "{{ ' ' }}{{ vars['__x__'] }} "),
    ("__x__:value  ", "{{ vars['__x__'] }}{{ '  ' }}"),
]


@pytest.mark.parametrize(("text", "template"), TEXTS)
def test_text_to_template(text: str, template: str) -> None:
    assert text_to_template(text) == template
    assert template_to_text(template) == text


@pytest.mark.parametrize(("text", "template"), TEXTS)
def test_templates_render_to_the_text(text: str, template: str) -> None:
    values = {name: f"<{name}>" for name in variable_references(text)}
    rendered = render_value(compile_value(template, "command"), {"vars": values})
    assert rendered == re.sub(f"({NAME_PATTERN}):value", lambda m: f"<{m.group(1)}>", text)


def test_variable_values_are_not_evaluated_again() -> None:
    template = text_to_template("echo __a__:value __b__:value")
    values = {"__a__": "{{ 7*7 }}", "__b__": "{% raw %}"}
    assert render_value(compile_value(template, "command"), {"vars": values}) == (
        "echo {{ 7*7 }} {% raw %}"
    )


@pytest.mark.parametrize(
    "template",
    [
        "{{ vars['__a__'] | upper }}",
        "{{ alert.src.ip }}",
        "{{ 'hello' }}",
        "{{ 5 }}",
        "{% if x %}y{% endif %}",
        "{# no braces #}",
        "a }} b",
        "{{ vars['__a__'] }} and __b__:value",
        "__b__:value",
        "{{ vars['__a__'] }}\n",
        "{{ vars['__a__'] }}\r",
        " {{ vars['__a__'] }}",
        "{{ unclosed",
        "__x{{ vars['__a__'] }}",
        "{{ vars['__a__'] }}{{ '__b__:value' }}",
    ],
)
def test_template_to_text_refuses_foreign_templates(template: str) -> None:
    assert template_to_text(template) is None


def test_template_to_text_accepts_bare_names_and_plain_text() -> None:
    assert template_to_text("kill {{ __pid__ }}") == "kill __pid__:value"
    assert template_to_text("kill {{vars['__pid__']}}") == "kill __pid__:value"
    assert template_to_text("awk '{print $1}'") == "awk '{print $1}'"
    assert template_to_text("plain\n") == "plain\n"


def test_variable_references() -> None:
    text = "a __x__:value b __y-z__:value __x__:value '__q__:value' __no__ __bad:value"
    assert variable_references(text) == ["__x__", "__y-z__", "__q__"]
    assert variable_references("") == []
    assert variable_references("__" + "a" * 250 + "__:value") == []


# -- properties ---------------------------------------------------------------------------------

_KEYWORDS = {"and", "or", "not", "in", "like", "matches", "issubset", "issuperset"}
_KEYWORDS |= {"true", "false", "null"}
_BARE_WORD = re.compile(r"""[^\s()'",=!<>]+""")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")

# Evaluation uses a fixed pool of names: a *missing* variable named like a dict attribute
# (__doc__, __class__) trips the sandbox's attribute guard, so random names are for translation.
FIXED_NAMES = ["__a__", "__b-c__", "___d__", "__e__f__", "__count__"]
names = st.one_of(
    st.sampled_from(FIXED_NAMES),
    st.from_regex(r"__[A-Za-z_][A-Za-z0-9_-]{0,12}__", fullmatch=True),
)
texts = st.lists(
    st.sampled_from([*"ab _-:'\"\\{}%#\n\r\t.,()=!<>/é☕", "__x__:value", "{{", "}}"]),
    max_size=12,
).map("".join)
scalars = st.one_of(
    texts,
    st.sampled_from(["true", "False", "10", "9.5", "10.0.0.5", "10.0.0.0/8", "", "AND"]),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)


def conditions_over(names: st.SearchStrategy[str]) -> st.SearchStrategy[Cond]:
    """Random condition trees whose variables are drawn from ``names``."""
    operands = st.one_of(names.map(Var), scalars.map(Lit))
    item_lists = st.lists(operands, min_size=1, max_size=3).map(lambda xs: Items(tuple(xs)))
    comparisons = st.one_of(
        st.builds(Cmp, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), operands, operands),
        st.builds(Cmp, st.just("in"), operands, st.one_of(operands, item_lists)),
        st.builds(Cmp, st.sampled_from(["issubset", "issuperset"]), operands, operands),
        st.builds(Cmp, st.just("like"), operands, st.text("ab%_", max_size=6).map(Lit)),
        st.builds(Cmp, st.just("matches"), operands, safe_regexes.map(Lit)),
        names.map(lambda name: Cmp("==", Var(name), Lit(True))),
        st.booleans().map(Lit),
    )
    return st.recursive(
        comparisons,
        lambda inner: st.one_of(
            inner.map(Not),
            st.lists(inner, min_size=2, max_size=3).map(lambda items: And(tuple(items))),
            st.lists(inner, min_size=2, max_size=3).map(lambda items: Or(tuple(items))),
        ),
        max_leaves=8,
    )


safe_regexes = st.sampled_from(["^a", "b$", "a.c", "\\d+", "[ab]{2}", "(x|y)z", "^$", "{"])


def keyword(word: str, draw: st.DrawFn) -> str:
    return draw(st.sampled_from([word.upper(), word.lower(), word.capitalize()]))


def render_operand(operand: Any, draw: st.DrawFn) -> str:
    """CACAO text for an operand, in a randomly chosen one of its spellings."""
    if isinstance(operand, Var):
        return operand.name + draw(st.sampled_from([":value", ":value", ""]))
    if isinstance(operand, Items):
        spaces = draw(st.sampled_from([", ", ",", " , "]))
        return "(" + spaces.join(render_operand(item, draw) for item in operand.items) + ")"
    value = operand.value
    if value is None:
        return keyword("null", draw)
    if isinstance(value, bool):
        return keyword("true" if value else "false", draw)
    if isinstance(value, int | float):
        return repr(value)
    assert isinstance(value, str)
    style = draw(st.sampled_from(["single", "double", "bare"]))
    if (
        style == "bare"
        and _BARE_WORD.fullmatch(value)
        and value.lower() not in _KEYWORDS
        and not _NUMBER.match(value)
        and not re.search(NAME_PATTERN, value)
    ):
        return value
    if style == "double":
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_SYMBOLS = {"==": ["=", "=="], "!=": ["!=", "<>"], "<": ["<"], "<=": ["<="], ">": [">"]}
_SYMBOLS[">="] = [">="]


def render(node: Cond, draw: st.DrawFn, parens: int = 2) -> str:
    """CACAO text for a condition, in random but equivalent spellings."""
    space = draw(st.sampled_from([" ", "  ", "\t", "\n "]))
    if parens and draw(st.integers(0, 5)) == 5:  # redundant parentheses (0, the simplest: none)
        return "(" + render(node, draw, parens - 1) + ")"
    if isinstance(node, Lit):
        return keyword("true" if node.value else "false", draw)
    if isinstance(node, Cmp):
        left = render_operand(node.left, draw)
        bare = node.op == "==" and node.right == Lit(True) and isinstance(node.left, Var)
        if bare and draw(st.booleans()):
            return left
        if node.op in _SYMBOLS:
            op = draw(st.sampled_from(_SYMBOLS[node.op]))
        else:
            op = keyword(node.op, draw)
        return f"{left}{space}{op}{space}{render_operand(node.right, draw)}"
    if isinstance(node, Not):
        inner = node.item
        if isinstance(inner, Cmp) and inner.op in ("in", "like", "matches") and draw(st.booleans()):
            left, right = render_operand(inner.left, draw), render_operand(inner.right, draw)
            return f"{left} {keyword('not', draw)} {keyword(inner.op, draw)} {right}"
        return f"{keyword('not', draw)}{space}({render(inner, draw)})"
    word = keyword("and" if isinstance(node, And) else "or", draw)
    return f"{space}{word}{space}".join(f"({render(item, draw)})" for item in node.items)


any_conditions = conditions_over(names)
fixed_conditions = conditions_over(st.sampled_from(FIXED_NAMES))


@st.composite
def condition_texts(draw: st.DrawFn, trees: st.SearchStrategy[Cond] = any_conditions) -> str:
    return render(draw(trees), draw)


variable_values = st.dictionaries(
    st.sampled_from(FIXED_NAMES), st.one_of(scalars, st.lists(scalars, max_size=3))
)


@settings(max_examples=300, deadline=None)
@given(condition_texts())
def test_property_translation_round_trips(condition: str) -> None:
    expression = condition_to_expression(condition)
    back = expression_to_condition(expression)
    assert back is not None
    assert condition_to_expression(back) == expression
    assert expression_to_condition(condition_to_expression(back)) == back


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(condition_texts(fixed_conditions), variable_values)
def test_property_sandbox_agrees_with_the_reference(
    condition: str, variables: dict[str, Any]
) -> None:
    direct = evaluate_condition(condition, variables)
    assert sandboxed(condition_to_expression(condition), variables) is direct
    back = expression_to_condition(condition_to_expression(condition))
    assert back is not None
    assert evaluate_condition(back, variables) is direct


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_property_any_text_translates_or_fails_cleanly(condition: str) -> None:
    column: int | None = None
    try:
        expression = condition_to_expression(condition)
    except ConditionError as error:
        column = error.details["column"]
    if column is not None:
        assert 1 <= column <= len(condition) + 1
    else:
        assert expression_to_condition(expression) is not None


chunks = st.one_of(
    st.text(st.sampled_from(list("ab _-:.{}%#\n\r\t'\"\\$é")), max_size=6),
    names.map(lambda name: f"{name}:value"),
    st.sampled_from(
        ["{{", "}}", "{%", "%}", "{#", "#}", "{", "}", "__a__", ":value", "__x__:valu"]
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(chunks, max_size=8).map("".join))
def test_property_text_round_trips_and_renders(text: str) -> None:
    template = text_to_template(text)
    assert template_to_text(template) == text
    values = {name: f"[{name}]" for name in variable_references(text)}
    expected = re.sub(f"({NAME_PATTERN}):value", lambda m: f"[{m.group(1)}]", text)
    assert render_value(compile_value(template, "command"), {"vars": values}) == expected
