"""Offline checks of the CI files: the GitHub Actions workflows in .github/workflows/, and every CI
file the docs give as a fenced code block.

The workflows hold `id-token: write` for Azure, so what they run must not move under them:
- every action is pinned to a full commit SHA, with the release it is in a `# vX.Y.Z` comment, and
  the pair is one of VERIFIED_PINS (a SHA checked against two independent sources for that tag);
- every actions/checkout sets `persist-credentials: false` (nothing here pushes, so no token is
  left in .git/config for later steps, or for an artifact, to leak);
- zizmor (offline audits: unpinned actions, credential persistence, template injection, cache
  poisoning, dangerous triggers, ...) reports nothing;
- the file validates against the GitHub workflow schema (check-jsonschema's vendored
  `vendor.github-workflows`, so no network is needed).

CI snippets in the docs are held to the same checks. Convention: a fenced code block in README.md
or docs/*.md whose info string is exactly one of SNIPPET_KINDS is a complete file of that kind:
  ```yaml github-workflow     a GitHub Actions workflow: the checks above
  ```yaml azure-pipelines     an azure-pipelines.yml: schema vendor.azure-pipelines
  ```yaml gitlab-ci           a .gitlab-ci.yml: schema vendor.gitlab-ci
Each is written to a temporary file and checked there. A plain ```yaml block is not checked (use
it for fragments, e.g. an `env:` block to paste into a job).

Each check returns a list of problems (empty: passes), as in bicep_checks.py; test_workflows.py
breaks copies on purpose to prove each check can fail. `python workflow_checks.py` checks the
snippets of the repository (scripts/check-infra runs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[2]

# (action, commit) -> the release tag whose commit it is. Each was confirmed in two independent
# public sources (workflows and reviews that pin with a version comment, one of which said it had
# resolved the tag itself). Bumping an action means adding its new pair here after the same check.
VERIFIED_PINS = {
    ("actions/checkout", "11d5960a326750d5838078e36cf38b85af677262"): "v4.4.0",
    ("actions/setup-node", "49933ea5288caeca8642d1e84afbd3f7d6820020"): "v4.4.0",
    ("actions/cache", "0057852bfaa89a56745cba8c7296529d2fc39830"): "v4.3.0",
    ("azure/login", "a457da9ea143d694b1b9c7c869ebb04ebe844ef5"): "v2.3.0",
}

# info string -> (kind, check-jsonschema arguments). The transforms and regex variant are the ones
# check-jsonschema's own pre-commit hooks use for these schemas (GitLab's !reference tags, Azure's
# ${{ }} template expressions).
SNIPPET_KINDS = {
    "yaml github-workflow": ("github-workflow", ["--builtin-schema", "vendor.github-workflows"]),
    "yaml azure-pipelines": (
        "azure-pipelines",
        ["--builtin-schema", "vendor.azure-pipelines", "--data-transform", "azure-pipelines", "--regex-variant", "nonunicode"],
    ),
    "yaml gitlab-ci": (
        "gitlab-ci",
        ["--builtin-schema", "vendor.gitlab-ci", "--data-transform", "gitlab-ci", "--regex-variant", "nonunicode"],
    ),
}
GITHUB_SCHEMA_ARGS = SNIPPET_KINDS["yaml github-workflow"][1]

USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(['\"]?)(?P<ref>[^\s'\"#]+)\1\s*(?:#\s*(?P<comment>.*))?$")
SHA = re.compile(r"[0-9a-f]{40}")
VERSION = re.compile(r"v\d+(\.\d+)*")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


# ---------------------------------------------------------------------------------------------
# The tools (installed by scripts/check-infra next to this venv's python)
# ---------------------------------------------------------------------------------------------


def tool(name: str) -> str:
    """The venv's copy of a tool, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed (scripts/check-infra installs it from tests/infra/requirements.txt)")
    return found


def run(command: list[str]) -> tuple[int, str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, "NO_COLOR": "1"})
    return result.returncode, (result.stdout + result.stderr).strip()


def zizmor_problems(path: Path, label: str | None = None) -> list[str]:
    """zizmor's offline audits of one file; any finding (or a file it cannot read) is a problem."""
    code, output = run([tool("zizmor"), "--offline", "--quiet", "--color", "never", "--no-progress", str(path)])
    return [] if code == 0 else [f"{label or path.name}: zizmor --offline (exit status {code}):\n{output}"]


def schema_problems(path: Path, arguments: list[str], label: str | None = None) -> list[str]:
    """check-jsonschema of one file against one of its vendored schemas."""
    code, output = run([tool("check-jsonschema"), "--color", "never", *arguments, str(path)])
    return [] if code == 0 else [f"{label or path.name}: check-jsonschema {' '.join(arguments)} (exit status {code}):\n{output}"]


# ---------------------------------------------------------------------------------------------
# Structural checks of one workflow file
# ---------------------------------------------------------------------------------------------


def workflow_files(repo: Path = REPO) -> list[Path]:
    directory = Path(repo) / ".github" / "workflows"
    return sorted(p for p in directory.glob("*") if p.suffix in (".yml", ".yaml"))


def pin_problems(path: Path, label: str | None = None) -> list[str]:
    """Every `uses:` of a remote action names a full commit SHA and its release in a comment, and
    that pair is a verified one."""
    label = label or path.name
    found = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        match = USES.match(line)
        if not match:
            continue
        ref, comment = match.group("ref"), (match.group("comment") or "").strip()
        if ref.startswith("./") or ref.startswith("docker://"):
            continue  # a local action or an image: nothing to pin here
        where = f"{label}:{number}: uses: {ref}"
        action, _, revision = ref.partition("@")
        if not SHA.fullmatch(revision):
            found.append(f"{where}: not pinned to a full 40-hex commit SHA (a tag or branch can be moved)")
            continue
        version = comment.split()[0] if comment else ""
        if not VERSION.fullmatch(version):
            found.append(f"{where}: no `# vX.Y.Z` comment naming the release of that commit")
            continue
        owner_repo = "/".join(action.split("/")[:2])
        verified = VERIFIED_PINS.get((owner_repo, revision))
        if verified is None:
            found.append(f"{where}: {owner_repo}@{revision} is not in VERIFIED_PINS (tests/infra/workflow_checks.py); check that it is the commit of {version} in two independent sources, then add it")
        elif verified != version:
            found.append(f"{where}: the comment says {version}, but {revision} is {owner_repo} {verified}")
    return found


def _steps(document: object):
    jobs = document.get("jobs") if isinstance(document, dict) else None
    for job_name, job in (jobs or {}).items():
        for index, step in enumerate((job or {}).get("steps") or []):
            if isinstance(step, dict):
                yield job_name, index, step


def checkout_problems(path: Path, label: str | None = None) -> list[str]:
    """Every actions/checkout step sets persist-credentials: false."""
    label = label or path.name
    try:
        document = YAML(typ="safe", pure=True).load(Path(path).read_text(encoding="utf-8"))
    except Exception as error:  # noqa: BLE001 - any YAML error is the finding
        return [f"{label}: not YAML: {str(error).splitlines()[0]}"]
    found = []
    for job, index, step in _steps(document):
        uses = str(step.get("uses") or "")
        if not uses.startswith("actions/checkout@"):
            continue
        persist = (step.get("with") or {}).get("persist-credentials")
        if persist is not False and str(persist).lower() != "false":
            found.append(f"{label}: job '{job}' step {index + 1} ({uses.split('@')[0]}) must set persist-credentials: false")
    return found


def github_workflow_problems(paths: list[Path], labels: dict[Path, str] | None = None) -> list[str]:
    """All the checks of a GitHub workflow: structure, zizmor, schema."""
    labels = labels or {}
    found = []
    for path in paths:
        label = labels.get(path)
        found += pin_problems(path, label)
        found += checkout_problems(path, label)
        found += zizmor_problems(path, label)
        found += schema_problems(path, GITHUB_SCHEMA_ARGS, label)
    return found


def workflow_problems(repo: Path = REPO) -> list[str]:
    """The repository's workflows."""
    paths = workflow_files(repo)
    if not paths:
        return [f"no workflow in {Path(repo) / '.github' / 'workflows'}"]
    return github_workflow_problems(paths)


# ---------------------------------------------------------------------------------------------
# CI snippets in the docs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snippet:
    source: str  # file, relative to the repository
    line: int  # line of the opening fence
    info: str  # the info string
    text: str

    @property
    def label(self) -> str:
        return f"{self.source}:{self.line} ({self.info})"


def fenced_blocks(markdown: str) -> list[tuple[int, str, str]]:
    """(line of the opening fence, info string, content) of every fenced code block, CommonMark
    style: a fence is 3+ backticks or tildes indented at most 3 spaces; the block ends at a fence
    of the same character at least as long with nothing after it, or at the end of the file."""
    blocks = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening or (opening.group("fence")[0] == "`" and "`" in opening.group("info")):
            i += 1
            continue
        fence, indent = opening.group("fence"), len(opening.group("indent"))
        body = []
        j = i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if (
                closing
                and closing.group("fence")[0] == fence[0]
                and len(closing.group("fence")) >= len(fence)
                and not closing.group("info").strip()
            ):
                break
            line = lines[j]
            strip = len(line) - len(line.lstrip(" "))
            body.append(line[min(indent, strip):])
            j += 1
        blocks.append((i + 1, opening.group("info").strip(), "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def doc_files(repo: Path = REPO) -> list[Path]:
    repo = Path(repo)
    return [p for p in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))] if p.is_file()]


def ci_snippets(repo: Path = REPO) -> list[Snippet]:
    snippets = []
    for path in doc_files(repo):
        for line, info, text in fenced_blocks(path.read_text(encoding="utf-8")):
            if info in SNIPPET_KINDS:
                snippets.append(Snippet(path.relative_to(repo).as_posix(), line, info, text))
    return snippets


def unrecognized_tag_problems(repo: Path = REPO) -> list[str]:
    """A line that looks like a tagged opening fence but was not read as one (e.g. indented 4 or
    more spaces inside a list item) would escape the checks: refuse it."""
    recognized = {(s.source, s.line) for s in ci_snippets(repo)}
    tagged = re.compile(r"^\s*(`{3,}|~{3,})\s*(" + "|".join(map(re.escape, SNIPPET_KINDS)) + r")\s*$")
    found = []
    for path in doc_files(repo):
        source = path.relative_to(repo).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if tagged.match(line) and (source, number) not in recognized:
                found.append(f"{source}:{number}: looks like a CI snippet but is not a top-level fenced block (indent it at most 3 spaces)")
    return found


def snippet_problems(repo: Path = REPO) -> list[str]:
    """Every CI snippet of the docs, checked as the file it claims to be."""
    snippets = ci_snippets(repo)
    found = unrecognized_tag_problems(repo)
    with tempfile.TemporaryDirectory(prefix="ci-snippets-") as tmp:
        by_kind: dict[str, list[tuple[Path, Snippet]]] = {}
        for number, snippet in enumerate(snippets, 1):
            kind, _ = SNIPPET_KINDS[snippet.info]
            # One file per snippet, named after where it comes from, so findings point there.
            stem = re.sub(r"[^A-Za-z0-9]+", "-", f"{snippet.source}-line-{snippet.line}").strip("-")
            path = Path(tmp) / f"{number:03d}-{stem}.yml"
            path.write_text(snippet.text, encoding="utf-8")
            by_kind.setdefault(snippet.info, []).append((path, snippet))
        for info, items in by_kind.items():
            paths = [path for path, _ in items]
            labels = {path: snippet.label for path, snippet in items}
            if SNIPPET_KINDS[info][0] == "github-workflow":
                problems = github_workflow_problems(paths, labels)
            else:
                problems = [p for path in paths for p in schema_problems(path, SNIPPET_KINDS[info][1], labels[path])]
            for problem in problems:
                for path, label in labels.items():
                    problem = problem.replace(str(path), label)
                found.append(problem)
    return found


def main(argv: list[str]) -> int:
    repo = Path(argv[1]) if len(argv) > 1 else REPO
    snippets = ci_snippets(repo)
    kinds = ", ".join(f"`{info}`" for info in SNIPPET_KINDS)
    if not snippets and not unrecognized_tag_problems(repo):
        print(f"no CI snippets in README.md or docs/*.md (fenced blocks tagged {kinds})")
        return 0
    for snippet in snippets:
        print(f"checking {snippet.label}")
    problems = snippet_problems(repo)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in the CI snippets of the docs", file=sys.stderr)
        return 1
    print(f"{len(snippets)} CI snippet(s) pass")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
