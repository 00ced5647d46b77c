"""How far the projected pages can be trusted, from measured runs only: the cost model's held-out
error per cell, the compute rule's error across models (the family rule beside the per-layer rule
it replaced), and the whole procedure run with the calibration GPU's parameters in place of the
A100's on a run that was measured but not fitted on. harness/predict/project.py prints them."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from harness.compute.modes import MODES
from harness.compute.phase import PHASES
from harness.predict import costmodel as cm
from harness.predict import plantestbed as tb

CELLS = tuple((phase, mode) for phase in PHASES for mode in MODES)
RULE_TARGET = 0.20      # issue 27: a compute rule that misses another model by more than this is replaced
CHECK_TARGET = 0.15     # issue 27: the procedure on the measured 8B at 25 Gbit/s, naive and local decode
CHECK_CELLS = (("decode", "naive"), ("decode", "local"))


@dataclass(frozen=True)
class Calibration:
    """One calibration run: its JSON, its cells and the components fitted on them."""
    path: str
    points: list
    components: cm.Components

    @property
    def name(self) -> str:
        return Path(self.path).parent.name

    @property
    def key(self) -> str:
        return self.points[0].key

    @property
    def family(self) -> str:
        return cm.family_of(self.points[0].model)


def calibration(path: str) -> Calibration:
    points = cm.load_points(path)
    return Calibration(str(path), points, cm.fit(points))


def references(calibs: list[Calibration]) -> list[cm.Reference]:
    return [r for c in calibs for r in cm.references(c.components, c.path)]


def _local(points: list[cm.Point]) -> list[cm.Point]:
    return [p for p in points if not MODES[p.mode].remote]


# --- the cost model held out: another run's cells, its compute from its own local cells -----------------

def with_own_compute(c: cm.Components, points: list[cm.Point]) -> cm.Components:
    """c, with the compute of the points' model fitted on their own local cells."""
    own = cm.fit(_local(points))
    return replace(c, compute=c.compute | own.compute, shapes=c.shapes | own.shapes, refs=c.refs | own.refs)


def held_out(primary: Calibration, other: Calibration) -> cm.Evaluation:
    """primary's components predicting other's cells; only compute comes from other (its local cells)."""
    return cm.evaluate(other.points, _local(other.points), other.points,
                       components=with_own_compute(primary.components, other.points))


# --- the compute rule across models ------------------------------------------------------------------------

RULES = ("per-layer", "family")


def across(a: Calibration, b: Calibration, rule: str) -> cm.Evaluation | None:
    """a's components predicting b's cells, b's compute carried from a's model on the same GPU by
    rule: 'per-layer' (costmodel.scale_compute, the rule before) or 'family' (costmodel.family);
    None where the family rule has no reference of b's family in a."""
    gpu, shape = cm.gpu_of(a.components), b.points[0].shape
    if rule == "per-layer":
        c = tb.per_layer_on(a.components, b.key, shape, gpu)
    elif b.family != a.family:
        return None
    else:
        c = tb.on_testbed(a.components, references([a]), b.key, shape, b.family, gpu)
    return cm.evaluate(b.points, [], b.points, components=c)


def by_cell(ev: cm.Evaluation | None) -> dict:
    """(phase, mode) -> the row of that cell."""
    return {} if ev is None else {(r.point.phase, r.point.mode): r for r in ev.rows}


def worst(evals: dict[str, cm.Evaluation | None], cell: tuple, attr: str) -> tuple[float, str] | None:
    """The signed error of largest magnitude of one cell over named evaluations, and its name."""
    found = [(v, name) for name, ev in evals.items()
             if (r := by_cell(ev).get(cell)) is not None and (v := getattr(r, attr)) is not None]
    return max(found, key=lambda f: abs(f[0])) if found else None


def pairs(calibs: list[Calibration], same_family: bool) -> list[tuple[Calibration, Calibration]]:
    return [(a, b) for a in calibs for b in calibs if a is not b and (a.family == b.family or not same_family)]


# --- the procedure on a measured run ---------------------------------------------------------------------

@dataclass(frozen=True)
class ProcedureCheck:
    run: Calibration
    family: cm.Evaluation       # the procedure as the pages run it
    per_layer: cm.Evaluation    # the procedure before the family rule
    link: cm.Link

    def error(self, cell: tuple) -> float:
        return by_cell(self.family)[cell].latency_error

    def misses(self) -> list[tuple]:
        return [cell for cell in CHECK_CELLS if abs(self.error(cell)) > CHECK_TARGET]


def check_link(run: Calibration) -> cm.Link:
    """The run's link as the procedure sees a NIC: the NIC rule's goodput at the rate it was shaped to;
    packets counted as on the calibration's veths (the run's link is a veth too)."""
    link = run.points[0].link
    if not link.nominal_gbps:
        raise ValueError(f"{run.path}: its link states no rate (unshaped): the NIC rule has no line rate to take")
    return tb.nic_link(link.nominal_gbps, segment_B=None,
                       label=f"veth shaped to {link.nominal_gbps:g} Gbit/s, goodput by the NIC rule")


def procedure_check(primary: Calibration, calibs: list[Calibration], run: Calibration) -> ProcedureCheck:
    """The procedure with run's GPU in place of the A100 and run's link rate in place of the NIC's,
    predicting run's cells from fits that exclude it."""
    if any(Path(c.path).resolve() == Path(run.path).resolve() for c in calibs):
        raise ValueError(f"{run.path}: the check run is among the calibrations: the check must exclude it")
    gpu, shape, link = cm.gpu_of(run.components), run.points[0].shape, check_link(run)
    refs = references(calibs)
    points = [replace(p, link=link) for p in run.points]
    family = tb.on_testbed(primary.components, refs, run.key, shape, run.family, gpu)
    before = tb.per_layer_on(primary.components, run.key, shape, gpu)
    return ProcedureCheck(run, cm.evaluate(points, [], points, components=family),
                          cm.evaluate(points, [], points, components=before), link)


def largest_gap(row: cm.EvalRow) -> str:
    """The time part where prediction and measurement differ most (seconds), from the run's own
    parts: compute, wire, the naive worker's load and reply, and the rest (calls, round)."""
    m, parts = row.point.measured, row.prediction.parts
    pairs_s = {"compute": (parts["compute"], m.compute_s), "wire": (parts["wire"] + parts["rtt"], m.wire_s),
               "load (h2d)": (parts["load"], m.load_s), "reply (d2h)": (parts["d2h"], m.d2h_s)}
    pairs_s = {k: v for k, v in pairs_s.items() if v[1] is not None}
    pairs_s["calls and the rest"] = (row.prediction.latency_s - sum(p for p, _ in pairs_s.values()),
                                     m.latency_s - sum(v for _, v in pairs_s.values()))
    part, (pred, meas) = max(pairs_s.items(), key=lambda kv: abs(kv[1][0] - kv[1][1]))
    return f"{part}: predicted {pred:.4f} s, measured {meas:.4f} s"


# --- every check, once for all pages -------------------------------------------------------------------

@dataclass(frozen=True)
class Checks:
    primary: Calibration
    calibs: list                # every Calibration, the primary first
    held_out: dict              # other calibration's name -> Evaluation (held_out)
    rules: dict                 # rule -> {"a → b": Evaluation or None} over every pair
    procedure: ProcedureCheck | None

    @property
    def refs(self) -> list[cm.Reference]:
        """Every calibration's model as a reference of the family rule: what the pages carry compute from."""
        return references(self.calibs)

    def same_family(self, rule: str, same: bool = True) -> dict:
        """The rule's evaluations over pairs of one family (same=False: of two families)."""
        names = {f"{a.name} → {b.name}" for a, b in pairs(self.calibs, same_family=True)}
        return {k: v for k, v in self.rules[rule].items() if (k in names) == same}

    def worst_rule(self, rule: str, same: bool = True) -> float | None:
        """The rule's largest |latency error| over every cell of those pairs; None: not applied."""
        return max((abs(r.latency_error) for ev in self.same_family(rule, same).values() if ev for r in ev.rows),
                   default=None)


def checks(calibs: list[Calibration], run: Calibration | None) -> Checks:
    primary = calibs[0]
    rules = {rule: {f"{a.name} → {b.name}": across(a, b, rule) for a, b in pairs(calibs, same_family=False)}
             for rule in RULES}
    return Checks(primary, calibs, {c.name: held_out(primary, c) for c in calibs[1:]}, rules,
                  procedure_check(primary, calibs, run) if run else None)
