"""What an imported CACAO step's ``out_args`` read from the step's result."""

from __future__ import annotations

from typing import Any

# Where a connector's result keeps its main value, in order: an HTTP body (JSON, else text),
# a command's output, an OpenC2 response.
_RESULT_KEYS = ("json", "text", "stdout", "response", "results")


def cacao_result(output: Any, name: str, single: bool) -> Any:
    """The value the variable ``name`` takes back from a step's ``output``.

    By name first: a key of the output, of a completed manual task's ``data`` (what the person
    filled in), or of a JSON body. Failing that, a step that returns one variable returns the
    result's main value (the body, the command's stdout); otherwise the variable is unknown
    (None), as CACAO says of a value nobody set.
    """
    if not isinstance(output, dict):
        return output if single else None
    if name in output:
        return output[name]
    for key in ("data", "json", "response", "results"):
        inner = output.get(key)
        if isinstance(inner, dict) and name in inner:
            return inner[name]
    if single:
        for key in _RESULT_KEYS:
            if output.get(key) is not None:
                return output[key]
    return None


def cacao_text(value: Any) -> str:
    """A variable's value as the text a script reads (None: empty; other non-text: JSON)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    import orjson

    return orjson.dumps(value).decode()


__all__ = ["cacao_result", "cacao_text"]
