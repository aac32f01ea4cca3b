"""Every entry under the rules: the family's networks and the imported entrants ranked together, as a benchmark ranks
the entries it receives.

The family's own decisions (costs.report) rank its networks per backend and precision. With entrants beside it, each
rule also ranks every entry, without ever comparing what was not measured alike:

- a rule that reads no clock (``no-tta`` limits views, ``total-flops`` FLOPs per image; both rank by accuracy) ranks
  each network on its reference rows, the backend and precision where it has the most configurations (fp32 first,
  then by name): the family on its main backend, each entrant on its own. One decision across backends; every point
  names the backend and precision it ran on, and its margin pairs the same test images as any other.
- a rule that reads latency (``dawnbench`` ranks by it, ``latency`` limits it) ranks only rows timed in one session:
  per backend and precision of the family, its rows there and the entrant rows that share a timing session with
  them. An entrant with no such rows is named as left out, never ranked on a clock it did not share; where no
  entrant shares a session, the family's own decision stands alone and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dawnpipe.costs.points import Point, reference_rows, reference_rows_by_model, timed_with
from dawnpipe.costs.rules import Decision, Rule, decide

_CLOCK_FREE = ("views", "gflops")  # what a rule limits when it reads no clock


@dataclass
class EntryDecision:
    """One rule's ranking of every entry it can rank fairly: the decision, the rows ranked, who was left out and why."""

    decision: Decision
    scope: str  # which rows were ranked together
    entries: list[str]  # the labels ranked (what recheck decides again)
    left_out: list[str] = field(default_factory=list)  # "<entrant>: why", for entrants not ranked

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for report.json."""
        return {**self.decision.to_dict(), "scope": self.scope, "entries": self.entries, "left_out": self.left_out}


def entry_decisions(
    rules: list[Rule], family: list[Point], entrants: list[Point]
) -> tuple[list[EntryDecision], list[str]]:
    """Each rule over the family's networks and the entrants together (see the module's docstring), and a note for
    each latency rule no entrant could join. Nothing when there are no entrants."""
    if not entrants:
        return [], []
    models = sorted({p.model for p in entrants})
    pool = reference_rows(family) + [p for rows in reference_rows_by_model(entrants).values() for p in rows]
    decisions, notes = [], []
    for rule in rules:
        if rule.limits in _CLOCK_FREE and rule.ranks_by == "accuracy":
            shown = sorted({f"{p.model} on {p.backend} {p.precision}" for p in pool})
            scope = "each network on its reference rows: " + ", ".join(shown)
            decisions.append(EntryDecision(decide(rule, pool), scope, [p.label for p in pool]))
            continue
        joined_any = False
        for backend, precision in sorted({(p.backend, p.precision) for p in family}):
            here = [p for p in family if (p.backend, p.precision) == (backend, precision)]
            joined = timed_with(here, entrants)
            if not joined:
                continue
            joined_any = True
            left = [
                f"{m}: not timed in one session with the family on {backend} {precision}"
                for m in models
                if m not in {p.model for p in joined}
            ]
            scope = f"rows timed in one session on {backend} {precision}"
            entries = [p.label for p in here + joined]
            decisions.append(EntryDecision(decide(rule, here + joined), scope, entries, left))
        if not joined_any:
            notes.append(
                f"{rule.name}: no entrant was timed in one session with the family's rows (latency is the machine's), "
                "so this rule ranks the family alone (its decisions above)"
            )
    return decisions, notes


def entry_section(decisions: list[EntryDecision], notes: list[str]) -> str:
    """report.md's section on every entry under the rules; empty without entrants."""
    from dawnpipe.costs.report_markdown import interval_text

    if not decisions and not notes:
        return ""
    lines = [
        "",
        "## Every entry under the rules (the family's networks and the entrants)",
        "",
        "A benchmark ranks every entry it receives. Rules that read no clock (views, FLOPs) rank each network on its "
        "reference rows, the family's and each entrant's own backend, each point naming it; rules that read latency "
        "rank only rows timed in one session. Margins pair the same test images, each counted once.",
        "",
        "| rule | rows ranked | winner | runner-up | margin (95% CI) | does TTA earn its cost? | left out |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in decisions:
        d = e.decision
        winner = d.winner.label if d.winner else "-"
        runner_up = d.runner_up.label if d.runner_up else "-"
        answer = f"{d.tta_answer} {d.lift}".strip()
        left = "; ".join(e.left_out) or "none"
        lines.append(
            f"| {d.rule.name} | {e.scope} | {winner} | {runner_up} | {interval_text(d.margin)} | {answer} | {left} |"
        )
    lines += ["", *(f"- {note}." for note in notes)] if notes else []
    return "\n".join(lines) + "\n"
