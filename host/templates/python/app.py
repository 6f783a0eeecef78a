"""`{{name}}`: a Sluice stage in Python.

Each record's value must be a JSON object; the stage adds
`"tagged_by": <tag>` to it and the header `x-tagged-by`, and sends it on. A
value that is not JSON, or not an object, goes to the dead-letter topic with
its reason.

Config (pipeline.toml, `[stages.config]`): `tag`, default `"{{name}}"`.

The host calls `init` once per instance with the config as JSON, then
`process` with batches of records; `process` returns one outcome per
record, in order.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    ErrorInfo,
    Header,
    LogLevel,
    Message,
    Outcome,
    Outcome_Emit,
    Outcome_Reject,
    Output,
)

tag = "{{name}}"


def reject(reason: str, message: str) -> Outcome:
    return Outcome_Reject(ErrorInfo(reason, message))


def tag_record(message: Message) -> Outcome:
    try:
        value = json.loads(message.value)
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
        return reject("invalid_json", str(e))
    if not isinstance(value, dict):
        return reject("not_an_object", "the record value is JSON but not an object")
    value["tagged_by"] = tag
    headers = message.headers + [Header("x-tagged-by", tag.encode())]
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    # No route: on to the next stage (or the pipeline's output); no Redis effects.
    return Outcome_Emit(([Output(route=None, key=message.key, value=body, headers=headers)], []))


class WitWorld(wit_world.WitWorld):
    def init(self, config_json: str) -> None:
        global tag
        try:
            config = json.loads(config_json or "{}")
        except ValueError as e:
            raise Err(f"stage config: {e}")
        unknown = sorted(set(config) - {"tag"})
        if unknown:
            raise Err(f"stage config: unknown setting {unknown[0]!r}, expected 'tag'")
        tag = str(config.get("tag", tag))
        host.log(LogLevel.DEBUG, f"{{name}} tags records with {tag!r}")

    def process(self, batch: list[Message]) -> list[Outcome]:
        return [tag_record(message) for message in batch]
