"""What `git am` said when a patch did not apply, turned into a message naming files and hunks."""

from __future__ import annotations

import re
from pathlib import Path

from stackforge.spec.manifest import Source


def failed_patch(dest: Path, series: list[Path]) -> Path:
    """The patch `git am` stopped at: rebase-apply/next holds its 1-based number."""
    try:
        index = int((dest / ".git" / "rebase-apply" / "next").read_text().strip())
        return series[index - 1]
    except (OSError, ValueError, IndexError):
        return series[0]


def conflict_message(src: Source, patch: Path, series: list[Path], output: str) -> str:
    failures = sorted(set(re.findall(r"error: patch failed: (\S+):(\d+)", output)))
    conflicts = sorted(set(re.findall(r"CONFLICT \([^)]*\): .*? in (\S+)", output)))
    missing = sorted(set(re.findall(r"error: (\S+): does not exist in index", output)))
    in_way = sorted(set(re.findall(r"error: (\S+): already exists in working directory", output)))
    unreadable = sorted(
        set(re.findall(r"(No valid patches in input[^\n]*|Patch format detection failed\.)", output))
    )
    lines = [
        f"{patch} does not apply to {src.name} at {src.short} (patch {series.index(patch) + 1} of {len(series)})"
    ]
    lines += [f"  {path}: hunk at line {line} does not apply" for path, line in failures]
    lines += [f"  {path}: 3-way merge conflict" for path in conflicts]
    lines += [f"  {path}: file does not exist at the pin" for path in missing]
    lines += [f"  {path}: an untracked file is in the way" for path in in_way]
    lines += [f"  {patch.name}: {why}" for why in unreadable]
    if not (failures or conflicts or missing or in_way or unreadable):
        lines += [f"  git am: {ln}" for ln in output.strip().splitlines()[-3:]]  # never drop git's reason
    lines.append(f"  sources/{src.name} was left at the pin with no patches applied (git am was aborted)")
    return "\n".join(lines)
