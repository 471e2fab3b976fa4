"""GET /level (what runs and why) and PUT /level (operator policy, token required)."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field, model_validator

from server import control
from server.routes.deps import OperatorDep, RuntimeDep
from server.runtime import OperatorPolicy, Runtime

router = APIRouter(tags=["level"])
log = logging.getLogger("lcs.server")


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
    reason: str = Field("", max_length=200, description="why, for the log")

    @model_validator(mode="after")
    def _consistent(self) -> LevelPolicy:
        if self.mode == "fixed" and (self.gamma is None) == (self.alpha is None):
            raise ValueError("mode 'fixed' needs exactly one of 'gamma' or 'alpha'")
        if self.mode == "auto" and (self.gamma is not None or self.alpha is not None):
            raise ValueError("mode 'auto' takes bounds (min_/max_gamma or _alpha), not a level")
        return self


@router.get("/level")
async def get_level(rt: RuntimeDep) -> dict[str, Any]:
    return describe(rt)


@router.put("/level", responses={400: {}, 401: {}, 403: {}, 422: {}})
async def put_level(body: LevelPolicy, rt: RuntimeDep, who: OperatorDep) -> dict[str, Any]:
    policy = to_operator_policy(rt, body, who)
    log.info("operator policy", extra={"who": who, "why": body.reason, **policy.describe()})
    await control.apply_policy(rt, policy)
    return describe(rt)


def to_operator_policy(rt: Runtime, body: LevelPolicy, who: str) -> OperatorPolicy:
    """γ and α bounds both become α bounds (α is "higher = more accurate" in every family)."""
    calc = rt.slot.calc

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

    if body.mode == "fixed":
        alpha = check_alpha(body.alpha, "alpha")
        if alpha is None:
            alpha = alpha_of(body.gamma, "gamma")
        return OperatorPolicy("fixed", alpha=alpha, set_by=who, reason=body.reason)
    lo = check_alpha(body.min_alpha, "min_alpha")
    hi = check_alpha(body.max_alpha, "max_alpha")
    g_lo, g_hi = alpha_of(body.min_gamma, "min_gamma"), alpha_of(body.max_gamma, "max_gamma")
    if calc.gamma(calc.alpha_max) < calc.gamma(calc.alpha_min):  # γ falls as α rises
        g_lo, g_hi = g_hi, g_lo
    lo = g_lo if g_lo is not None else lo
    hi = g_hi if g_hi is not None else hi
    if lo is not None and hi is not None and lo > hi:
        raise HTTPException(422, "the lower bound is above the upper bound")
    target = None if body.latency_target_ms is None else body.latency_target_ms / 1e3
    return OperatorPolicy(
        "auto", min_alpha=lo, max_alpha=hi, latency_target_s=target, set_by=who, reason=body.reason
    )


def describe(rt: Runtime) -> dict[str, Any]:
    level, change, calc = rt.slot.current, rt.slot.last_change, rt.slot.calc
    return {
        **level.describe(),
        "tier": rt.tier(),
        "tier2": None if rt.tier2 is None else rt.tier2.describe(),
        "policy": rt.policy.describe(),
        "last_change": {
            "alpha": change.alpha,
            "gamma": change.gamma,
            "reason": change.reason,
            "at": change.at,
        },
        "range": {"alpha": [calc.alpha_min, calc.alpha_max], "gamma": list(calc.gamma_range)},
        "latency_target_ms": 1e3 * control.latency_target_s(rt),
        "profile": [
            {
                "alpha": p.alpha,
                "gamma": p.gamma,
                "latency_ms": 1e3 * p.latency_s,  # tier 1, measured at start-up
                "tier2_latency_ms": _ms(rt.tier2.latency(p.alpha) if rt.tier2 else None),
                "accuracy": p.accuracy,
            }
            for p in rt.profile
        ],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds
