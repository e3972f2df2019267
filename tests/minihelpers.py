"""The miniature stack as test fixtures: real git upstreams, real clones, real rattler-build builds.

Builds run under one build root for the whole session (a temporary folder), as they would on a
build machine, so two workspaces built at different times can be compared byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stackforge.build import builder
from stackforge.build import plan as plan_
from stackforge.cli import main
from stackforge.core.workspace import Workspace
from stackforge.demo import ministack
from stackforge.sources.checkouts import sync
from stackforge.spec.envs import load_env
from stackforge.spec.manifest import load_manifest


@dataclass
class MiniWs:
    root: Path

    @property
    def ws(self) -> Workspace:
        return Workspace(self.root)

    @property
    def mirror(self) -> Path:
        return self.root / "mirror"

    @property
    def channel(self) -> Path:
        return self.root / "output"

    def run(self, *args: str) -> int:
        return main(["--root", str(self.root), *args])

    def sync(self) -> list:
        return sync(self.ws, load_manifest(self.ws.manifest), mirror=str(self.mirror), quiet=True)

    def plan(self, env: str = "pascal") -> plan_.Plan:
        return plan_.make_plan(self.ws, load_env(self.ws, env))

    def build(self, env: str = "pascal") -> list[builder.Outcome]:
        return builder.run_plan(self.ws, self.plan(env))

    def statuses(self, env: str = "pascal") -> dict[str, str]:
        return {i.name: i.status for i in self.plan(env).items}

    def edit_patch(self, source: str, old: str, new: str) -> Path:
        """Change a line of a patch in the series (its + side), as a developer would."""
        for patch in sorted((self.root / "patches" / source).glob("*.patch")):
            text = patch.read_text()
            if old in text:
                patch.write_text(text.replace(old, new))
                return patch
        raise AssertionError(f"no patch of {source} contains {old!r}")

    def packages(self) -> list[str]:
        return sorted(p.name for p in (self.channel / "linux-64").glob("*.conda"))


def make_mini(root: Path) -> MiniWs:
    ministack.create_workspace(root)
    mini = MiniWs(root)
    mini.sync()
    return mini
