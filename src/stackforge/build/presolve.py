"""Solve before building: every requirement the packages to build will ask for, against the
configured channels, before the first compile.

A wrong package name or a version the channel never had shows up in seconds, naming the package,
the requirement and the recipe file, instead of after hours of compiling what comes before it.
Requirements on packages of the stack itself are left out: the plan builds them (their pins
between each other are checked by the build). Build and host requirements are solved for the
build machine's platform; run requirements for the package's own (with noarch).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from stackforge.build.plan import Plan, PlanItem
from stackforge.build.recipes import spec_name
from stackforge.build.variant import exclude_newer, extra_channels, solve_virtual_packages
from stackforge.core.console import Failure, escape


@dataclass(frozen=True)
class Unsolvable:
    package: str
    kind: str  # build | host | run
    recipe: str
    specs: tuple[str, ...]
    message: str

    def render(self) -> str:
        named = [s for s in self.specs if (spec_name(s) or "") in self.message]
        spec = f" (requirement {', '.join(named)})" if named else ""
        return f"{self.package}: {self.kind} requirements do not solve{spec} in {self.recipe}: {self.message}"


def _specs(item: PlanItem, kind: str, stack: set[str]) -> tuple[str, ...]:
    specs = item.recipe.specs.get(kind, ())
    return tuple(s for s in specs if isinstance(s, str) and spec_name(s) not in stack)


def presolve(plan: Plan, names: list[str] | None = None) -> list[Unsolvable]:
    """Solve the requirements of the plan's packages to build (or `names`); empty when all solve."""
    import rattler

    channels = [rattler.Channel(c) for c in extra_channels(plan.env)]
    stack = set(plan.recipes)
    virtual = solve_virtual_packages(plan.env.cuda_version)
    newer = exclude_newer(plan.env)
    todo = [i for i in plan.items if (i.name in names if names else i.status == "build")]
    problems = []
    for item in todo:
        for kind in ("build", "host", "run"):
            specs = _specs(item, kind, stack)
            if not specs:
                continue
            if not channels:
                problems.append(
                    Unsolvable(item.name, kind, str(item.recipe.file), specs, "no channel to solve against")
                )
                continue
            platforms = ["linux-64", "noarch"] if kind != "run" else [item.subdir, "noarch"]
            try:
                asyncio.run(
                    rattler.solve(
                        channels, specs, platforms=platforms, virtual_packages=virtual, exclude_newer=newer
                    )
                )
            except Exception as exc:  # rattler's solver and fetch errors carry their own explanation
                problems.append(
                    Unsolvable(item.name, kind, str(item.recipe.file), specs, " ".join(str(exc).split()))
                )
    return problems


def require_solvable(plan: Plan) -> None:
    """Stop before the first compile when a requirement cannot be met, naming each."""
    problems = presolve(plan)
    if problems:
        lines = "\n  ".join(escape(p.render()) for p in problems)
        raise Failure(
            f"{len(problems)} requirement set(s) do not solve against {', '.join(extra_channels(plan.env)) or '(no channel)'}; "
            f"nothing was built:\n  {lines}",
            hint="fix the names or versions in the recipe, or the channels (channel_sources in the variant "
            "file); `--no-presolve` skips this check",
        )
