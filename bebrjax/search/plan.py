"""The scoring plan: which query models score which document versions, calibrated and fused.

A plan turns a mixed-version index into a version-aware one
(`bebrjax.search.fusion`): for each document version v it lists the query
models that score it (terms), each term's calibration (an affine map of the
cosine of the query and document codes) and weight, and an affine map of
their weighted sum:

    score_v(d) = A_v * sum_t w_t * (a_t * cos_t(d) + b_t) + B_v

Calibrations, fitted on training pairs (query i's relevant document is doc
i; every other doc of the sample is a negative), chosen by name
(`CALIBRATIONS`):

  * "negatives": a z-score of the negatives, (cos - mean) / std: a
    document's score says how far it stands above a random one;
  * "margin": (cos - mean_neg) / (mean_pos - mean_neg): 0 for a typical
    negative, 1 for a typical positive.

The weighted sum of a version is calibrated again the same way (A_v, B_v),
so that every version's fused score speaks the same scale; a version scored
by one model keeps its term's calibration (A = 1, B = 0).
Measured on FOLDOC, see docs/compatible_codes.md.

On disk a plan is one JSON file:

    {"format": "bebrjax.ScoringPlan", "version": 1, "m": 384,
     "calibration": "negatives",
     "models": [{"name": "old", "workdir": "/runs/W/old", "step": 170, "m": 384, "u": 1}, ...],
     "versions": [{"name": "old", "encoder": "old",
                   "terms": [{"model": "old", "weight": 1.0, "scale": a, "shift": b}, ...],
                   "fused": {"scale": A, "shift": B}}, ...],
     "fitted_on": {"source": ..., "pairs": 4000, "seed": 0, ...}}

`m` is the code width every score was measured on (the shared prefix of
the models' codes; a plan searches only an index of that width); a
version's `encoder` is the model whose document codes it holds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bebrjax.errors import PlanError, read_json
from bebrjax.search import codes as codes_lib
from bebrjax.search.fusion import MAX_MODELS, Fusion

FORMAT, VERSION = "bebrjax.ScoringPlan", 1


def _negatives(pos: np.ndarray, neg: tuple[float, float]) -> tuple[float, float]:
    mean, std = neg
    return 1.0 / std, -mean / std


def _margin(pos: np.ndarray, neg: tuple[float, float]) -> tuple[float, float]:
    mean = neg[0]
    gap = float(np.mean(pos)) - mean
    if gap <= 0:
        raise PlanError(f"positives score no higher than negatives (gap {gap:.4g})")
    return 1.0 / gap, -mean / gap


# Name -> (positive scores, (mean, std) of the negatives) -> (scale, shift).
CALIBRATIONS: dict[str, Callable[[np.ndarray, tuple[float, float]], tuple[float, float]]] = {
    "negatives": _negatives,
    "margin": _margin,
}


@dataclasses.dataclass(frozen=True)
class Term:
    """One query model scoring one version: weight * (scale * cos + shift)."""

    model: str
    weight: float
    scale: float
    shift: float


@dataclasses.dataclass(frozen=True)
class VersionPlan:
    """A document version: the model that encoded it, its terms and the fused map."""

    name: str
    encoder: str
    terms: tuple[Term, ...]
    scale: float = 1.0
    shift: float = 0.0


@dataclasses.dataclass(frozen=True)
class ScoringPlan:
    """Query models, the versions they score, calibrations and weights (see the module).

    Attributes:
      models: name -> {"workdir", "step", "m", "u"} of the run that trained it.
      versions: the document versions, in order.
      m: the code width the scores were measured on.
      calibration: the calibration's name (`CALIBRATIONS`).
      fitted_on: what it was fitted on (source, pairs, seed, ...).
    """

    models: dict[str, dict[str, Any]]
    versions: tuple[VersionPlan, ...]
    m: int
    calibration: str = "negatives"
    fitted_on: dict[str, Any] = dataclasses.field(default_factory=dict)

    def fusion(self) -> Fusion:
        """The plan as `Fusion` weights: alpha_{q,v} = A_v w a, beta_v = A_v sum w b + B_v.

        Its models are the query models: those of some term.
        """
        scoring = {t.model for v in self.versions for t in v.terms}
        names = [m for m in self.models if m in scoring]
        alpha = np.zeros((len(names), len(self.versions)))
        beta = np.zeros(len(self.versions))
        for v, version in enumerate(self.versions):
            for t in version.terms:
                alpha[names.index(t.model), v] = version.scale * t.weight * t.scale
                beta[v] += version.scale * t.weight * t.shift
            beta[v] += version.shift
        return Fusion(tuple(names), tuple(v.name for v in self.versions), alpha, beta)

    def only(self, versions: list[str]) -> ScoringPlan:
        """The plan restricted to `versions` (e.g. a gallery not yet backfilled)."""
        unknown = sorted(set(versions) - {v.name for v in self.versions})
        if unknown:
            raise PlanError(f"the plan has no version(s) {unknown}")
        kept = tuple(v for v in self.versions if v.name in versions)
        used = {v.encoder for v in kept} | {t.model for v in kept for t in v.terms}
        models = {name: info for name, info in self.models.items() if name in used}
        return dataclasses.replace(self, models=models, versions=kept)

    def check_index(self, m: int, versions: list[str]) -> None:
        """Raises PlanError unless an index of width m holding `versions` can be searched."""
        if m != self.m:
            raise PlanError(
                f"the plan was fitted on codes of width m={self.m}; the index holds m={m}"
            )
        try:
            self.fusion().aligned(versions, who="the plan")
        except ValueError as e:
            raise PlanError(str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (see the module docstring)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "m": self.m,
            "calibration": self.calibration,
            "models": [{"name": name, **info} for name, info in self.models.items()],
            "versions": [
                {
                    "name": v.name,
                    "encoder": v.encoder,
                    "terms": [dataclasses.asdict(t) for t in v.terms],
                    "fused": {"scale": v.scale, "shift": v.shift},
                }
                for v in self.versions
            ],
            "fitted_on": self.fitted_on,
        }

    def save(self, path: str) -> None:
        """Writes the plan to `path` (JSON) through a temporary file and a rename."""
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".plan-", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def __repr__(self) -> str:
        parts = [f"{v.name}<-{'+'.join(t.model for t in v.terms)}" for v in self.versions]
        return f"ScoringPlan(m={self.m}, {self.calibration}, {', '.join(parts)})"


def from_dict(obj: Any, where: str = "plan") -> ScoringPlan:
    """A plan from its JSON form, checked.

    Raises:
      PlanError: naming `where` and the problem.
    """
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise PlanError(f"{where}: not a scoring plan (format {FORMAT!r})")
    if obj.get("version") != VERSION:
        raise PlanError(f"{where}: plan format version {obj.get('version')}, expected {VERSION}")
    try:
        models = {m["name"]: {k: v for k, v in m.items() if k != "name"} for m in obj["models"]}
        versions = tuple(
            VersionPlan(
                v["name"],
                v["encoder"],
                tuple(Term(**t) for t in v["terms"]),
                float(v["fused"]["scale"]),
                float(v["fused"]["shift"]),
            )
            for v in obj["versions"]
        )
        plan = ScoringPlan(
            models, versions, int(obj["m"]), obj["calibration"], obj.get("fitted_on", {})
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"{where}: malformed plan ({type(e).__name__}: {e})") from None
    _validate(plan, where)
    return plan


def _validate(plan: ScoringPlan, where: str) -> None:
    if plan.calibration not in CALIBRATIONS:
        raise PlanError(
            f"{where}: calibration {plan.calibration!r}; expected one of {sorted(CALIBRATIONS)}"
        )
    if not 1 <= len(plan.models) <= MAX_MODELS:
        raise PlanError(f"{where}: 1 to {MAX_MODELS} query models; got {len(plan.models)}")
    for v in plan.versions:
        unknown = [t.model for t in v.terms if t.model not in plan.models]
        if v.encoder not in plan.models or unknown:
            raise PlanError(
                f"{where}: version {v.name!r} names model(s) the plan lacks: "
                f"{[v.encoder] if v.encoder not in plan.models else unknown}"
            )
        for info in plan.models.values():
            if int(info.get("m", plan.m)) < plan.m:
                raise PlanError(f"{where}: a model's codes are narrower than m={plan.m}")
    try:
        plan.fusion()
    except ValueError as e:
        raise PlanError(f"{where}: {e}") from None


def load(path: str) -> ScoringPlan:
    """Reads and checks the plan at `path`.

    Raises:
      PlanError: naming the file when it is missing, not JSON or not a plan.
    """
    if not os.path.isfile(path):
        raise PlanError(f"{path}: no such scoring plan")
    return from_dict(read_json(path, PlanError), path)


def _cosines(query_planes: np.ndarray, doc_planes: np.ndarray, m: int) -> np.ndarray:
    """Cosines [n, n] of the codes' first m coordinates, as a search scores them."""

    def unit(planes):
        x = codes_lib.decode(np.ascontiguousarray(planes[..., :m])).astype(np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return unit(query_planes) @ unit(doc_planes).T


def _calibrate(scores: np.ndarray, calibration: str) -> tuple[float, float]:
    """(scale, shift) of `calibration` fitted on a pairs' score matrix (diagonal positive)."""
    n = len(scores)
    pos = np.diag(scores)
    total, squares = scores.sum() - pos.sum(), (scores**2).sum() - (pos**2).sum()
    count = n * n - n
    mean = total / count
    std = float(np.sqrt(max(squares / count - mean**2, 0.0)))
    if not std > 0:
        raise PlanError("the negatives' scores do not vary: nothing to calibrate")
    return CALIBRATIONS[calibration](pos, (float(mean), std))


def fit(
    codes: Mapping[str, tuple[np.ndarray, np.ndarray]],
    versions: Mapping[str, tuple[str, Mapping[str, float]]],
    models: Mapping[str, dict[str, Any]],
    *,
    calibration: str = "negatives",
    fitted_on: dict[str, Any] | None = None,
) -> ScoringPlan:
    """Fits a plan's calibrations on the codes of training pairs.

    Args:
      codes: model -> (query planes, doc planes) [n, u+1, m_model] of the same
        n pairs (row i of every array is pair i).
      versions: version name -> (its encoder model, {query model: weight}).
      models: model -> {"workdir", "step", "m", "u"} recorded in the plan.
      calibration: a key of `CALIBRATIONS`.
      fitted_on: recorded in the plan.

    Returns:
      The plan, at the narrowest width of the models' codes.

    Raises:
      PlanError: on an unknown calibration or model, pairs that disagree,
        or scores that cannot be calibrated.
    """
    if calibration not in CALIBRATIONS:
        raise PlanError(f"calibration {calibration!r}: expected one of {sorted(CALIBRATIONS)}")
    counts = {name: (len(q), len(d)) for name, (q, d) in codes.items()}
    if len({c for pair in counts.values() for c in pair}) != 1:
        raise PlanError(f"every model's codes must be of the same pairs; counts: {counts}")
    named = {enc for enc, _ in versions.values()} | {q for _, w in versions.values() for q in w}
    unknown = sorted(named - set(codes))
    if unknown:
        raise PlanError(f"no codes for model(s) {unknown} (codes of {sorted(codes)})")
    m = min(q.shape[-1] for q, d in codes.values())
    fitted = []
    for name, (encoder, weights) in versions.items():
        docs = codes[encoder][1]
        terms, fused = [], 0.0
        for model, weight in weights.items():
            cos = _cosines(codes[model][0], docs, m)
            scale, shift = _calibrate(cos, calibration)
            terms.append(Term(model, float(weight), scale, shift))
            fused = fused + weight * (scale * cos + shift)
        big, small = _calibrate(fused, calibration) if len(terms) > 1 else (1.0, 0.0)
        fitted.append(VersionPlan(name, encoder, tuple(terms), big, small))
    plan = ScoringPlan(dict(models), tuple(fitted), m, calibration, dict(fitted_on or {}))
    _validate(plan, "the fitted plan")
    return plan
