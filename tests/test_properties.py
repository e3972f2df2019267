"""Property tests: any git-repos.txt and any patch folder give a result or a file:line usage error."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackforge.core.console import UsageError
from stackforge.core.workspace import Workspace
from stackforge.sources.series import series_files
from stackforge.spec.manifest import load_manifest

SHA = "0123456789abcdef0123456789abcdef01234567"
_TOKENS = st.sampled_from(
    [
        "app",
        "https://x/a.git",
        SHA,
        SHA.upper(),
        SHA[:12],
        "ref=v1",
        "env=X",
        "env=x",
        "subdir=../a",
        "submodules=none",
        "for=",
        "=",
        "#",
        "\t",
        " ",
        "\ufeff",
        "\u2028",
        "\r",
        "[key=value ...]",
        "k=v",
    ]
)
_LINE = st.lists(st.one_of(_TOKENS, st.text(max_size=8)), max_size=6).map(" ".join)
_FILE = st.one_of(
    st.lists(_LINE, max_size=6).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),
    st.binary(max_size=200),
)
tried = {"manifests": 0, "series": 0}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_FILE)
def test_manifest_parser_gives_sources_or_a_file_line_usage_error(data: bytes) -> None:
    tried["manifests"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "git-repos.txt"
        path.write_bytes(data)
        try:
            manifest = load_manifest(path)
        except UsageError as exc:
            assert exc.message.startswith(f"{path}:") and exc.exit_code == 2
            return
        # a commit is a full SHA, or '' for a '-' line, which then says where to read it
        assert manifest.sources and all(
            len(s.commit) == 40 or (not s.commit and s.how) for s in manifest.sources
        )


_NAMES = st.one_of(
    st.sampled_from(
        ["0001-a.patch", "0002-b.patch", "x.diff", "README.md", "0003.rej", ".hidden", "a.patch"]
    ),
    st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True).filter(lambda n: n not in (".", "..")),
)
_PATCH = st.one_of(
    st.binary(max_size=120),
    st.just(
        b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] x\n\n"
        b"diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_NAMES, _PATCH, max_size=5))
def test_series_reader_gives_patches_or_a_usage_error_naming_the_file(files: dict[str, bytes]) -> None:
    tried["series"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        folder = ws.patch_dir("app")
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        try:
            patches = series_files(ws, "app")
        except UsageError as exc:
            assert any(exc.message.startswith(f"{folder / n}:") for n in files)
            return
        assert [p.name for p in patches] == sorted(n for n in files if n.endswith(".patch") and n[0] != ".")


def test_report_how_many_inputs_were_tried() -> None:
    print(f"\nproperty inputs tried: {tried}")  # pytest -s shows the figure
