"""The files of a new stack: stack.yaml (versions read from PyPI, the `derive:` block copied as is)
and git-repos.txt (the source stack's lines, updated where PyPI's files name a full SHA).

A line whose new pin is only a tag, a short SHA or unknown is written commented out, its
commit field holding what was read, under a comment that says where and why: uncommented as is,
`load_manifest` refuses it with the command that finds the full SHA. A SHA is never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from stackforge.spec.manifest import KEYS, Source, parse_line
from stackforge.verify.upstream.pins import External, Read


@dataclass
class Reading:
    """Everything read from PyPI for one vLLM release."""

    versions: dict[str, str]  # vllm, pytorch, triton
    torch_pin: Read  # in the sdist
    triton_requirement: Read  # in the torch wheel's METADATA
    triton_how: str  # how the requirement became a release
    torch_commit: Read | None  # the torch wheel's git_version
    vllm_commit: Read | None  # the sdist's commit_id (abbreviated)
    externals: list[External] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    """What happened to one git-repos.txt line."""

    name: str
    action: str  # kept | updated | new | commented | dropped
    commit: str  # the pin, or what was read where there is none
    note: str


def _keys(src: Source, ref: str | None) -> str:
    keys = [f"ref={ref}"] * bool(ref) + [f"for={src.consumer}"] * bool(src.consumer)
    keys += [f"env={src.env}"] * bool(src.env) + [f"subdir={src.subdir}"] * bool(src.subdir)
    # where a '-' commit is read and the crates to vendor carry over; abbrev= is one commit's
    keys += [f"pin={src.pin_from}"] * bool(src.pin_from and not ref) + [f"cargo={src.cargo}"] * bool(
        src.cargo
    )
    return " ".join(keys + ["submodules=none"] * (not src.submodules))


def _line(src: Source, commit: str, ref: str | None, note: str = "", *, active: bool = True) -> str:
    text = f"{'' if active else '#'}{src.name:<{16 - (not active)}} {src.url:<50} {commit}  {_keys(src, ref)}".rstrip()
    return f"{text}  # {note}" if note and active else text


def _ref(old: str | None, old_version: str, new_version: str) -> str | None:
    """The old line's ref with the release moved on (v1.0.0 -> v1.1.0), or None."""
    return old.replace(old_version, new_version) if old and old_version and old_version in old else None


def _norm(url: str) -> str:
    return url.lower().rstrip("/").removesuffix(".git")


@dataclass(frozen=True)
class OldLine:
    """A line of the source stack's git-repos.txt: a pin, or one written commented out for want
    of a full SHA (by `stack new` or by hand), with the comment above it."""

    src: Source
    pinned: bool
    why: tuple[str, ...] = ()


_COMMENTED = re.compile(r"#([A-Za-z0-9][A-Za-z0-9._-]*)\s+(\S+://\S+)\s+(\S+)((?:\s+\w+=\S+)*)\s*(#.*)?")


def old_lines(path: Path) -> list[OldLine]:
    """The pins of `path` and its commented-out pins, in file order (active ones checked by
    `parse_line`); a commented pin whose name is also pinned is left out."""
    found: list[OldLine] = []
    comments: list[str] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        src = parse_line(path, lineno, raw)
        m = _COMMENTED.fullmatch(raw.strip()) if src is None else None
        keys = dict(k.split("=", 1) for k in m[4].split()) if m else {}
        if src is not None and not src.resolved:  # a '-' line: no pin to carry over, like a commented one
            found.append(OldLine(replace(src, commit=src.ref or "<unresolved>"), False, tuple(comments)))
        elif src is not None:
            found.append(OldLine(src, True))
        elif m and set(keys) <= set(KEYS):
            sub = keys.get("submodules", "recursive") != "none"
            src = Source(
                m[1],
                m[2],
                m[3],
                lineno,
                keys.get("ref"),
                sub,
                keys.get("env"),
                keys.get("for"),
                keys.get("subdir"),
                keys.get("pin"),
                keys.get("cargo"),
            )
            found.append(OldLine(src, False, tuple(comments)))
        comments = [*comments, raw[1:].strip()] if raw.startswith("#") and src is None and not m else []
    pinned = {o.src.name for o in found if o.pinned}
    return [o for o in found if o.pinned or o.src.name not in pinned]


class _Writer:
    def __init__(self, reading: Reading, old_versions: dict[str, str], origin: str) -> None:
        self.r, self.old, self.origin = reading, old_versions, origin
        self.lines: list[str] = []
        self.rows: list[Row] = []
        self.unpinned: dict[str, OldLine] = {}

    def keep(self, src: Source, note: str) -> None:
        old = self.unpinned.get(src.name)
        if old is not None:  # still no full SHA: commented out again, with the reason it had
            self.lines += [*(f"# {w}" for w in old.why), _line(src, src.commit, src.ref, active=False)]
            self.rows.append(
                Row(src.name, "commented", src.commit, f"{note}; not pinned in {self.origin} either")
            )
            return
        self.lines.append(_line(src, src.commit, src.ref))
        self.rows.append(Row(src.name, "kept", src.commit, note))

    def pin(
        self, src: Source, commit: str, ref: str | None, note: str, short: str = "", action: str = "updated"
    ) -> None:
        """An active line; `note` is its trailing comment, `short` what the report says (default: note)."""
        self.lines.append(_line(src, commit, ref, note))
        self.rows.append(Row(src.name, action, commit, short or note))

    def comment(
        self, src: Source, shown: str, ref: str | None, why: str, short: str, action: str = "commented"
    ) -> None:
        """A commented-out line under `why` (lines split at newlines); `short` is for the report."""
        self.lines += [*(f"# {w}" for w in why.split("\n")), _line(src, shown, ref, active=False)]
        self.rows.append(Row(src.name, action, shown, short))

    def unchanged(self, src: Source, package: str) -> bool:
        if self.old.get(package) == self.r.versions[package]:
            self.keep(src, f"{package} {self.r.versions[package]} as in {self.origin}")
            return True
        return False

    def moved(self, src: Source, package: str) -> str | None:
        return _ref(src.ref, self.old.get(package, ""), self.r.versions[package])


def manifest_text(
    old: list[OldLine], reading: Reading, old_versions: dict[str, str], name: str, origin: str
) -> tuple[str, list[Row]]:
    """git-repos.txt of the new stack and what happened to each line of the old one (`old_lines`)."""
    w = _Writer(reading, old_versions, origin)
    w.unpinned = {o.src.name: o for o in old if not o.pinned}
    v = reading.versions
    by_env = {e.env: e for e in reading.externals if e.env}
    used: set[int] = set()
    for src in (o.src for o in old):
        # a vllm line with env= is an external project of vLLM's build, not vLLM itself
        role = None if src.consumer == "vllm" and src.env else src.consumer
        if src.name == "vllm" or role == "vllm":
            if not w.unchanged(src, "vllm"):
                _vllm(w, src)
        elif src.name == "pytorch" or role == "pytorch":
            if not w.unchanged(src, "pytorch"):
                _pytorch(w, src)
        elif role in ("triton", "triton-llvm") or src.name == "triton":
            if not w.unchanged(src, "triton"):
                req = reading.triton_requirement
                if role == "triton-llvm":
                    why = f"the commit of cmake/llvm-hash.txt at the triton {v['triton']} commit: not in any wheel"
                    w.comment(src, "<unknown>", None, why, "follows the triton commit: unknown")
                else:
                    why = (
                        f"the torch {v['pytorch']} wheel's {req.where}: Requires-Dist triton{req.value} (a version, "
                        "not a commit); the "
                        f"triton {v['triton']} wheel names no commit.\nFill in from a pytorch clone at the pin "
                        "above: .ci/docker/ci_commit_pins/triton.txt"
                    )
                    short = f"triton{req.value} is a version: no commit on PyPI"
                    w.comment(src, "<unknown>", w.moved(src, "triton"), why, short)
        else:
            ext = by_env.get(src.env) if src.env else None
            if ext is None and src.consumer == "vllm":
                same = [e for e in reading.externals if _norm(e.url) == _norm(src.url) and not e.env]
                ext = same[0] if len(same) == 1 else None
            if ext is not None:
                used.add(id(ext))
                _external(w, src, ext)
            elif src.consumer == "vllm" and src.env:
                why = f"vLLM {v['vllm']}'s CMake downloads nothing through {src.env} any more"
                w.comment(
                    src, src.commit, src.ref, why, f"nothing downloaded through {src.env} now", "dropped"
                )
            else:
                w.keep(src, "not named in vLLM's files: copied")
    names = {o.src.name for o in old}
    for ext in reading.externals:
        if id(ext) not in used:
            repo = ext.url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git").lower()
            label = repo if repo not in names else ext.project.replace("_", "-").lower()
            names.add(label)
            src = Source(label, ext.url, "", 0, env=ext.env, consumer="vllm")
            _external(w, src, ext, new=True)
    head = [
        f"# git-repos.txt of the stack {name}: vLLM {v['vllm']} + torch {v['pytorch']} + triton {v['triton']}",
        "# (format: the workspace's git-repos.txt). Made by `stackforge stack new` from the stack",
        f"# {origin} and PyPI's files; each changed line says where its value was read. A line without",
        "# a full 40-hex SHA is commented out with what was read: fill it in from a clone.",
        "",
    ]
    return "\n".join(head + w.lines) + "\n", w.rows


def _vllm(w: _Writer, src: Source) -> None:
    read, version = w.r.vllm_commit, w.r.versions["vllm"]
    ref = w.moved(src, "vllm")
    if read and len(read.value) == 40:
        w.pin(src, read.value, ref, f"the sdist's {read.where} commit_id", "the sdist's commit_id")
        return
    said = f"says only commit_id 'g{read.value}'" if read else "names no commit"
    why = (
        f"vLLM {version}: the sdist's vllm/_version.py {said}: no full SHA on PyPI.\n"
        f"Fill in from a clone: git rev-parse v{version}^{{commit}}"
    )
    w.comment(src, read.value if read else "<unknown>", ref, why, "PyPI has only an abbreviated SHA")


def _pytorch(w: _Writer, src: Source) -> None:
    read, version = w.r.torch_commit, w.r.versions["pytorch"]
    ref = w.moved(src, "pytorch")
    if read is None:
        why = f"the torch {version} wheel's torch/version.py names no git_version"
        w.comment(src, "<unknown>", ref, why, "no commit in the torch wheel")
        return
    tag = f" (that it is tag {ref} is not verified)" if ref else ""
    note = f"the torch {version} wheel's {read.where} git_version: the commit its wheels were built from{tag}"
    w.pin(src, read.value, ref, note, f"git_version of the torch {version} wheel")


def _external(w: _Writer, src: Source, ext: External, *, new: bool = False) -> None:
    src = Source(
        src.name,
        src.url,
        src.commit,
        src.line,
        src.ref,
        src.submodules,
        ext.env,
        src.consumer,
        src.subdir or ext.subdir,
    )
    where = f"{ext.where} ({ext.project})"
    others = f"; other platforms: {', '.join(ext.others)}" if ext.others else ""
    pinned = not new and src.name not in w.unpinned  # else say afresh why there is no pin
    if pinned and ext.value == src.commit:
        w.keep(src, f"unchanged ({ext.where})")
    elif pinned and ext.kind == "tag" and ext.value == src.ref:
        w.keep(src, f"tag {ext.value} unchanged ({ext.where}): the pin carries over")
    elif ext.kind == "sha":
        w.pin(src, ext.value, None, where, ext.where, "new" if new else "updated")
    else:
        what = {"tag": "a tag", "short": "a short SHA", "archive": "an archive URL, not a git commit"}[
            ext.kind
        ]
        fill = f"git ls-remote {ext.url} {ext.value}" if ext.kind == "tag" else f"git rev-parse {ext.value}"
        why = f"{where}: {ext.value} is {what}{others}; its commit was not read.\nFill in: {fill}"
        short = f"{what} ({ext.where}): commit not read"
        w.comment(
            src,
            ext.value,
            ext.value if ext.kind == "tag" else None,
            why,
            short,
            "new" if new else "commented",
        )


# --- stack.yaml --------------------------------------------------------------------------------


def derive_block(text: str) -> str:
    """The `derive:` block of a stack.yaml as written there (with the comments right above it)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if re.match(r"derive\s*:", ln)), None)
    if start is None:
        return ""
    first = start
    while first > 0 and lines[first - 1].startswith("#"):
        first -= 1
    end = start + 1
    while end < len(lines) and not re.match(r"[^\s#]", lines[end]):
        end += 1
    block = "\n".join(lines[first:end]).rstrip() + "\n"
    if (yaml.safe_load(block) or {}).get("derive") != (yaml.safe_load(text) or {}).get("derive"):
        return yaml.safe_dump({"derive": yaml.safe_load(text)["derive"]}, sort_keys=False)  # odd layout
    return block


def stack_text(name: str, reading: Reading, old_text: str, old_versions: dict[str, str], origin: str) -> str:
    v, pin, req = reading.versions, reading.torch_pin, reading.triton_requirement
    lines = [
        f"# Made by `stackforge stack new {name} --vllm {v['vllm']} --from {origin}` from PyPI's files:",
        f"#   torch: the vLLM {v['vllm']} sdist's {pin.where} (torch=={pin.value})",
        f"#   triton: the torch {v['pytorch']} wheel's {req.where} (triton{req.value}: {reading.triton_how})",
        "# git-repos.txt says which pins are still missing; the patch series were copied from",
        f"# {origin} and checked against these releases (the report of `stack new`).",
        f"name: {name}",
        "packages:",
        *(f'  {p}: "{v[p]}"' for p in ("vllm", "pytorch", "triton")),
        *(f'  {p}: "{old}"  # copied from {origin}' for p, old in old_versions.items() if p not in v),
    ]
    block = derive_block(old_text)
    return "\n".join(lines) + "\n" + (f"\n{block}" if block else "")


def write(folder: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (folder / rel).write_text(text, encoding="utf-8")
