"""GET /level (what runs and why) and PUT /level (operator policy, token required), per model."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field, model_validator

from controller.policy import Decision, OperatorPolicy
from server.levels import Audit
from server.routes.deps import DaemonDep, OperatorDep, identify
from server.served import ServedModel

router = APIRouter(tags=["level"])
log = logging.getLogger("lcs.server")
ModelName = Annotated[str, PathParam(examples=["digits"], max_length=64)]
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {s: {} for s in (400, 401, 403, 404, 422)}


class LevelPolicy(BaseModel):
    """Fixed: give exactly one of gamma / alpha. Auto: optional bounds and latency target."""

    mode: Literal["fixed", "auto"]
    gamma: float | None = None
    alpha: float | None = Field(None, ge=0, le=1)
    min_gamma: float | None = None
    max_gamma: float | None = None
    min_alpha: float | None = Field(None, ge=0, le=1)
    max_alpha: float | None = Field(None, ge=0, le=1)
    latency_target_ms: float | None = Field(None, gt=0, le=60_000)
    objective: Literal["share", "latency"] | None = Field(
        None, description="auto: 'share' (a good neighbour's CPU) or 'latency' (the target only)"
    )
    priority: float | None = Field(None, ge=0, le=1e6, description="weight across models")
    precision: Literal["fp32", "int8"] | None = Field(
        None,
        description="fixed: the precision at that width; int8 needs tier 2 with LCS_TIER2_INT8=1"
        " and is served once tier 2 has admitted the width's variant (fp32 until then)",
    )
    reason: str = Field("", max_length=200, description="why, for the log")

    @model_validator(mode="after")
    def _consistent(self) -> LevelPolicy:
        if self.mode == "fixed" and (self.gamma is None) == (self.alpha is None):
            raise ValueError("mode 'fixed' needs exactly one of 'gamma' or 'alpha'")
        if self.mode == "auto" and (self.gamma is not None or self.alpha is not None):
            raise ValueError("mode 'auto' takes bounds (min_/max_gamma or _alpha), not a level")
        if self.mode == "auto" and self.precision is not None:
            raise ValueError("mode 'auto' chooses the precision itself; 'precision' is for fixed")
        return self


@router.get("/level", responses={404: {}})
async def get_level(request: Request, d: DaemonDep) -> dict[str, Any]:
    """The default model's level, policy, profile and the models served."""
    model = d.registry.get(None)
    return describe(model, identify(request, d) is not None, _decision(d, model))


@router.get("/models/{name}/level", responses={404: {}})
async def get_model_level(request: Request, d: DaemonDep, name: ModelName) -> dict[str, Any]:
    model = d.registry.get(name)
    return describe(model, identify(request, d) is not None, _decision(d, model))


@router.put("/level", responses=WRITE_ERRORS)
async def put_level(body: LevelPolicy, d: DaemonDep, who: OperatorDep) -> dict[str, Any]:
    return await _put(d, None, body, who)


@router.put("/models/{name}/level", responses=WRITE_ERRORS)
async def put_model_level(
    body: LevelPolicy, d: DaemonDep, name: ModelName, who: OperatorDep
) -> dict[str, Any]:
    return await _put(d, name, body, who)


async def _put(d: DaemonDep, name: str | None, body: LevelPolicy, who: str) -> dict[str, Any]:
    model = d.registry.get(name)
    s = d.settings
    if body.precision == "int8" and not (s.tier2_enabled and s.tier2_int8):
        raise HTTPException(
            422, "precision 'int8' needs tier 2 with int8 variants on (LCS_TIER2_INT8=1)"
        )
    try:
        policy = to_operator_policy(model, body, s.latency_target_ms / 1e3, s.controller_objective)
    except ValueError as e:  # the policy record's own checks
        raise HTTPException(422, str(e)) from None
    log.info(
        "operator policy",
        extra={"model": model.name, "who": who, "why": body.reason, **_fields(policy)},
    )
    await model.level.set_policy(policy, Audit(who, body.reason))
    if d.controller is not None:
        d.controller.wake()
    return describe(model, operator=True, decision=_decision(d, model))


def to_operator_policy(
    model: ServedModel, body: LevelPolicy, target_s: float, objective: str
) -> OperatorPolicy:
    """γ and α bounds both become α bounds (α is "higher = more accurate" in every family)."""
    calc = model.level.calc

    def alpha_of(gamma: float | None, name: str) -> float | None:
        if gamma is None:
            return None
        try:
            return calc.alpha(gamma)
        except ValueError:
            lo, hi = calc.gamma_range
            raise HTTPException(
                422, f"{name}={gamma} is outside this model's γ range [{lo}, {hi}] ({calc.family})"
            ) from None

    def check_alpha(a: float | None, name: str) -> float | None:
        if a is not None and not calc.alpha_min - 1e-9 <= a <= calc.alpha_max + 1e-9:
            raise HTTPException(
                422,
                f"{name}={a} is outside this model's α range [{calc.alpha_min}, {calc.alpha_max}]",
            )
        return a

    if body.latency_target_ms is not None:
        target_s = body.latency_target_ms / 1e3
    common = OperatorPolicy(
        latency_target_s=target_s,
        objective=body.objective or objective,
        priority=1.0 if body.priority is None else body.priority,
    )
    if body.mode == "fixed":
        alpha = check_alpha(body.alpha, "alpha")
        if alpha is None:
            alpha = alpha_of(body.gamma, "gamma")
        assert alpha is not None  # the model validator asked for one of them
        precision = body.precision or "fp32"
        return replace(common, mode="fixed", alpha=calc.clamp(alpha), precision=precision)
    lo = check_alpha(body.min_alpha, "min_alpha")
    hi = check_alpha(body.max_alpha, "max_alpha")
    g_lo, g_hi = alpha_of(body.min_gamma, "min_gamma"), alpha_of(body.max_gamma, "max_gamma")
    if calc.gamma(calc.alpha_max) < calc.gamma(calc.alpha_min):  # γ falls as α rises
        g_lo, g_hi = g_hi, g_lo
    lo = g_lo if g_lo is not None else lo
    hi = g_hi if g_hi is not None else hi
    if lo is not None and hi is not None and lo > hi:
        raise HTTPException(422, "the lower bound is above the upper bound")
    return replace(common, min_alpha=lo, max_alpha=hi)


def _decision(d: DaemonDep, model: ServedModel) -> Decision | None:
    return None if d.controller is None else d.controller.latest_decisions.get(model.name)


def describe(
    model: ServedModel, operator: bool = False, decision: Decision | None = None
) -> dict[str, Any]:
    """What runs and why. Who set the policy is shown in full to an operator only; anyone
    else sees how (token or loopback), not from where."""
    level, change, calc, policy = (
        model.level.current,
        model.level.last_change,
        model.level.calc,
        model.level.policy,
    )
    audit = model.level.audit
    tier2 = model.tier2
    return {
        "model": model.identity(),
        **level.describe(),
        "tier": model.service.tier(),
        "precision": model.service.precision(),  # what serves now: int8 once admitted
        "tier2": None if tier2 is None else tier2.describe(),
        "policy": {
            **_fields(policy),
            "set_by": audit.who if operator else audit.who.split(":")[0],
            **({"reason": audit.why} if operator and audit.why else {}),
        },
        "last_change": {
            "alpha": change.alpha,
            "gamma": change.gamma,
            "precision": change.precision,
            "reason": change.reason,
            "at": change.at,
        },
        "range": {"alpha": [calc.alpha_min, calc.alpha_max], "gamma": list(calc.gamma_range)},
        "latency_target_ms": 1e3 * policy.latency_target_s,
        # The controller's latest decision for this model: where it wants α, why, and what
        # it predicts there (CPU demand in cores, request latency).
        "controller": None
        if decision is None
        else {
            "alpha": decision.alpha,
            "precision": decision.precision,
            "reason": decision.reason,
            "demand_cores": decision.demand_cores,
            "latency_ms": _ms(decision.latency_s),
        },
        "profile": [
            {
                "alpha": p.alpha,
                "gamma": p.gamma,
                "latency_ms": 1e3 * p.latency_s,  # tier 1, measured at load
                "tier2_latency_ms": _ms(tier2.latency(p.alpha) if tier2 else None),
                "accuracy": p.accuracy,
            }
            for p in model.profile
        ],
        # The (width, int8) points tier 2 admitted: its session's latency, held-out accuracy.
        "profile_int8": [
            {
                "alpha": p.alpha,
                "gamma": p.gamma,
                "latency_ms": 1e3 * p.latency_s,
                "accuracy": p.accuracy,
            }
            for p in model.service.profile.variants
            if p.precision == "int8"
        ],
    }


def _fields(policy: OperatorPolicy) -> dict[str, Any]:
    return {k: v for k, v in policy.__dict__.items() if v is not None}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds
