"""What `git am` said when a patch did not apply, turned into lines naming files and hunks."""

from __future__ import annotations

import re
from pathlib import Path

from stackforge.spec.manifest import Source

# (pattern, what to say): each match names a file (group 1), and the hunk's line where git gives it.
_PER_FILE = (
    (r"error: patch failed: (\S+):(\d+)", "hunk at line {1} does not apply"),
    (r"CONFLICT \([^)]*\): Merge conflict in (\S+)", "3-way merge conflict"),
    (
        r"CONFLICT \(\w+/delete\): (\S+) deleted in ",
        "3-way merge conflict: deleted on one side, changed on the other",
    ),
    (r"error: (\S+): does not exist in index", "file does not exist"),
    (r"error: (\S+): already exists in index", "file already exists"),
    (r"error: (\S+): already exists in working directory", "an untracked file is in the way"),
    (
        r"error: invalid object \S+ \S+ for '([^']+)'",
        "the version it was made from is not in the repository: no 3-way merge possible",
    ),
)
_WHOLE = r"No valid patches in input[^\n]*|Patch format detection failed\.|Patch is empty\."


def conflict_lines(patch: Path, output: str) -> tuple[list[str], list[str]]:
    """(files, one line per problem) from git am's output; git's last lines when nothing is recognised."""
    files: set[str] = set()
    lines: list[str] = []
    for pattern, say in _PER_FILE:
        for match in sorted(set(re.findall(pattern, output)), key=str):
            groups = (match,) if isinstance(match, str) else match
            files.add(groups[0])
            lines.append(f"{groups[0]}: {say.format(*groups)}")
    known = [p for p, _ in _PER_FILE if p.startswith("CONFLICT")]
    other = {c for c in re.findall(r"^CONFLICT .*$", output, re.M) if not any(re.match(p, c) for p in known)}
    lines += sorted(other)  # a kind of conflict not listed above (renames...): in git's own words
    lines += [f"{patch.name}: {why}" for why in sorted(set(re.findall(_WHOLE, output)))]
    if not lines:
        lines += [f"git am: {ln}" for ln in output.strip().splitlines()[-3:]]  # never drop git's reason
    return sorted(files), lines


def conflict_message(src: Source, patch: Path, series: list[Path], output: str) -> str:
    lines = [
        f"{patch} does not apply to {src.name} at {src.short} (patch {series.index(patch) + 1} of {len(series)})"
    ]
    lines += [f"  {line}" for line in conflict_lines(patch, output)[1]]
    lines.append(f"  sources/{src.name} was left at the pin with no patches applied (git am was aborted)")
    return "\n".join(lines)
