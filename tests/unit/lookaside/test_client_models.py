"""The client's answer models (``lookaside/client/models.py``) against the server's response
schemas (``service/schemas``): every client field exists on the server with the same type, so a
renamed or retyped server field fails here instead of in a user's program."""

from __future__ import annotations

import types
import typing
from datetime import datetime
from typing import Any, Literal, Union

import pytest
from pydantic import BaseModel

import service.schemas as server
from lookaside.client import models as client
from service.schemas.health import ServerInfo

PAIRS: dict[type[BaseModel], type[BaseModel]] = {
    client.Info: ServerInfo,
    client.ClassifyResponse: server.ClassifyResponse,
    client.AvEventResponse: server.AvEventResponse,
    client.AdapterList: server.AdapterList,
    client.AdapterInfo: server.AdapterInfo,
    client.UploadResult: server.UploadResult,
    client.ActivateResult: server.ActivateResult,
    client.DeleteResult: server.DeleteResult,
}
"""The top-level answers; the models they hold are paired by name as they are met."""


def _shape(tp: Any, nested: dict[str, type[BaseModel]]) -> Any:
    """A comparable form of a type: a model by name (collected into ``nested``), a Literal of
    strings as ``str`` (the client reads such fields as plain strings), unions as sets."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        nested[tp.__name__] = tp
        return ("model", tp.__name__)
    if origin is Literal:
        return str if all(isinstance(a, str) for a in typing.get_args(tp)) else tp
    if origin in (Union, types.UnionType):
        return frozenset(_shape(a, nested) for a in typing.get_args(tp))
    if origin is not None:
        return (origin, tuple(_shape(a, nested) for a in typing.get_args(tp)))
    if tp in (str, int, float, bool, datetime, type(None)) or tp is Any:
        return tp
    raise AssertionError(f"unexpected field type {tp!r}")


def _compare(mine: type[BaseModel], theirs: type[BaseModel], seen: set[str]) -> list[str]:
    """Differences between a client model and the server's, through the models they hold."""
    seen.add(mine.__name__)
    problems = []
    my_nested: dict[str, type[BaseModel]] = {}
    their_nested: dict[str, type[BaseModel]] = {}
    for name, info in mine.model_fields.items():
        if name not in theirs.model_fields:
            problems.append(f"{mine.__name__}.{name}: not a field of the server's {theirs}")
            continue
        got = _shape(info.annotation, my_nested)
        want = _shape(theirs.model_fields[name].annotation, their_nested)
        if got != want:
            problems.append(f"{mine.__name__}.{name}: {got} here, {want} on the server")
    for name, model in my_nested.items():
        if name not in seen:
            problems += _compare(model, their_nested[name], seen)
    return problems


def test_every_client_field_is_a_server_field_of_the_same_type() -> None:
    seen: set[str] = set()
    problems = [p for mine, theirs in PAIRS.items() for p in _compare(mine, theirs, seen)]
    assert not problems, "\n".join(problems)
    # every client model is checked, directly or as a model an answer holds
    assert {name for name in client.__all__ if name in seen} == set(client.__all__)


def test_the_comparison_finds_a_renamed_or_retyped_field() -> None:
    class Renamed(BaseModel):
        name: str
        deleted_versions: list[int]

    class Retyped(BaseModel):
        name: str
        deleted: list[str]

    assert _compare(Renamed, server.DeleteResult, set()) == [
        "Renamed.deleted_versions: not a field of the server's "
        "<class 'service.schemas.adapters.DeleteResult'>"
    ]
    assert len(_compare(Retyped, server.DeleteResult, set())) == 1


@pytest.mark.parametrize("model", [client.ClassifyResponse, client.AdapterList, client.Info])
def test_an_answer_with_fields_added_later_still_parses(model: type[BaseModel]) -> None:
    """The server's own example answer, plus fields this client does not know (top level and
    nested): it parses, the known fields read as the server wrote them, the new ones stay."""
    theirs = PAIRS[model]
    sample = theirs.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]
    listed = next((k for k, v in sample.items() if isinstance(v, list) and v), None)
    newer = {**sample, "added_later": 1}
    if listed is not None:
        newer[listed] = [{**sample[listed][0], "nested_new": "x"}]
    parsed = model.model_validate(newer)
    assert parsed.model_extra == {"added_later": 1}
    known = parsed.model_dump(mode="json", exclude={"added_later"})
    if listed is not None:
        assert getattr(parsed, listed)[0].model_extra == {"nested_new": "x"}
        known[listed][0].pop("nested_new")
    assert known == theirs.model_validate(sample).model_dump(mode="json")
