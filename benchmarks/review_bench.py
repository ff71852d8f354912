"""Times `lg review` on a card with a 5,000-line diff: the first paint of the card and one scroll step.

The reviewer runs in-process under Textual's test pilot (headless: the screen is composed, rendered to strips,
but not written to a terminal), on a gate in a real state store. Textual's frame pacing is lifted
(TEXTUAL_FPS=1000) so that what is timed is work, not the wait for the next 60 Hz frame; the cost of turning a
whole frame into terminal output, which the headless driver skips, is timed separately and added.

- first_paint_ms: from the app's mount to the last visible row of the card rendered (the gate list, the header
  and the card are all composed by then); start_to_first_paint_ms also counts Textual's start-up (CSS, screen).
- switch_paint_ms: from the key that selects the big card (another gate was shown) to its last visible row.
- scroll_step_ms: from a key (j, k, PgDn, PgUp) to the last row of the next frame, median and worst of 200.
- frame_output_ms: one full frame turned into terminal output (what the real driver adds per frame).
Targets (issue #23): first paint <= 150 ms (median of 5), a scroll step <= 16 ms (60 frames per second; judged
on the 95th percentile), both with frame_output_ms added. Prints JSON.
"""

from __future__ import annotations

import os

os.environ["TEXTUAL_FPS"] = "1000"  # read when textual is imported

import asyncio
import difflib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console
from textual.pilot import Pilot
from textual.strip import Strip

from lg.review.app import ReviewApp
from lg.review.cardview import CardView
from lg.review.source import LocalGateSource
from lg.runs.gates import GateRules, GateStore
from lg.runs.store import RunStore

DIFF_LINES = 5000
SIZE = (120, 40)
SCROLLS = 200
TARGETS = {"first_paint_ms": 150.0, "scroll_step_ms": 16.0}


def big_card(run_id: str) -> dict[str, Any]:
    """An effects card whose one modified file has a 5,000-line diff, some of its lines longer than the screen."""
    old = [f"line {n}: {'padding ' * (n % 25)}\n" for n in range(DIFF_LINES // 2)]
    new = [f"line {n}: changed {'padding ' * (n % 25)}\n" for n in range(DIFF_LINES // 2)]
    diff = "".join(difflib.unified_diff(old, new, "a/data.txt", "b/data.txt", n=0))
    return {"run": run_id, "gate": "gen.effects", "step": "gen", "step_name": "gen", "kind": "effects",
            "level": "red", "reasons": ["effects graded red"],
            "rules": [{"rule": "effects.bulk", "level": "red", "reason": "rewrites a whole data file",
                       "span": "data.txt", "program": None}],
            "command": "python generate.py --rows 2500 --out data.txt && sed -i 's/^/line /' data.txt",
            "profile": {"name": "default", "user": "lg", "vcpus": 1, "memory_mib": 512, "relaxations": []},
            "changes": [{"path": "data.txt", "change": "modify", "size": 123456, "mode": "0644",
                         "old_mode": "0644", "symlink_target": None, "sha256": "0" * 64, "diff": diff,
                         "note": None}],
            "outputs": {}}


def gates(store: RunStore) -> None:
    small = store.create_run("small", Path("s.yaml"), Path(), "alice", [("tiny", "tiny")])
    card = {"run": small.id, "gate": "tiny.before", "step": "tiny", "kind": "explicit", "level": "yellow",
            "command": "true", "profile": {"name": "default"}}
    GateStore(store).open(small.id, "tiny", "explicit", {"run": small.id}, card, GateRules())
    time.sleep(0.01)  # the big one second: the list is oldest first
    run = store.create_run("big", Path("b.yaml"), Path(), "alice", [("gen", "gen")])
    GateStore(store).open(run.id, "gen", "effects", {"run": run.id, "n": DIFF_LINES}, big_card(run.id), GateRules())


class Timed:
    """Records when each card row is rendered (with the card's size and position then), and when the app
    mounted."""

    rows: ClassVar[list[tuple[float, int, int]]] = []
    mounted: ClassVar[list[float]] = []

    def __init__(self) -> None:  # one app at a time: start afresh
        Timed.rows.clear()
        Timed.mounted.clear()


_render_line = CardView.render_line


def timed_render_line(view: CardView, y: int) -> Strip:
    strip = _render_line(view, y)
    Timed.rows.append((time.perf_counter(), view.document.rows, int(view.scroll_y)))
    return strip


class TimedApp(ReviewApp):
    def on_mount(self) -> None:
        Timed.mounted.append(time.perf_counter())
        super().on_mount()


CardView.render_line = timed_render_line  # type: ignore[method-assign,assignment]


async def until_rows(pilot: Pilot[int], timed: Timed, count: int, what: str, *, big: bool = True,
                     scroll_y: int | None = None) -> float:
    """When the `count`-th row of the wanted card (the big one, at `scroll_y`) was rendered."""
    deadline = time.monotonic() + 10
    while True:
        wanted = [when for when, rows, top in timed.rows
                  if (rows > DIFF_LINES) == big and (scroll_y is None or top == scroll_y)]
        if len(wanted) >= count:
            return wanted[count - 1]
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: only {len(wanted)} of {count} card rows were rendered")
        await pilot.pause(0)


def frame_output_ms(app: ReviewApp) -> float:
    console = Console(width=SIZE[0], height=SIZE[1], file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", legacy_windows=False)
    started = time.perf_counter()
    console.print(app.screen._compositor.render_update(full=True))
    return (time.perf_counter() - started) * 1000


async def measure(store: RunStore) -> dict[str, Any]:
    timed = Timed()
    mounted = timed.mounted
    app = TimedApp(LocalGateSource(store), poll_seconds=3600)
    report: dict[str, Any] = {"diff_lines": DIFF_LINES, "terminal": f"{SIZE[0]}x{SIZE[1]}"}
    started = time.perf_counter()
    async with app.run_test(size=SIZE) as pilot:
        card = app.query_one(CardView)
        await until_rows(pilot, timed, 1, "small card", big=False)
        height = card.scrollable_content_region.height
        # the small gate's card comes first (the oldest gate)
        small_painted = await until_rows(pilot, timed, height, "small card", big=False)
        report["small_card_start_to_first_paint_ms"] = round((small_painted - started) * 1000, 2)
        timed.rows.clear()
        pressed = time.perf_counter()
        await pilot.press("right_square_bracket")
        switched = await until_rows(pilot, timed, height, "switch")
        report["switch_paint_ms"] = round((switched - pressed) * 1000, 2)
        report["card_rows"] = card.document.rows
        assert card.document.rows > DIFF_LINES, "the big card is not the one shown"
        report["frame_output_ms"] = round(statistics.median(frame_output_ms(app) for _ in range(20)), 2)
        report["scroll_step_ms"] = await scrolls(pilot, timed, card)
    report["mount_to_small_card_ms"] = round((small_painted - mounted[0]) * 1000, 2)
    return report


async def first_paint_of_big_card(store: RunStore) -> dict[str, float]:
    """The big card as the first one shown: the app opened on its run."""
    timed = Timed()
    mounted = timed.mounted
    run_id = next(gate.run_id for gate in GateStore(store).open_gates() if gate.gate_id == "gen.effects")
    app = TimedApp(LocalGateSource(store), run_id=run_id, poll_seconds=3600)
    started = time.perf_counter()
    async with app.run_test(size=SIZE) as pilot:
        await until_rows(pilot, timed, 1, "first paint")
        height = app.query_one(CardView).scrollable_content_region.height
        painted = await until_rows(pilot, timed, height, "first paint")
    return {"first_paint_ms": (painted - mounted[0]) * 1000, "start_to_first_paint_ms": (painted - started) * 1000}


async def scrolls(pilot: Pilot[int], timed: Timed, card: CardView) -> dict[str, float]:
    samples = []
    for index in range(SCROLLS):
        key = ("j", "j", "pagedown", "k", "pagedown", "pageup")[index % 6]
        timed.rows.clear()
        pressed = time.perf_counter()
        await pilot.press(key)
        # every visible row is asked for again (rows seen before come from the view's strip cache)
        height = card.scrollable_content_region.height
        last = await until_rows(pilot, timed, height, f"scroll {key}", scroll_y=int(card.scroll_y))
        samples.append((last - pressed) * 1000)
    return {"median": round(statistics.median(samples), 2), "p95": round(sorted(samples)[int(len(samples) * 0.95)], 2),
            "max": round(max(samples), 2)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lg-review-bench-") as scratch:
        store = RunStore(Path(scratch) / "state")
        gates(store)
        firsts = [asyncio.run(first_paint_of_big_card(store)) for _ in range(5)]
        report = asyncio.run(measure(store))
    report["first_paint_ms"] = round(statistics.median(f["first_paint_ms"] for f in firsts), 2)
    report["first_paint_ms_max"] = round(max(f["first_paint_ms"] for f in firsts), 2)
    report["start_to_first_paint_ms"] = round(statistics.median(f["start_to_first_paint_ms"] for f in firsts), 2)
    paint = report["first_paint_ms"] + report["frame_output_ms"]
    step = report["scroll_step_ms"]["p95"] + report["frame_output_ms"]  # 19 steps in 20 within the target
    report["targets"] = {
        "first_paint_ms": {"measured_with_output": round(paint, 2), "target": TARGETS["first_paint_ms"],
                           "met": paint <= TARGETS["first_paint_ms"]},
        "scroll_step_ms": {"measured_with_output": round(step, 2), "target": TARGETS["scroll_step_ms"],
                           "met": step <= TARGETS["scroll_step_ms"]},
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
