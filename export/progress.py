"""``export publish``: following each target's update from the reports its gateway retains.

Sits on the desk at the end of a publish. A gateway's updater retains a
:class:`~edge_agent.ota.protocol.Report` on ``<prefix>/<machine>/model`` at every step; the
:class:`Tracker` reads them, prints each change of a target's state once ("m1: downloading
40 %", "m1: canary", "m1: active 2026..."), and says when a target is done. A report concerns
this publish when it carries its deployment id, or when it says the machine already runs the
published version (so a machine that has it counts as done, whatever put it there).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TextIO

from pydantic import ValidationError

from edge_agent.ota.protocol import REPORT_SUFFIX, Report

PERCENT = 100
PROGRESS_STEP_PCT = 10  # a download's progress is shown in steps of this many per cent

Outcome = Literal["active", "rejected", "rolled_back", "pending"]
FAILED: tuple[Outcome, ...] = ("rejected", "rolled_back")


@dataclass
class Target:
    machine: str
    report: Report | None = None  # the latest report that concerns this publish
    shown: str | None = None  # the latest line printed for it

    @property
    def outcome(self) -> Outcome:
        r = self.report
        if r is None:
            return "pending"
        if r.state == "active":
            return "active"
        if r.state == "rejected":
            return "rejected"
        if r.state == "rolled_back":
            return "rolled_back"
        return "pending"


def describe(report: Report) -> str:
    """One report as the terminal shows it."""
    if report.state == "downloading" and report.progress is not None and report.progress.total:
        pct = PERCENT * report.progress.bytes // report.progress.total
        return f"downloading {pct // PROGRESS_STEP_PCT * PROGRESS_STEP_PCT} %"
    if report.state == "active":
        return f"active {report.active}"
    if report.state == "rejected":
        return f"rejected: {report.reason or 'no reason given'}"
    if report.state == "rolled_back":
        return f"rolled back to {report.active}: {report.reason or 'no reason given'}"
    return report.state


class Tracker:
    """The targets of one publish and every machine's latest report."""

    def __init__(
        self, prefix: str, deployment_id: str, model_version: str, out: TextIO
    ) -> None:
        self.prefix = prefix
        self.deployment_id = deployment_id
        self.model_version = model_version
        self.out = out
        self.latest: dict[str, Report] = {}  # every machine heard of, relevant or not
        self.targets: dict[str, Target] = {}
        self.group: str | None = None  # follow this group's members as they report
        self._unreadable: set[str] = set()

    # -- reading reports -------------------------------------------------------------------
    def machine_of(self, topic: str) -> str | None:
        head, tail = f"{self.prefix}/", f"/{REPORT_SUFFIX}"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        machine = topic[len(head) : -len(tail)]
        return machine if machine and "/" not in machine else None

    def feed(self, topic: str, payload: bytes) -> None:
        machine = self.machine_of(topic)
        if machine is None or not payload:  # an empty payload clears a retained report
            return
        try:
            report = Report.model_validate_json(payload)
        except ValidationError as exc:
            if machine not in self._unreadable:
                self._unreadable.add(machine)
                first = exc.errors()[0]
                print(
                    f"{machine}: unreadable report on {topic} ({first['loc']}: {first['msg']}); "
                    "is its agent a different version?",
                    file=self.out,
                )
            return
        self.latest[machine] = report
        if self.group is not None and machine not in self.targets and (
            self.group in report.groups or report.deployment_id == self.deployment_id
        ):
            self.watch(machine)
        elif machine in self.targets:
            self._update(self.targets[machine], report)

    def concerns(self, report: Report) -> bool:
        return report.deployment_id == self.deployment_id or (
            report.state == "active" and report.active == self.model_version
        )

    def _update(self, target: Target, report: Report) -> None:
        if not self.concerns(report):
            return
        target.report = report
        line = describe(report)
        if line != target.shown:
            target.shown = line
            print(f"{target.machine}: {line}", file=self.out, flush=True)

    # -- targets ---------------------------------------------------------------------------
    def members(self, group: str) -> list[str]:
        """Machines whose latest report lists ``group``, sorted."""
        return sorted(m for m, r in self.latest.items() if group in r.groups)

    def already_active(self, machine: str) -> bool:
        r = self.latest.get(machine)
        return r is not None and r.state == "active" and r.active == self.model_version

    def watch(self, machine: str) -> Target:
        target = self.targets.setdefault(machine, Target(machine))
        if machine in self.latest:
            self._update(target, self.latest[machine])
        return target

    def follow_group(self, group: str) -> None:
        """Watch the group's known members, and every machine that later reports it."""
        self.group = group
        for m in self.members(group):
            self.watch(m)

    def outcomes(self, machines: Iterable[str]) -> dict[str, Outcome]:
        return {m: self.targets[m].outcome for m in machines if m in self.targets}

    def failed(self, machines: Iterable[str]) -> list[Target]:
        return [self.targets[m] for m, o in self.outcomes(machines).items() if o in FAILED]

    def finished(self, machines: Iterable[str]) -> bool:
        return all(o != "pending" for o in self.outcomes(machines).values())

    # -- the verdict -----------------------------------------------------------------------
    def summary(self, not_sent: list[str], why_stopped: str | None) -> int:
        """Print a line per target and the totals; 0 if every target is active, else 1."""
        counts: dict[str, int] = {}
        rows: list[str] = []
        width = max((len(m) for m in [*self.targets, *not_sent]), default=0)
        for m, t in self.targets.items():
            o = t.outcome
            if o == "pending":
                last = describe(self.latest[m]) if m in self.latest else "no report"
                rows.append(f"  {m:<{width}}  no final answer (last: {last})")
                counts["unfinished"] = counts.get("unfinished", 0) + 1
            else:
                rows.append(f"  {m:<{width}}  {t.shown}")
                counts[o] = counts.get(o, 0) + 1
        for m in not_sent:
            rows.append(f"  {m:<{width}}  not sent")
        if not_sent:
            counts["not sent"] = len(not_sent)
        totals = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items()) or "no targets"
        head = f"summary ({why_stopped}): {totals}" if why_stopped else f"summary: {totals}"
        print("\n".join([head, *rows]), file=self.out, flush=True)
        ok = not not_sent and all(t.outcome == "active" for t in self.targets.values())
        return 0 if ok and why_stopped is None else 1
