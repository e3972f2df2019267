"""Parse `git-repos.txt`: one pinned upstream a line.

    <name> <git-url> <40-hex commit> [key=value ...]

`#` starts a comment. Keys: `ref=` (the tag or branch the commit came from, for humans),
`submodules=recursive|none`, `env=VAR` (the build exports the checkout's path as VAR, e.g.
VLLM_CUTLASS_SRC_DIR), `subdir=PATH` (what VAR points at inside the checkout), `for=PKG` (the
package whose build consumes this source).
Every fault is reported as `file:line: what is wrong`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from stackforge.core.console import UsageError

_SHA = re.compile(r"[0-9a-f]{40}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ENV_VAR = re.compile(r"[A-Z_][A-Z0-9_]*")
KEYS = {
    "ref": "the tag or branch the commit was taken from (documentation only)",
    "submodules": "recursive (default) or none",
    "env": "environment variable through which a build receives this checkout's path",
    "for": "the package whose build consumes this source",
    "subdir": "folder inside the checkout that env= points at (default: its root)",
}


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    commit: str
    line: int
    ref: str | None = None
    submodules: bool = True
    env: str | None = None
    consumer: str | None = None
    subdir: str | None = None

    @property
    def short(self) -> str:
        return self.commit[:12]


@dataclass(frozen=True)
class Manifest:
    path: Path
    sources: tuple[Source, ...]

    def get(self, name: str) -> Source:
        for src in self.sources:
            if src.name == name:
                return src
        known = ", ".join(s.name for s in self.sources)
        raise UsageError(f"{self.path}: no source named {name!r}", hint=f"known sources: {known}")

    def select(self, names: list[str] | None) -> list[Source]:
        return list(self.sources) if not names else [self.get(n) for n in names]


def _fail(path: Path, lineno: int, message: str, hint: str | None = None) -> UsageError:
    return UsageError(f"{path}:{lineno}: {message}", hint=hint)


def parse_line(path: Path, lineno: int, raw: str) -> Source | None:
    text = raw.split("#", 1)[0].strip()
    if not text:
        return None
    fields = text.split()
    if len(fields) < 3:
        raise _fail(
            path, lineno, f"expected '<name> <git-url> <commit> [key=value ...]', got {len(fields)} field(s)"
        )
    name, url, commit, *pairs = fields
    if not _NAME.fullmatch(name):
        raise _fail(path, lineno, f"bad name {name!r}", hint="use letters, digits, '.', '_' and '-'")
    if "=" in url:
        raise _fail(path, lineno, f"the second field must be the git URL, got {url!r}")
    if _SHA.fullmatch(commit.lower()) and commit != commit.lower():
        raise _fail(path, lineno, f"{commit!r}: write the commit SHA in lower case", hint=commit.lower())
    if re.fullmatch(r"[0-9a-fA-F]{4,39}", commit):
        raise _fail(
            path,
            lineno,
            f"{commit!r} is a short commit SHA; a pin must be the full 40-hex SHA",
            hint=f"in a clone of {url}: git rev-parse {commit}  and put the full SHA here",
        )
    if not _SHA.fullmatch(commit):
        raise _fail(
            path,
            lineno,
            f"{commit!r} is not a full 40-hex commit SHA (tags and branches move, so they are refused)",
            hint=f"pin the commit: git ls-remote {url} {commit}  then put the SHA here and ref={commit}",
        )
    opts: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not value:
            raise _fail(path, lineno, f"expected key=value, got {pair!r}")
        if key not in KEYS:
            raise _fail(path, lineno, f"unknown key {key!r}", hint=f"known keys: {', '.join(sorted(KEYS))}")
        if key in opts:
            raise _fail(path, lineno, f"key {key!r} given twice")
        opts[key] = value
    submodules = opts.get("submodules", "recursive")
    if submodules not in ("recursive", "none"):
        raise _fail(path, lineno, f"submodules={submodules!r}: expected 'recursive' or 'none'")
    subdir = opts.get("subdir")
    if subdir is not None and (subdir.startswith("/") or ".." in subdir.split("/")):
        raise _fail(path, lineno, f"subdir={subdir!r} must be a relative path inside the checkout")
    env = opts.get("env")
    if env is not None and not _ENV_VAR.fullmatch(env):
        raise _fail(path, lineno, f"env={env!r} is not an environment variable name")
    return Source(
        name=name,
        url=url,
        commit=commit,
        line=lineno,
        ref=opts.get("ref"),
        submodules=submodules == "recursive",
        env=env,
        consumer=opts.get("for"),
        subdir=opts.get("subdir"),
    )


def _lines(path: Path) -> list[str]:
    """The file's lines; a BOM or bytes that are not UTF-8 are a file:line error."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        raise _fail(path, 1, "starts with a byte-order mark (BOM)", hint="save it as UTF-8 without a BOM")
    lines = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _fail(path, lineno, f"byte {exc.start + 1} is not UTF-8", hint="save it as UTF-8") from None
    # Split on \n only, so line numbers are what an editor shows (no \x0b, \u2028 line breaks).
    return [ln.removesuffix("\r") for ln in lines]


def load_manifest(path: Path) -> Manifest:
    if not path.is_file():
        raise UsageError(f"{path}: file not found", hint="create it, or run inside a stackforge workspace")
    sources: list[Source] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(_lines(path), start=1):
        src = parse_line(path, lineno, raw)
        if src is None:
            continue
        if src.name in seen:
            raise _fail(path, lineno, f"duplicate name {src.name!r} (first on line {seen[src.name]})")
        seen[src.name] = lineno
        sources.append(src)
    if not sources:
        raise UsageError(f"{path}: no sources listed")
    return Manifest(path=path, sources=tuple(sources))
