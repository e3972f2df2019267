"""What a vLLM release pins, read from PyPI's files: the torch pin and the external projects its
CMake downloads (sdist), the triton requirement and the commit of the torch wheel (METADATA,
torch/version.py), and the newest triton release that meets that requirement (the index).

Nothing here guesses: a value is reported as read, with the file and line it came from, and
classified as a full SHA (pinnable), a short SHA or a tag (not pinnable without a clone).
"""

from __future__ import annotations

import itertools
import re
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from stackforge.core.console import Failure
from stackforge.verify.upstream.pypi import cache_dir, index_files, index_url, wheel_member, wheel_members

_FULL = re.compile(r"[0-9a-f]{40}")
_SHORT = re.compile(r"[0-9a-f]{7,39}")
# Where vLLM releases have kept their torch pin, newest layout first.
TORCH_PIN_FILES = ("requirements/cuda.txt", "requirements-cuda.txt", "pyproject.toml")
_DOWNLOADS = ("fetchcontent_declare", "fetchcontent_populate", "externalproject_add")
_COMMAND = re.compile(r"(?m)^\s*([A-Za-z_]\w*)\s*\(")
_ARG = re.compile(r'"[^"]*"|[^\s()]+')


def kind(value: str) -> str:
    """sha (a full commit), short (an abbreviated one), or tag (a tag or branch name)."""
    return "sha" if _FULL.fullmatch(value) else "short" if _SHORT.fullmatch(value) else "tag"


@dataclass(frozen=True)
class Read:
    """A value and where it was read: 'file:line' inside the sdist or wheel."""

    value: str
    where: str


@dataclass
class External:
    """A project vLLM's CMake would download at build time."""

    project: str  # the FetchContent name, e.g. vllm-flash-attn
    url: str  # GIT_REPOSITORY, or the URL of an archive
    value: str  # GIT_TAG (a commit or a tag), or the archive URL
    where: str
    env: str | None  # the *_SRC_DIR variable that replaces the download with a local tree
    subdir: str | None = None  # SOURCE_SUBDIR
    archive: bool = False  # URL, not a git repository
    others: list[str] = field(default_factory=list)  # values set for other platforms (ROCm)

    @property
    def kind(self) -> str:
        return "archive" if self.archive else kind(self.value)


# --- the vLLM sdist ----------------------------------------------------------------------------


def torch_pin(tree: Path) -> Read:
    """`torch==X` from the first of TORCH_PIN_FILES that has one."""
    pattern = re.compile(r"""^\s*["']?torch\s*==\s*([0-9][\w.+]*)""")
    for name in TORCH_PIN_FILES:
        path = tree / name
        if not path.is_file():
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            m = pattern.match(line.split("#", 1)[0])
            if m:
                return Read(m[1], f"{name}:{lineno}")
    raise Failure(
        f"{tree.name}: no `torch==X.Y.Z` pin in {', '.join(TORCH_PIN_FILES)}",
        hint="this release keeps its torch pin elsewhere: read it by hand and write stack.yaml yourself",
    )


def vllm_commit(tree: Path) -> Read | None:
    """vllm/_version.py's commit_id (setuptools-scm writes 'g' + an abbreviated SHA)."""
    path = tree / "vllm" / "_version.py"
    if not path.is_file():
        return None
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        m = re.search(r"commit_id\s*=\s*['\"]g?([0-9a-f]{7,40})['\"]", line)
        if m:
            return Read(m[1], f"vllm/_version.py:{lineno}")
    return None


def externals(tree: Path) -> list[External]:
    """Every download in CMakeLists.txt and cmake/external_projects/*.cmake, ROCm-only ones left out."""
    files = [tree / "CMakeLists.txt", *sorted((tree / "cmake" / "external_projects").glob("*.cmake"))]
    found: list[External] = []
    for path in files:
        if path.is_file():
            found += _cmake_downloads(
                path.read_text(encoding="utf-8", errors="replace"), path.relative_to(tree)
            )
    return found


def _strip_comment(line: str) -> str:
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return line[:i]
    return line


def _commands(text: str) -> list[tuple[str, list[str], int]]:
    """(command in lower case, its arguments unquoted, line) for each CMake command."""
    body = "\n".join(_strip_comment(line) for line in text.splitlines())
    commands = []
    start = 0
    while m := _COMMAND.search(body, start):
        depth, pos, quoted = 1, m.end(), False
        while pos < len(body) and depth:
            ch = body[pos]
            if ch == '"':
                quoted = not quoted
            elif not quoted:
                depth += {"(": 1, ")": -1}.get(ch, 0)
            pos += 1
        args = [a[1:-1] if a.startswith('"') else a for a in _ARG.findall(body[m.end() : pos - 1])]
        commands.append((m[1].lower(), args, body.count("\n", 0, m.start()) + 1))
        start = pos  # words inside the arguments, like `NOT (`, are no commands
    return commands


def _platform(condition: list[str]) -> bool | None:
    """True: the branch is the CUDA build's; False: another platform's (ROCm, HIP); None: both."""
    rocm = any(a.lower() in ("rocm", "hip") or re.search(r"HIP_FOUND|FOUND_HIP", a) for a in condition)
    cuda = any(a.lower() == "cuda" for a in condition)
    if rocm == cuda:
        return None
    return cuda != (condition[:1] == ["NOT"])


def _cmake_downloads(text: str, rel: Path) -> list[External]:
    # ROCm branches set other values (e.g. ROCm/triton for triton_kernels): the CUDA build is ours.
    branches: list[bool | None] = []  # per open if(): whether its current part is the CUDA build's
    values: dict[str, list[tuple[str, bool]]] = {}  # variable -> [(value, not for CUDA)] in file order
    env: str | None = None
    found: list[External] = []
    for name, args, line in _commands(text):
        other = False in branches
        if name == "if":
            branches.append(_platform(args))
        elif name == "elseif" and branches:
            branches[-1] = _platform(args)
        elif name == "else" and branches:
            branches[-1] = None if branches[-1] is None else not branches[-1]
        elif name == "endif" and branches:
            branches.pop()
        elif name == "set" and len(args) >= 2:
            values.setdefault(args[0], []).append((args[1], other))
        elif name in _DOWNLOADS and args and not other:
            keys = _keywords(args[1:])
            url = keys.get("GIT_REPOSITORY") or keys.get("URL")
            if url:
                resolved = _resolve(keys.get("GIT_TAG", keys.get("URL", "")), values)
                found.append(
                    External(
                        project=args[0],
                        url=_resolve(url, values)[0],
                        value=resolved[0],
                        where=f"{rel}:{line}",
                        env=env,
                        subdir=keys.get("SOURCE_SUBDIR"),
                        archive="GIT_REPOSITORY" not in keys,
                        others=resolved[1],
                    )
                )
                env = None
        if name in ("if", "elseif"):  # `if (DEFINED ENV{X_SRC_DIR})` comes before the download it replaces
            for word, arg in itertools.pairwise(args):
                m = re.fullmatch(r"ENV\{(\w+)\}", arg)
                if word == "DEFINED" and m:
                    env = m[1]
    return found


def _keywords(args: list[str]) -> dict[str, str]:
    keys = {}
    for key, value in itertools.pairwise(args):
        if re.fullmatch(r"[A-Z][A-Z0-9_]+", key) and key not in keys:
            keys[key] = value
    return keys


def _resolve(value: str, values: dict[str, list[tuple[str, bool]]]) -> tuple[str, list[str]]:
    """`${VAR}` replaced by the last value the CUDA build sets; other platforms' values come apart."""
    others: list[str] = []

    def one(m: re.Match[str]) -> str:
        sets = values.get(m[1], [])
        others.extend(v for v, not_cuda in sets if not_cuda)
        cuda = [v for v, not_cuda in sets if not not_cuda]
        return cuda[-1] if cuda else m[0]

    return re.sub(r"\$\{(\w+)\}", one, value), others


# --- the torch wheel and the triton index ------------------------------------------------------


def torch_reads(version: str) -> tuple[Read, Read | None]:
    """The triton requirement (METADATA Requires-Dist) and git_version (torch/version.py) of the
    PyPI torch `version` wheel, both read by HTTP range requests."""
    members = wheel_members("torch", version)
    metadata = next((m for m in members if m.endswith(".dist-info/METADATA")), None)
    if metadata is None:
        raise Failure(f"the torch {version} wheel has no *.dist-info/METADATA")
    text = wheel_member("torch", version, metadata).decode("utf-8", errors="replace")
    triton = None
    for lineno, line in enumerate(text.splitlines(), 1):
        m = re.match(r"Requires-Dist:\s*triton\s*\(?([^;)]+)", line)
        if m:
            triton = Read(m[1].replace(" ", ""), f"{metadata}:{lineno}")
            break
    if triton is None:
        raise Failure(
            f"torch {version}: {metadata} requires no triton",
            hint="write the triton version into stack.yaml by hand",
        )
    commit = None
    has_version = "torch/version.py" in members
    source = (
        wheel_member("torch", version, "torch/version.py").decode("utf-8", errors="replace")
        if has_version
        else ""
    )
    for lineno, line in enumerate(source.splitlines(), 1):
        m = re.match(r"\s*git_version\s*=\s*['\"]([0-9a-f]{40})['\"]", line)
        if m:
            commit = Read(m[1], f"torch/version.py:{lineno}")
    return triton, commit


def _release(text: str) -> tuple[int, ...] | None:
    return tuple(int(p) for p in text.split(".")) if re.fullmatch(r"\d+(\.\d+)*", text) else None


def _meets(version: tuple[int, ...], clause: str) -> bool:
    m = re.fullmatch(r"(~=|==|!=|>=|<=|>|<)([\d.]+)(\.\*)?", clause)
    if not m:
        return False
    op, bound, star = m[1], _release(m[2]) or (), bool(m[3])
    width = max(len(version), len(bound))
    v, b = version + (0,) * (width - len(version)), bound + (0,) * (width - len(bound))
    if op == "~=":
        return v >= b and version[: len(bound) - 1] == bound[:-1]
    if op in ("==", "!=") and star:
        return (version[: len(bound)] == bound) == (op == "==")
    return {"==": v == b, "!=": v != b, ">=": v >= b, "<=": v <= b, ">": v > b, "<": v < b}[op]


def triton_release(requirement: str) -> tuple[str, str]:
    """The triton release a requirement like `==X.Y.Z` or `~=X.Y.0` picks, and how: an exact pin
    is taken as is; a range becomes the newest final release on the index that meets it (without
    a network: the newest one whose wheel the cache holds, saying so)."""
    exact = re.fullmatch(r"===?([0-9][\w.+]*)", requirement)
    if exact:
        return exact[1], "the exact pin"
    clauses = requirement.split(",")
    try:
        names = [f.filename for f in index_files("triton")]
        how = f"the newest final release on the index meeting {requirement}"
    except Failure as exc:
        if not isinstance(exc.__cause__, urllib.error.URLError) or isinstance(
            exc.__cause__, urllib.error.HTTPError
        ):
            raise
        # wheel_member's cache folders are named <project>-<version>-<python>-<platform>
        names = [
            f"{p.name}-" for p in (cache_dir() / "wheels").glob("triton-*") if (p / "wheel.json").is_file()
        ]
        how = f"the newest cached release meeting {requirement} (no network: the index was not asked)"
        if not names:
            raise
    releases = set()
    for name in names:
        m = re.match(r"triton-([^-]+)-", name)
        version = _release(m[1]) if m else None
        if version and all(_meets(version, c) for c in clauses):
            releases.add(version)
    if not releases:
        raise Failure(
            f"{index_url('triton')} lists no final triton release that meets triton{requirement}",
            hint="write the triton version into stack.yaml by hand",
        )
    return ".".join(map(str, max(releases))), how
