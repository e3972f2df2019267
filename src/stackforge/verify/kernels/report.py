"""The kernel audit's results: one `Result` per kernel x shape x arch, the `Report`, and its table."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from stackforge.core.console import out
from stackforge.cuda.caps import CAPABILITIES, sm
from stackforge.cuda.occupancy import Occupancy, occupancy

STATUSES = (
    "ok",
    "pruned",
    "ptxas-error",
    "shared-memory",
    "compile-error",
    "load-error",
    "timeout",
    "worker-died",
)
# not a failure: an autotune config the tree's own pruning drops on this arch is never launched there
PASSING = ("ok", "pruned")
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
    config: int | None = None  # an autotuned kernel's config (`Case.config`), of `configs`
    configs: int = 1

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
    # kernels the model list (`model_table`) reaches, audited in this run or not (`models.reached_kernels`)
    model_kernels: list[str] = field(default_factory=list)
    # model cases left out because this tree cannot be followed for them: case id -> why
    unfollowed: dict[str, str] = field(default_factory=dict)
    # rows of the model list whose launches and layers this run did not audit: key -> name
    models_left: dict[str, str] = field(default_factory=dict)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status not in PASSING]

    def autotune(self) -> list[dict[str, Any]]:
        """Per autotuned kernel and shape (case id without its "@c<i>"): of its configs, how many
        compile within the limit, are pruned by the tree, or need more shared memory, per arch."""
        groups: dict[tuple[str, int], dict[str, Any]] = {}
        for r in self.results:
            if r.config is None:
                continue
            g = groups.setdefault((r.case.rpartition("@")[0], r.arch), {
                "case": r.case.rpartition("@")[0], "kernel": r.kernel, "arch": r.arch, "configs": r.configs,
                "fit": 0, "pruned": 0, "over": 0, "other": 0})  # fmt: skip
            key = {"ok": "fit", "pruned": "pruned", "shared-memory": "over"}.get(r.status, "other")
            g[key] += 1
        return list(groups.values())

    def summary(self) -> dict[str, Any]:
        return {
            "kernels": len({r.kernel for r in self.results}),
            "cases": len({r.case for r in self.results}),
            "compiles": len(self.results),
            "failed": len(self.failures),
            "by_status": dict(Counter(r.status for r in self.results)),
            "seconds": round(self.seconds, 1),
            "coverage": self.coverage(),
            "autotune": self.autotune(),
            # results taken from a case that compiles to the same code (`audit._twins`)
            "twins": sum("compiled once" in r.message for r in self.results),
        }

    def coverage(self) -> dict[str, int]:
        """Kernels reached on these GPUs (audited or not), audited, and passing on every arch; and of
        the kernels the model list reaches, how many this run audited and passed."""
        audited = {r.kernel for r in self.results}
        passing = audited - {r.kernel for r in self.failures}
        models = set(self.model_kernels)
        return {"reached": len(audited | set(self.skipped)), "audited": len(audited), "passing": len(passing),
                "models": len(models), "models_audited": len(models & audited),
                "models_passing": len(models & passing)}  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "archs": self.archs,
            "vllm_src": self.vllm_src,
            "triton": self.triton,
            "summary": self.summary(),
            "results": [r.to_json() for r in self.results],
            "not_audited": self.skipped,
            "not_followed": self.unfollowed,
            "models_not_audited": self.models_left,
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
        if st.get("stack"):  # ptxas' stack frame: where its spills (STL) and local arrays go
            text += f" [yellow]stack {st['stack']}[/yellow]"
        if st.get("fp16_ops"):
            text += f" [yellow]fp16 {st['fp16_ops']}[/yellow]"
        return text
    if r.status == "shared-memory":
        return f"[red]smem {r.shared}>{r.limit}[/red]"
    if r.status == "pruned":
        return "[dim]pruned[/dim]"
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
    for line in autotune_lines(report):
        out.print(line, markup=False, highlight=False)
    for kernel, how in report.skipped.items():
        out.print(f"not audited: {kernel} ({how})", markup=False, highlight=False)
    for case, why in report.unfollowed.items():
        out.print(f"not audited: {case} ({why})", markup=False, highlight=False)
    if report.models_left:
        out.print(
            f"not audited: the own launches of {len(report.models_left)} listed models "
            f"(--model KEY[,KEY] or --model all; keys: {', '.join(report.models_left)})",
            markup=False, highlight=False,
        )  # fmt: skip
    t = report.triton
    out.print(
        f"triton {t['version']} ({t['how']}{', ' + str(len(t['patches'])) + ' patches' if t['patches'] else ''}); "
        f"vLLM source {report.vllm_src}"
    )
    s = report.summary()
    verdict = "[green]all compiled[/green]" if not failures else f"[red]{s['failed']} failed[/red]"
    if s["twins"]:
        verdict += f" ({s['twins']} from the compile of a launch that specialises the same)"
    if s["by_status"].get("pruned"):
        verdict += f", {s['by_status']['pruned']} autotune configs pruned by the tree"
    out.print(
        f"audited {s['kernels']} kernels at {s['cases']} shapes for {len(report.archs)} arch(s): "
        f"{s['compiles']} compiles in {s['seconds']:.1f} s, {verdict}"
    )
    c = s["coverage"]
    out.print(
        f"coverage: {c['reached']} kernels reached on these GPUs, {c['audited']} audited, {c['passing']} passing; "
        f"reached by the model list: {c['models']}, {c['models_audited']} audited, {c['models_passing']} passing "
        "(cells: shared bytes, registers, resident warps per SM of the maximum and what limits them, "
        "local-memory and stack bytes, fp16 SASS instructions)"
    )


def autotune_lines(report: Report) -> list[str]:
    """One line per autotuned kernel and shape: configs that fit per arch, and what became of the rest."""
    by_case: dict[str, list[dict[str, Any]]] = {}
    for g in report.autotune():
        by_case.setdefault(g["case"], []).append(g)
    lines = []
    for case, groups in by_case.items():
        cells = []
        for g in groups:
            rest = [f"{g[k]} {word}" for k, word in (("pruned", "pruned"), ("over", "over the limit"),
                                                      ("other", "failed")) if g[k]]  # fmt: skip
            cells.append(
                f"{sm(g['arch'])} {g['fit']} of {g['configs']} fit"
                + (f" ({', '.join(rest)})" if rest else "")
            )
        lines.append(f"autotune {case}: {'; '.join(cells)}")
    return lines
