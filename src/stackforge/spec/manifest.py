"""Parse `git-repos.txt`: one pinned upstream a line.

    <name> <git-url> <40-hex commit> [key=value ...]
    <name> <git-url> -               ref=TAG | pin=SOURCE:PATH [key=value ...]

`#` starts a comment. Keys: `ref=` (the tag the commit came from, for humans), `pin=SOURCE:PATH`
(the file of another source that names the commit, read at that source's pin),
`submodules=recursive|none`, `env=VAR` (the build exports the checkout's path as VAR, e.g.
VLLM_CUTLASS_SRC_DIR), `subdir=PATH` (what VAR points at inside the checkout), `for=PKG` (the
package whose build consumes this source), `cargo=PATH` (a Cargo.toml whose crates clone-all
vendors), `abbrev=HEX` (an abbreviated SHA read elsewhere, which the commit must start with). A `-` in place of the commit means "not resolved yet": `stackforge pins resolve`
reads it once from the tag (`git ls-remote`) or the pin file and writes the full SHA into the
line, which is then committed like any pin. A SHA is never guessed, so an unresolved line is
kept as such and refused by whatever needs the commit, with the command to run.
Every fault is reported as `file:line: what is wrong`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from stackforge.core.console import UsageError
from stackforge.core.git import redact_url

_SHA = re.compile(r"[0-9a-f]{40}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ENV_VAR = re.compile(r"[A-Z_][A-Z0-9_]*")
UNRESOLVED = "-"  # the commit field of a line whose commit `pins resolve` has not read yet
KEYS = {
    "ref": "the tag the commit was taken from (on a '-' line: the tag `pins resolve` reads)",
    "pin": "SOURCE:PATH, the file of another source that holds the commit (read at SOURCE's pin)",
    "cargo": "a Cargo.toml in the checkout whose crates `clone` vendors for an offline build",
    "abbrev": "the abbreviated SHA known from elsewhere (a release's commit_id): the commit must start with it",
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
    pin_from: str | None = None  # pin=SOURCE:PATH
    cargo: str | None = None
    abbrev: str | None = None
    file: Path | None = field(default=None, compare=False)  # the git-repos.txt it was read from

    @property
    def resolved(self) -> bool:
        """False for a `-` line: its commit is still to be read by `pins resolve`."""
        return bool(self.commit)

    @property
    def short(self) -> str:
        return self.commit[:12] or UNRESOLVED

    @property
    def where(self) -> str:
        return f"{self.file or 'git-repos.txt'}:{self.line}"

    @property
    def how(self) -> str:
        """Where `pins resolve` reads the commit: 'tag v1.0' or 'pytorch:path/pin.txt'."""
        return self.pin_from or (f"tag {self.ref}" if self.ref else "")

    @property
    def pin_source(self) -> str | None:
        return self.pin_from.split(":", 1)[0] if self.pin_from else None

    @property
    def pin_path(self) -> str | None:
        return self.pin_from.split(":", 1)[1] if self.pin_from else None


def resolve_command(src: Source, *more: Source) -> str:
    """The command that resolves `src` (and `more`), with --stack when its file is a stack's."""
    folder = src.file.parent if src.file else None
    stack = f" --stack {folder.name}" if folder and folder.parent.name == "stacks" else ""
    return f"stackforge{stack} pins resolve {' '.join(s.name for s in (src, *more))}"


def unresolved_error(src: Source) -> UsageError:
    """What every command that needs the commit of a `-` line says."""
    return UsageError(
        f"{src.where}: {src.name} has no commit yet ('-': to be read from {src.how})",
        hint=f"where {redact_url(src.url)} is reachable, run `{resolve_command(src)}` once and commit "
        f"{src.file.name if src.file else 'git-repos.txt'}; it writes the full SHA into the line",
    )


def require_resolved(src: Source) -> Source:
    if not src.resolved:
        raise unresolved_error(src)
    return src


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
    opts = _keys(path, lineno, pairs)
    if commit == UNRESOLVED:
        if not (opts.get("ref") or opts.get("pin")):
            raise _fail(
                path,
                lineno,
                f"'{UNRESOLVED}' marks a commit to be resolved, but the line does not say from where",
                hint="add ref=TAG (the tag's commit, by git ls-remote) or pin=SOURCE:PATH (a file in "
                "another source that holds the commit), then run `stackforge pins resolve`",
            )
        commit = ""
    elif _SHA.fullmatch(commit.lower()) and commit != commit.lower():
        raise _fail(path, lineno, f"{commit!r}: write the commit SHA in lower case", hint=commit.lower())
    elif re.fullmatch(r"[0-9a-fA-F]{4,39}", commit):
        raise _fail(
            path,
            lineno,
            f"{commit!r} is a short commit SHA; a pin must be the full 40-hex SHA",
            hint=f"in a clone of {redact_url(url)}: git rev-parse {commit}  and put the full SHA here "
            f"(or write '{UNRESOLVED} ref=TAG' for the release's tag and run `stackforge pins resolve {name}`)",
        )
    elif not _SHA.fullmatch(commit):
        raise _fail(
            path,
            lineno,
            f"{commit!r} is not a full 40-hex commit SHA (tags and branches move, so they are refused)",
            hint=f"write '{UNRESOLVED} ref={commit}' and run `stackforge pins resolve {name}` (it reads the "
            f"tag's commit once, with git ls-remote), or pin the commit by hand: "
            f"git ls-remote {redact_url(url)} {commit}",
        )
    if opts.get("ref") and opts.get("pin"):
        raise _fail(
            path,
            lineno,
            "ref= and pin= both say where the commit comes from",
            hint="keep one (a release's tag: ref=; a commit another source pins: pin=) and say the "
            "other in a comment",
        )
    submodules = opts.get("submodules", "recursive")
    if submodules not in ("recursive", "none"):
        raise _fail(path, lineno, f"submodules={submodules!r}: expected 'recursive' or 'none'")
    subdir = opts.get("subdir")
    if subdir is not None and (subdir.startswith("/") or ".." in subdir.split("/")):
        raise _fail(path, lineno, f"subdir={subdir!r} must be a relative path inside the checkout")
    env = opts.get("env")
    if env is not None and not _ENV_VAR.fullmatch(env):
        raise _fail(path, lineno, f"env={env!r} is not an environment variable name")
    pin = opts.get("pin")
    if pin is not None:
        source, _, inner = pin.partition(":")
        if not _NAME.fullmatch(source) or not _relative(inner):
            raise _fail(
                path,
                lineno,
                f"pin={pin!r}: expected SOURCE:PATH, a source of this file and a relative path in it",
                hint="e.g. pin=pytorch:.ci/docker/ci_commit_pins/triton.txt",
            )
    abbrev = opts.get("abbrev")
    if abbrev is not None and not re.fullmatch(r"[0-9a-f]{4,40}", abbrev):
        raise _fail(path, lineno, f"abbrev={abbrev!r}: expected 4 to 40 lower-case hex digits")
    if abbrev and commit and not commit.startswith(abbrev):
        raise _fail(
            path,
            lineno,
            f"{commit[:12]} does not start with abbrev={abbrev}",
            hint="one of the two is wrong: check the commit (git ls-remote) and where the abbreviation was read",
        )
    cargo = opts.get("cargo")
    if cargo is not None and not (_relative(cargo) and cargo.rsplit("/", 1)[-1] == "Cargo.toml"):
        raise _fail(
            path, lineno, f"cargo={cargo!r}: expected the relative path of a Cargo.toml in the checkout"
        )
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
        pin_from=pin,
        cargo=cargo,
        abbrev=abbrev,
        file=path,
    )


def _relative(rel: str) -> bool:
    return bool(rel) and not rel.startswith("/") and ".." not in rel.split("/")


def _keys(path: Path, lineno: int, pairs: list[str]) -> dict[str, str]:
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
    return opts


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
    _check_pin_chains(path, sources)
    return Manifest(path=path, sources=tuple(sources))


def _check_pin_chains(path: Path, sources: list[Source]) -> None:
    """Every pin=SOURCE names a line of this file, and no chain of them comes back to itself."""
    by_name = {s.name: s for s in sources}
    for src in sources:
        seen = [src.name]
        cur = src
        while cur.pin_source is not None:
            nxt = by_name.get(cur.pin_source)
            if nxt is None:
                raise _fail(
                    path,
                    cur.line,
                    f"pin={cur.pin_from}: this file has no source {cur.pin_source!r}",
                    hint=f"known sources: {', '.join(by_name)}",
                )
            if nxt.name in seen:
                raise _fail(
                    path,
                    src.line,
                    f"pin= goes round in a circle: {' -> '.join([*seen, nxt.name])}",
                    hint="one source of the chain must be pinned by ref= or by its commit",
                )
            seen.append(nxt.name)
            cur = nxt


def set_commit(raw: str, commit: str) -> str:
    """`raw` (one git-repos.txt line) with its commit field replaced by `commit`; every other
    character is kept, and the columns after it stay where they were when there is room."""
    match = re.match(r"(\s*\S+\s+\S+\s+)(\S+)(\s*)(.*)", raw, re.S)
    if match is None:
        raise ValueError(f"not a git-repos.txt line: {raw!r}")
    head, old, gap, rest = match.groups()
    if rest and not gap.strip(" "):  # spaces: re-aligned; a tab is kept as it is
        gap = " " * max(min(len(gap), 2), len(gap) + len(old) - len(commit))
    return head + commit + gap + rest
