"""Entrants beside a family: classifiers dawnpipe did not train (``dawnpipe import``), judged on the same axes.

An entrant's run folder holds the import's manifest (``runs.import``) and an eval.json like a family member's. Its
rows pool over its seeds (runs sharing the entrant's name) into points labelled ``<entrant> <tta> @ <backend>
<precision>``. Two questions are answered per TTA configuration of an entrant, each a paired margin in which every
test image counts once:

- what its views buy: the configuration against the same entrant's single view on the same backend and precision;
- what a bigger network buys: against the family's cheapest single-view network that costs at least as many FLOPs
  per image (or, if none does, the family's most expensive), on the family's backend. FLOPs are the machine-free
  cost, so this pairing crosses backends; each row names both.

Latency pairs only rows timed in one session (costs.points pairs by round there, else compares two samples of
rounds), so an entrant timed on another machine than the family gets no latency margin here. Seeds of an entrant
and of the family pair by value; they are labels of independent trainings of different recipes, so a pairing says
which it covered and the seed spread stays beside the image interval.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import sha256_file
from dawnpipe.common.manifest import MANIFEST_NAME, read_manifest
from dawnpipe.costs.family import backend_label, pool_point, refuse_repeats
from dawnpipe.costs.points import Point, cheapest_at_least, compare, reference_rows, timed_with


@dataclass(frozen=True)
class Entrant:
    """One imported model's run folder with its eval rows."""

    path: Path
    name: str  # the entrant (shared by its seeds)
    seed: int
    data_sha256: str
    classes: tuple[str, ...]
    rows: list[dict[str, Any]]
    record: dict[str, Any]  # the import's record: foreign file and sha256, contract, class order

    @property
    def test_images(self) -> set[str]:
        """The sha256 of the test images its rows were scored on."""
        return {row["test_images_sha256"] for row in self.rows if row.get("test_images_sha256")}


def is_entrant(run_dir: str | Path) -> bool:
    """True for a folder ``dawnpipe import`` made (its manifest records an import and no training)."""
    from dawnpipe.export.entrant import imported_run

    return imported_run(run_dir) is not None


def load_entrant(run_dir: str | Path) -> Entrant:
    """Read and check one entrant's manifest and eval.json (the eval.json its manifest recorded, rows of artifacts
    it lists), as costs.family.load_run checks a member's."""
    from dawnpipe.infer.eval_file import EVAL_NAME, read_eval

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    record = manifest["runs"]["import"]
    path = run_dir / EVAL_NAME
    if not path.is_file():
        raise DawnpipeError(
            f"{run_dir} has no eval results ({EVAL_NAME})",
            f"run `dawnpipe eval {run_dir} --data DATA --tta all` first",
        )
    if manifest.get("artifacts", {}).get(EVAL_NAME, {}).get("sha256") != sha256_file(path):
        raise DawnpipeError(
            f"{path} is not the eval.json that {run_dir}/{MANIFEST_NAME} recorded (sha256 differs or is missing)",
            "rerun `dawnpipe eval` in this run folder instead of copying results in",
        )
    known = {e.get("sha256") for e in manifest.get("artifacts", {}).values()}
    rows = read_eval(path)["rows"]
    for row in rows:
        if row.get("artifact_sha256") not in known or row.get("run_id") not in (None, record.get("run_id")):
            raise DawnpipeError(
                f"{path}: a row describes {row.get('artifact')}, which {run_dir}/{MANIFEST_NAME} does not list",
                "evaluate the artifacts of this import, in its run folder",
            )
    entrant = record.get("entrant") or {}
    data = record.get("data") or {}
    return Entrant(
        run_dir,
        str(entrant.get("entrant") or entrant.get("name") or run_dir.name),
        int(entrant.get("seed", 0)),
        str(data.get("sha256")),
        tuple(data.get("classes", [])),
        rows,
        entrant,
    )


def entrant_points(entrants: list[Entrant]) -> list[Point]:
    """Each entrant's rows pooled over its seeds per backend, precision and TTA mode (width 0: not a member of the
    width family; the label carries the entrant's name)."""
    refuse_repeats(entrants, lambda e: (e.name, e.seed),
                   lambda e: f"the same entrant and seed ({e.name}, seed {e.seed})",
                   "pass each once, or import the second with its own --seed")  # fmt: skip
    groups: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
    for entrant in entrants:
        for row in entrant.rows:
            groups.setdefault((entrant.name, backend_label(row), row["precision"], row["tta"]), []).append(
                (entrant.seed, row)
            )
    points = []
    for (name, backend, precision, tta), members in sorted(groups.items()):
        members.sort(key=lambda m: m[0])
        point = pool_point(0.0, backend, precision, tta, members)
        points.append(replace(point, label=f"{name} {tta} @ {backend} {precision}"))
    return points


def check_beside_family(
    entrants: list[Entrant], images: set[str], classes: tuple[str, ...], models: frozenset[str] = frozenset()
) -> None:
    """Entrants are judged on the family's test images (same order) and classes, or not at all; and under a name of
    their own: an entrant named like a family network (``w1``) would share its labels in every table and margin."""
    for entrant in entrants:
        if entrant.name in models:
            raise DawnpipeError(
                f"{entrant.path} is the entrant {entrant.name!r}, the name of the family's width-"
                f"{entrant.name[1:]} network in this report",
                f"import it again with another --entrant (e.g. --entrant {entrant.name}-entrant)",
            )
        if len(entrant.test_images) != 1:
            raise DawnpipeError(
                f"{entrant.path}'s eval rows were scored on {len(entrant.test_images)} test sets",
                "re-evaluate it on one test set (the family's data, no --test-limit difference)",
            )
        if images and entrant.test_images != images:
            raise DawnpipeError(
                f"{entrant.path} was scored on other test images than the family (sha256 "
                f"{next(iter(entrant.test_images))[:12]} vs {next(iter(images))[:12]})",
                "evaluate the entrant on the family's data and test limit",
            )
        if classes and entrant.classes and entrant.classes != classes:
            raise DawnpipeError(
                f"{entrant.path} scores classes {list(entrant.classes)}, the family {list(classes)}",
                "import the entrant with the family's data",
            )


def entrant_margins(points: list[Point], family: list[Point]) -> list[dict[str, Any]]:
    """Per entrant TTA configuration: what its views buy (against its own single view) and what a bigger network
    buys (against the family's network nearest in FLOPs at or above it), each a paired accuracy margin."""
    rows = []
    for p in points:
        name = p.model
        plain = next(
            (q for q in points if not q.uses_tta and q.model == name
             and (q.backend, q.precision) == (p.backend, p.precision)),
            None,
        )  # fmt: skip
        rival, costs_more = _family_rival(p, family)
        if not p.uses_tta and rival is None:
            continue
        rows.append(
            {
                "entrant": name,
                "configuration": p.label,
                "gflops": p.gflops_per_image,
                "views_per_image": p.views_per_image,
                "plain": plain.label if plain is not None and p.uses_tta else None,
                "views_margin": compare(p, plain, "accuracy") if plain is not None and p.uses_tta else None,
                "network": rival.label if rival is not None else None,
                "network_gflops": rival.gflops_per_image if rival is not None else None,
                "network_costs_at_least_as_much": costs_more,
                "network_margin": compare(p, rival, "accuracy") if rival is not None else None,
                **_latency_rival(p, family),
            }
        )
    return rows


def _latency_rival(p: Point, family: list[Point]) -> dict[str, Any]:
    """The family's fastest single-view network at least as slow as ``p`` at batch 1, among the rows timed in one
    session with ``p`` on its backend and precision (latency is the machine's: only rows timed together compare);
    its paired accuracy margin, or why there is none."""
    timed = [q for q in timed_with([p], family) if not q.uses_tta]
    if p.latency_ms is None or not timed:
        return {"latency_network": None, "latency_note": "not timed in one session with the family's networks"}
    rival, slower = cheapest_at_least(p.latency_ms, timed, lambda q: q.latency_ms)
    return {
        "latency_network": rival.label,
        "latency_ms": p.latency_ms,
        "latency_network_ms": rival.latency_ms,
        "latency_network_at_least_as_slow": slower,
        "latency_margin": compare(p, rival, "accuracy"),
    }


def _family_rival(p: Point, family: list[Point]) -> tuple[Point | None, bool]:
    """The family's single-view network to set against ``p``: on ``p``'s backend and precision where the family has
    rows there, else on the family's reference rows (points.reference_rows: its most complete backend, fp32 first);
    the cheapest costing at least ``p``'s FLOPs, else the most expensive."""
    plain = [q for q in family if not q.uses_tta]
    same = [q for q in plain if (q.backend, q.precision) == (p.backend, p.precision)] or reference_rows(plain)
    return cheapest_at_least(p.gflops_per_image, same, lambda q: q.gflops_per_image)


def entrant_section(rows: list[dict[str, Any]], points: list[Point]) -> str:
    """report.md's section on the entrants: every entrant point, then what its views and a bigger network buy."""
    from dawnpipe.costs.report_markdown import interval_text

    if not points:
        return ""
    lines = [
        "",
        "## Entrants (models dawnpipe did not train)",
        "",
        "Each entrant's rows pooled over its seeds; accuracy intervals count each test image once. `views buy`: a TTA "
        "configuration against the same entrant's single view (same backend and precision). `a bigger network "
        "buys`: against the family's cheapest single-view network costing at least as many FLOPs per image, on the "
        "family's backend (FLOPs are machine-free, so the pairing crosses backends; each side is named). Seeds of an "
        "entrant and the family pair by value (labels of independent trainings).",
        "",
        "| entrant point | seeds | acc % (95% CI) | GFLOP/img | views |",
        "|---|---|---|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p.label} | {', '.join(map(str, p.seeds))} | {100 * p.accuracy:.2f} ({100 * p.ci95[0]:.2f}-"
            f"{100 * p.ci95[1]:.2f}) | {p.gflops_per_image:.3f} | {p.views_per_image:.2f} |"
        )
    lines += [
        "",
        "| entrant configuration | GFLOP/img | views buy (vs its single view) | vs family network | GFLOP/img | "
        "a bigger network buys: configuration minus network |",
        "|---|---:|---|---|---:|---|",
    ]
    for r in rows:
        note = "" if r["network_costs_at_least_as_much"] else " (cheaper: no bigger network in the family)"
        network_gflops = "-" if r["network_gflops"] is None else f"{r['network_gflops']:.3f}"
        lines.append(
            f"| {r['configuration']} | {r['gflops']:.3f} | {interval_text(r['views_margin'])} | "
            f"{r['network'] or '-'}{note} | {network_gflops} | {interval_text(r['network_margin'])} |"
        )
    timed = [r for r in rows if r.get("latency_network")]
    lines += ["", "At equal measured latency (batch-1 mean, rows timed in one session with the family's networks):", ""]
    if not timed:
        lines.append("No entrant row was timed in one session with the family's networks: no latency pairing.")
    for r in timed:
        lines.append(
            f"- {r['configuration']} ({r['latency_ms']:.3f} ms/img) vs {r['latency_network']} "
            f"({r['latency_network_ms']:.3f} ms/img"
            + ("" if r["latency_network_at_least_as_slow"] else ", faster: no slower network in the session")
            + f"): {interval_text(r['latency_margin'])}"
        )
    return "\n".join(lines) + "\n"
