"""`vip`: a Sluice stage in Python that sends a copy of every order whose
total is at least 100.00 to the `vip` output, for the team that calls big
customers back. Every order, VIP or not, goes on unchanged to the next stage
(or the pipeline's output), so the enriched stream stays complete.

Input: canonical enriched orders (place the stage after `totals`).
Config: `min_total_cents` (default 10000, i.e. 100.00).
The copy carries the header `sluice.vip.total` with the total, e.g. `123.45`.
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

min_total_cents = 10000


def reject(reason: str, message: str) -> Outcome:
    return Outcome_Reject(ErrorInfo(reason, message))


def route(message: Message) -> Outcome:
    try:
        order = json.loads(message.value)
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
        return reject("invalid_json", f"vip expects a canonical order: {e}")
    total = order.get("total_cents") if isinstance(order, dict) else None
    if isinstance(total, bool) or not isinstance(total, int):
        return reject("missing_field", "vip expects `total_cents`, an integer (is `totals` before it?)")
    onward = Output(route=None, key=message.key, value=message.value, headers=message.headers)
    if total < min_total_cents:
        return Outcome_Emit(([onward], []))
    amount = f"{'-' if total < 0 else ''}{abs(total) // 100}.{abs(total) % 100:02d}"
    copy = Output(
        route="vip",
        key=message.key,
        value=message.value,
        headers=message.headers + [Header("sluice.vip.total", amount.encode())],
    )
    return Outcome_Emit(([onward, copy], []))


class WitWorld(wit_world.WitWorld):
    def init(self, config_json: str) -> None:
        global min_total_cents
        try:
            config = json.loads(config_json or "{}")
        except ValueError as e:
            raise Err(f"vip config: {e}")
        unknown = sorted(set(config) - {"min_total_cents"})
        if unknown:
            raise Err(f"vip config: unknown setting {unknown[0]!r}, expected 'min_total_cents'")
        value = config.get("min_total_cents", min_total_cents)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise Err(f"vip config: min_total_cents must be a non-negative integer, got {value!r}")
        min_total_cents = value
        host.log(LogLevel.INFO, f"vip: orders of {min_total_cents} cents or more go to the vip output")

    def process(self, batch: list[Message]) -> list[Outcome]:
        return [route(message) for message in batch]
