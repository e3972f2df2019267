"""The kernel audit's results: one `Result` per kernel x shape x arch, the `Report`, and its table."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from stackforge.core.console import out
from stackforge.cuda.caps import CAPABILITIES, sm
from stackforge.cuda.occupancy import Occupancy, occupancy

STATUSES = ("ok", "ptxas-error", "shared-memory", "compile-error", "load-error", "timeout", "worker-died")
# who reaches a kernel on Pascal/Volta (`Case.reach`), in the words of the report
REACH = {"default": "default", "model": "some models", "option": "a vLLM option",
         "not-default-backend": "never by default (another backend)"}  # fmt: skip
SHORT = {"registers": "regs", "shared-memory": "smem", "warps": "warps", "blocks": "blocks"}  # in table cells


@dataclass
class Result:
    case: str
    kernel: str
    shape: str
    arch: int
    status: str
    message: str = ""
    shared: int | None = None
    limit: int = 0
    seconds: float = 0.0
    reached_by: str = ""
    reach: str = "default"
    # from the cubin (`sass.cubin_stats`): regs, stack, local, spill_stores, fp16_ops, fp16_by_op
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def occupancy(self) -> Occupancy | None:
        """Theoretical occupancy from the cubin's registers, the launch's warps and its shared memory;
        None without them (a failed compile, no cuobjdump). Computed here, not in the worker, so
        cached cubin figures of earlier runs get it too."""
        st = self.stats
        if not self.ok or st.get("regs") is None or not st.get("warps") or self.arch not in CAPABILITIES:
            return None
        return occupancy(self.arch, st["warps"], st["regs"], self.shared or 0)

    def to_json(self) -> dict[str, Any]:
        occ = self.occupancy
        return {**asdict(self), "occupancy": occ.to_json() if occ else None}


@dataclass
class Report:
    env: str
    archs: list[int]
    vllm_src: str
    triton: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    # kernels reached on these GPUs but left out of this run: kernel -> how to audit it
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    def summary(self) -> dict[str, Any]:
        return {
            "kernels": len({r.kernel for r in self.results}),
            "cases": len({r.case for r in self.results}),
            "compiles": len(self.results),
            "failed": len(self.failures),
            "by_status": dict(Counter(r.status for r in self.results)),
            "seconds": round(self.seconds, 1),
            "coverage": self.coverage(),
        }

    def coverage(self) -> dict[str, int]:
        """Kernels reached on these GPUs (audited or not), audited, and passing on every arch."""
        audited = {r.kernel for r in self.results}
        failing = {r.kernel for r in self.failures}
        return {"reached": len(audited | set(self.skipped)), "audited": len(audited),
                "passing": len(audited - failing)}  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "archs": self.archs,
            "vllm_src": self.vllm_src,
            "triton": self.triton,
            "summary": self.summary(),
            "results": [r.to_json() for r in self.results],
            "not_audited": self.skipped,
        }


def _cell(r: Result) -> str:
    if r.ok:
        st = r.stats
        text = f"[green]ok[/green] {r.shared}"
        if st.get("regs") is not None:
            text += f" {st['regs']}r"
        occ = r.occupancy
        if occ is not None:  # resident warps per SM of the maximum, and what stops more
            text += f" {occ.warps}/{occ.max_warps}w"
            if occ.ratio < 1:
                text += f" ({'+'.join(SHORT[n] for n in occ.limited_by)})"
        if st.get("local"):
            text += f" [yellow]local {st['local']}[/yellow]"
        if st.get("fp16_ops"):
            text += f" [yellow]fp16 {st['fp16_ops']}[/yellow]"
        return text
    if r.status == "shared-memory":
        return f"[red]smem {r.shared}>{r.limit}[/red]"
    return f"[red]{r.status}[/red]"


def print_report(report: Report) -> None:
    table = Table(
        title=f"vLLM Triton kernels for {report.env} ({', '.join(f'sm_{a}' for a in report.archs)})"
    )
    table.add_column("kernel")
    table.add_column("shape")
    table.add_column("reached")
    for arch in report.archs:
        table.add_column(sm(arch))
    rows: dict[str, dict[int, Result]] = {}
    for r in report.results:
        rows.setdefault(r.case, {})[r.arch] = r
    for case, by_arch in rows.items():
        first = next(iter(by_arch.values()))
        table.add_row(
            first.kernel,
            case.partition("/")[2],
            REACH.get(first.reach, first.reach),
            *[_cell(by_arch[a]) for a in report.archs],
        )
    out.print(table)
    failures = report.failures
    if failures:
        out.print("[bold]failures:[/bold]")
        for r in failures:
            out.print(f"  {r.case} sm_{r.arch}: {r.status}: {r.message}")
    for kernel, how in report.skipped.items():
        out.print(f"not audited: {kernel} ({how})", markup=False, highlight=False)
    t = report.triton
    out.print(
        f"triton {t['version']} ({t['how']}{', ' + str(len(t['patches'])) + ' patches' if t['patches'] else ''}); "
        f"vLLM source {report.vllm_src}"
    )
    s = report.summary()
    verdict = "[green]all compiled[/green]" if not failures else f"[red]{s['failed']} failed[/red]"
    out.print(
        f"audited {s['kernels']} kernels at {s['cases']} shapes for {len(report.archs)} arch(s): "
        f"{s['compiles']} compiles in {s['seconds']:.1f} s, {verdict}"
    )
    c = s["coverage"]
    out.print(
        f"coverage: {c['reached']} kernels reached on these GPUs, {c['audited']} audited, {c['passing']} passing "
        "(cells: shared bytes, registers, resident warps per SM of the maximum and what limits them, "
        "local-memory bytes, fp16 SASS instructions)"
    )
