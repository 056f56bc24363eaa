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
and the same three with `-turbo` appended (the Turborepo snippets of docs/keyless.md: tests/keyless.rs
finds each snippet by its info string, so the Nx and the turbo one of a CI system need two).
Each is written to a temporary file and checked there. A plain ```yaml block is not checked (use
it for fragments, e.g. an `env:` block to paste into a job).

Each check returns a list of problems (empty: passes), as in bicep_checks.py; test_workflows.py
breaks copies on purpose to prove each check can fail. `python workflow_checks.py` checks the
snippets of the repository (scripts/check-infra runs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# The Turborepo snippets: files of the same kinds.
SNIPPET_KINDS.update({f"{info}-turbo": kind for info, kind in list(SNIPPET_KINDS.items())})

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



# ---------------------------------------------------------------------------------------------
# The deploy job of deploy.yml: the order of its steps, their inputs, and the steps themselves run
# against stand-ins for az, curl and the handler
# ---------------------------------------------------------------------------------------------
#
# No Azure here, so the deploy job's scripts are run as GitHub runs them (`bash -e STEP`, with the
# job's and the step's environment) in a scratch workspace, with `az`, `curl`, `sleep` and the
# packaged `handler` replaced by stand-ins (FAKE below) that record every call and answer as a
# scenario says. That proves what the steps do with what Azure answers: the configuration check
# runs the packaged handler on the app settings the deployment will write, the deployment uses
# the same parameters, config-zip's own health check is tolerated but a failed deployment is not,
# and the health check refreshes unresolved Key Vault references a bounded number of times.

DEPLOY_WORKFLOW = Path(".github") / "workflows" / "deploy.yml"
DEPLOY_JOB = "deploy"
PACKAGE_ZIP = "dist/functionapp.zip"
DEPLOY_INPUTS = "scripts/deploy-inputs"
CHECK_COMMAND = ("check", "--functions", "--env-file")

# The app settings main.bicep writes that are known only once its resources exist; the
# configuration check cannot have them (scripts/deploy-inputs says so too).
SETTINGS_KNOWN_AFTER_DEPLOYMENT = frozenset({"AzureWebJobsStorage__accountName", "APPLICATIONINSIGHTS_CONNECTION_STRING", "AZURE_STORAGE_BLOB_ENDPOINT"})

# Every input the workflow offers: repository variable (or secret) -> the environment variable the
# deploy job maps it to -> the template parameter scripts/deploy-inputs makes of it, with an
# example value and the parameter value it must become. The secret is mapped by the two steps
# that need it, the variables by the job.
TRUST_POLICY_EXAMPLE = '\n{"rules": [\n  {"name": "web-main", "issuer": "https://token.actions.githubusercontent.com", "audience": "nx-cache",\n   "claims": {"repository": "acme/web", "ref": "refs/heads/main", "event_name": "push"}, "grant": {"teams": ["web"], "access": "read-write"}}\n]}\n'
WORKFLOW_INPUTS = (
    ("vars.NX_CACHE_APP_NAME", "APP_NAME", "appName", "acme-nx-cache", "acme-nx-cache"),
    ("vars.NX_CACHE_STORAGE_ACCOUNT", "CACHE_ACCOUNT", "cacheStorageAccountName", "acmenxcache", "acmenxcache"),
    ("vars.NX_CACHE_CONTAINER", "CACHE_CONTAINER", "cacheContainerName", "nx-cache", "nx-cache"),
    ("vars.NX_CACHE_STORAGE_RESOURCE_GROUP", "CACHE_RESOURCE_GROUP", "cacheStorageResourceGroup", "rg-cache", "rg-cache"),
    ("vars.NX_CACHE_TOKEN_SECRET_URI", "TOKEN_SECRET_URI", "tokenSecretKeyVaultUri", "https://kv-current.vault.azure.net/secrets/nx-cache-jwt-secret", "https://kv-current.vault.azure.net/secrets/nx-cache-jwt-secret"),
    ("vars.NX_CACHE_TOKEN_SECRET_RESOURCE_GROUP", "TOKEN_SECRET_RESOURCE_GROUP", "tokenSecretKeyVaultResourceGroup", "rg-vault", "rg-vault"),
    ("vars.NX_CACHE_TOKEN_PREVIOUS_SECRETS_URI", "TOKEN_PREVIOUS_SECRETS_URI", "tokenPreviousSecretsKeyVaultUri", "https://kv-previous.vault.azure.net/secrets/nx-cache-jwt-previous-secrets", "https://kv-previous.vault.azure.net/secrets/nx-cache-jwt-previous-secrets"),
    ("vars.NX_CACHE_TOKEN_PREVIOUS_SECRETS_RESOURCE_GROUP", "TOKEN_PREVIOUS_SECRETS_RESOURCE_GROUP", "tokenPreviousSecretsKeyVaultResourceGroup", "rg-previous-vault", "rg-previous-vault"),
    ("vars.NX_CACHE_GRANT_KEY_VAULT_SECRET_ACCESS", "GRANT_KEY_VAULT_SECRET_ACCESS", "grantKeyVaultSecretAccess", "false", False),
    ("vars.NX_CACHE_MODE", "MODE", "mode", "read-only", "read-only"),
    ("vars.NX_CACHE_MAX_ARTIFACT_SIZE_MIB", "MAX_ARTIFACT_SIZE_MIB", "maxArtifactSizeMiB", "2048", 2048),
    ("vars.NX_CACHE_RETENTION_DAYS", "RETENTION_DAYS", "retentionDays", "30", 30),
    ("vars.NX_CACHE_REVOKED_TOKENS", "REVOKED_TOKENS", "revokedTokenIds", " 3f2a9c, 77b0e1 ,,", ["3f2a9c", "77b0e1"]),
    ("vars.NX_CACHE_EXPIRED_GRACE", "EXPIRED_GRACE", "expiredGrace", "1d", "1d"),
    ("vars.NX_CACHE_TRUST_POLICY", "TRUST_POLICY", "trustPolicy", TRUST_POLICY_EXAMPLE, TRUST_POLICY_EXAMPLE),
)
SECRET_INPUT = ("secrets.NX_CACHE_JWT_SECRET", "TOKEN_SECRET", "tokenSecret", "s" * 44, "s" * 44)

# Scenarios for the inputs: environment of the deploy job -> what it must deploy.
REQUIRED_INPUTS = {"APP_NAME": "acme-nx-cache", "CACHE_ACCOUNT": "acmenxcache", "CACHE_CONTAINER": "nx-cache"}
INPUT_SCENARIOS = {
    "Key Vault, defaults": {**REQUIRED_INPUTS, "TOKEN_SECRET_URI": WORKFLOW_INPUTS[4][3]},
    "every variable": {env: example for _, env, _, example, _ in WORKFLOW_INPUTS},
    "secret as a secure parameter, blank policy": {**REQUIRED_INPUTS, "TOKEN_SECRET": SECRET_INPUT[3], "TRUST_POLICY": " \n "},
}

# The stand-in for az, curl, sleep and the handler. Every call is appended to calls.jsonl (with the
# files it was given, read at the time of the call); the answer is the first rule of plan.json
# for that program whose tokens all appear among the arguments and whose conditions on earlier
# calls hold.
FAKE = r"""
import json, os, stat, sys
state = os.environ["FAKE_STATE"]
program, args = sys.argv[1], sys.argv[2:]
calls_path = os.path.join(state, "calls.jsonl")
calls = [json.loads(line) for line in open(calls_path)] if os.path.exists(calls_path) else []
record = {"program": program, "args": args, "cwd": os.getcwd()}
if program in ("handler", "decoy-handler") and "--env-file" in args:
    path = args[args.index("--env-file") + 1]
    record["env_file"] = {"path": path, "mode": stat.S_IMODE(os.stat(path).st_mode), "text": open(path).read()}
for arg in args:
    if arg.startswith("@") and os.path.isfile(arg[1:]):
        record.setdefault("files", {})[arg] = {"mode": stat.S_IMODE(os.stat(arg[1:]).st_mode), "text": open(arg[1:]).read()}
with open(calls_path, "a") as out:
    out.write(json.dumps(record) + "\n")

def called(tokens):
    return sum(1 for c in calls if c["program"] == tokens[0] and all(t in c["args"] for t in tokens[1:]))

plan = json.load(open(os.path.join(state, "plan.json")))
for rule in plan.get(program, []):
    if not all(t in args for t in rule.get("when", [])):
        continue
    if any(called(t) < n for t, n in rule.get("after", [])):
        continue
    if any(called(t) >= n for t, n in rule.get("before", [])):
        continue
    if "body" in rule and "-o" in args:
        open(args[args.index("-o") + 1], "w").write(rule["body"])
    sys.stdout.write(rule.get("stdout", ""))
    sys.stderr.write(rule.get("stderr", ""))
    sys.exit(rule.get("exit", 0))
"""


@dataclass
class StepRun:
    """A step of the deploy job, run: its exit status, output, and the stand-ins' calls."""

    status: int
    output: str
    calls: list[dict]
    runner_temp: Path
    github_output: str

    def of(self, program: str, *tokens: str) -> list[dict]:
        return [c for c in self.calls if c["program"] == program and all(t in c["args"] for t in tokens)]


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(Path(path).read_text(encoding="utf-8"))


def deploy_steps(workflow: Path) -> tuple[dict[str, str], list[dict]]:
    """The deploy job's environment and steps."""
    job = ((load_yaml(workflow) or {}).get("jobs") or {}).get(DEPLOY_JOB) or {}
    return dict(job.get("env") or {}), [s for s in job.get("steps") or [] if isinstance(s, dict)]


def _find(steps: list[dict], needle: str) -> int | None:
    """Index of the first step whose script contains `needle`."""
    return next((i for i, s in enumerate(steps) if needle in str(s.get("run") or "")), None)


def _check_step(steps: list[dict]) -> int | None:
    return next((i for i, s in enumerate(steps) if re.search(r"\bhandler\"? check\b", str(s.get("run") or ""))), None)


STEP_MARKERS = {
    "package": "scripts/package",
    "deployment": "az deployment group create",
    "config-zip": "az functionapp deployment source config-zip",
    "health": "/health",
}


def step_index(steps: list[dict], which: str) -> int | None:
    return _check_step(steps) if which == "check" else _find(steps, STEP_MARKERS[which])


def deploy_order_problems(repo: Path = REPO) -> list[str]:
    """The configuration check runs after the package is built and before the deployment, on the
    output of scripts/deploy-inputs; the deployment uses the parameters of the same script; the
    token secret reaches both (and only them), every variable the job maps."""
    workflow = Path(repo) / DEPLOY_WORKFLOW
    env, steps = deploy_steps(workflow)
    found = []
    where = {which: step_index(steps, which) for which in ("package", "check", "deployment", "config-zip", "health")}
    for which, index in where.items():
        if index is None:
            found.append(f"deploy.yml: the deploy job has no {which} step" + (" (no step runs `handler check`)" if which == "check" else f" (no step runs `{STEP_MARKERS[which]}`)"))
    if None in where.values():
        return found
    if not where["package"] < where["check"] < where["deployment"] < where["config-zip"] < where["health"]:
        found.append(f"deploy.yml: the deploy job's steps must run package, check, deployment, config-zip, health in that order; they are at {where}")
    for which in ("check", "deployment"):
        step = steps[where[which]]
        if DEPLOY_INPUTS not in str(step.get("run")):
            found.append(f"deploy.yml: the {which} step does not take its inputs from {DEPLOY_INPUTS}")
        secret = (step.get("env") or {}).get(SECRET_INPUT[1])
        if secret != "${{ " + SECRET_INPUT[0] + " }}":
            found.append(f"deploy.yml: the {which} step does not map {SECRET_INPUT[0]} to {SECRET_INPUT[1]}")
    for index, step in enumerate(steps):
        if index not in (where["check"], where["deployment"]) and SECRET_INPUT[0] in json.dumps(step):
            found.append(f"deploy.yml: step {index + 1} gets {SECRET_INPUT[0]}, which only the check and the deployment need")
    if SECRET_INPUT[0] in json.dumps(env):
        found.append(f"deploy.yml: the deploy job's env holds {SECRET_INPUT[0]}: every step would get it")
    for variable, name, _, _, _ in WORKFLOW_INPUTS:
        if env.get(name) != "${{ " + variable + " }}":
            found.append(f"deploy.yml: the deploy job does not map {variable} to {name}")
    return found


def _fake_bin(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    fake = directory / "fake.py"
    fake.write_text(FAKE, encoding="utf-8")
    for program in ("az", "curl", "sleep"):
        wrapper = directory / program
        wrapper.write_text(_handler_wrapper(fake, program), encoding="utf-8")
        wrapper.chmod(0o755)
    return fake


def _handler_wrapper(fake: Path, program: str) -> str:
    # -S -E: no site packages, no PYTHON* variables; the stand-in needs neither, and starts faster.
    return f'#!/bin/sh\nexec "{sys.executable}" -S -E "{fake}" {program} "$@"\n'


def workspace(repo: Path, tmp: Path) -> Path:
    """A checkout as the deploy job sees it after `scripts/package`: the repository's scripts,
    dist/functionapp.zip whose `handler` is the stand-in, and two decoy handlers (the unzipped
    staging copy and cargo's output) that a check must not run instead of the packaged one."""
    fake = _fake_bin(tmp / "bin")
    root = tmp / "workspace"
    shutil.copytree(Path(repo) / "scripts", root / "scripts")
    (root / "dist" / "functionapp").mkdir(parents=True)
    with zipfile.ZipFile(root / PACKAGE_ZIP, "w") as archive:
        info = zipfile.ZipInfo("handler")
        info.external_attr = (0o100755 << 16)
        archive.writestr(info, _handler_wrapper(fake, "handler"))
        archive.writestr("host.json", "{}")
    for decoy in (root / "dist" / "functionapp" / "handler", root / "target" / "x86_64-unknown-linux-musl" / "release" / "handler"):
        decoy.parent.mkdir(parents=True, exist_ok=True)
        decoy.write_text(_handler_wrapper(fake, "decoy-handler"), encoding="utf-8")
        decoy.chmod(0o755)
    return root


def run_step(repo: Path, tmp: Path, which: str, values: dict[str, str], plan: dict[str, list[dict]]) -> StepRun:
    """Runs one step of the repository's deploy job, as GitHub would (`bash -e`), with `values`
    for the variables of the job's and the step's `env` (others are empty, as unset variables
    are) and the stand-ins answering by `plan`."""
    env_map, steps = deploy_steps(Path(repo) / DEPLOY_WORKFLOW)
    index = step_index(steps, which)
    if index is None:
        raise LookupError(f"no {which} step")
    step = steps[index]
    script = str(step.get("run") or "")
    if "${{" in script:
        raise ValueError(f"the {which} step expands an expression into its script")
    tmp.mkdir(parents=True, exist_ok=True)
    root = workspace(repo, tmp)
    state = tmp / "state"
    state.mkdir()
    (state / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    runner_temp = tmp / "runner-temp"
    runner_temp.mkdir()
    (tmp / "step.sh").write_text(script, encoding="utf-8")
    env = {
        "PATH": f"{tmp / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp),
        "FAKE_STATE": str(state),
        "RUNNER_TEMP": str(runner_temp),
        "GITHUB_OUTPUT": str(tmp / "github-output"),
        "GITHUB_STEP_SUMMARY": str(tmp / "step-summary"),
        "GITHUB_RUN_ID": "4242",
    }
    for name in [*env_map, *(step.get("env") or {})]:
        env[name] = values.get(name, "")
    result = subprocess.run(["bash", "-e", str(tmp / "step.sh")], cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)
    calls_path = state / "calls.jsonl"
    calls = [json.loads(line) for line in calls_path.read_text().splitlines()] if calls_path.exists() else []
    output_path = tmp / "github-output"
    return StepRun(result.returncode, result.stdout + result.stderr, calls, runner_temp, output_path.read_text() if output_path.exists() else "")


def parse_env_file(text: str) -> dict[str, str]:
    """`NAME=VALUE` lines as `handler check --env-file` reads them: `#` comments and blank lines
    ignored, the value the rest of the line with one pair of matching surrounding quotes removed."""
    settings = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        settings[name.strip()] = value
    return settings


def settings_mismatches(repo: Path, parameters: dict[str, Any], settings: dict[str, str], label: str) -> list[str]:
    """What main.bicep would write with `parameters` (evaluated offline, bicep_checks), against
    the settings the handler was asked to check. Every setting known before the deployment must be
    there with the template's value (the trust policy compacted, so compared as JSON)."""
    import bicep_checks  # noqa: PLC0415 - only the deploy checks need pycep

    templates = bicep_checks.load(Path(repo) / "infra")
    main = bicep_checks.main_template(templates)
    found = [f"{label}: '{name}' is not a parameter of main.bicep" for name in parameters if main is None or name not in main.params]
    try:
        written = bicep_checks.app_settings_under(templates, parameters)
        expected, unknown = {}, set()
        for name, (template, expr) in written.items():
            try:
                expected[name] = bicep_checks._value(template, expr, parameters)
            except bicep_checks._NotEvaluable:
                unknown.add(name)
    except bicep_checks._DeploymentFails as failure:
        return found + [f"{label}: main.bicep refuses these parameters: {failure.args[0] if failure.args else failure}"]
    if unknown != SETTINGS_KNOWN_AFTER_DEPLOYMENT:
        found.append(f"{label}: the settings known only after the deployment are {sorted(unknown)}, not {sorted(SETTINGS_KNOWN_AFTER_DEPLOYMENT)}")
    for name in sorted(set(expected) | set(settings)):
        if name not in expected:
            found.append(f"{label}: the checked settings have {name}, which main.bicep does not write with these parameters")
        elif name not in settings:
            found.append(f"{label}: main.bicep writes {name} = {json.dumps(expected[name])[:80]}, which is not checked")
        elif name == "NX_CACHE_TRUST_POLICY":
            if "\n" in settings[name] or json.loads(settings[name]) != json.loads(expected[name]):
                found.append(f"{label}: {name} checked as {settings[name][:80]!r}, not the deployed policy on one line")
        elif str(expected[name]) != settings[name]:
            found.append(f"{label}: {name} checked as {settings[name][:80]!r}, but main.bicep writes {str(expected[name])[:80]!r}")
    return found


def deploy_inputs_problems(repo: Path = REPO, tmp: Path | None = None) -> list[str]:
    """scripts/deploy-inputs, for every input scenario: the parameters are main.bicep's, each
    variable becomes its parameter, and the settings file holds exactly what main.bicep writes
    with those parameters (mode 600)."""
    found = []
    with tempfile.TemporaryDirectory(prefix="deploy-inputs-") as scratch:
        base = Path(tmp or scratch)
        for number, (label, values) in enumerate(INPUT_SCENARIOS.items()):
            out = base / f"inputs-{number}"
            result = subprocess.run(["bash", str(Path(repo) / DEPLOY_INPUTS), str(out)], env={"PATH": os.environ.get("PATH", ""), **values}, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                found.append(f"{DEPLOY_INPUTS} ({label}): exit status {result.returncode}: {result.stderr.strip()[:300]}")
                continue
            for name in ("parameters.json", "app-settings.env"):
                mode = stat.S_IMODE((out / name).stat().st_mode)
                if mode != 0o600:
                    found.append(f"{DEPLOY_INPUTS} ({label}): {name} has mode {mode:o}, not 600 (it may hold the secret)")
            parameters = {k: v["value"] for k, v in json.loads((out / "parameters.json").read_text())["parameters"].items()}
            settings = parse_env_file((out / "app-settings.env").read_text())
            found += settings_mismatches(repo, parameters, settings, f"{DEPLOY_INPUTS} ({label})")
            for _, name, param, example, value in (*WORKFLOW_INPUTS, SECRET_INPUT):
                if values.get(name) == example and parameters.get(param) != value:
                    found.append(f"{DEPLOY_INPUTS} ({label}): {name}={example!r} gives {param} = {parameters.get(param)!r}, not {value!r}")
    return found


def check_step_problems(repo: Path = REPO, tmp: Path | None = None) -> list[str]:
    """The configuration check runs the handler unpacked from dist/functionapp.zip (not a decoy),
    as `handler check --functions --env-file FILE`, on a mode-600 file holding the settings
    main.bicep writes from the deployment's parameters, removes the file, and fails the job with
    the handler's line when the handler refuses the configuration."""
    found = []
    with tempfile.TemporaryDirectory(prefix="check-step-") as scratch:
        base = Path(tmp or scratch)
        values = {**INPUT_SCENARIOS["every variable"], "TOKEN_SECRET": SECRET_INPUT[3], "RESOURCE_GROUP": "rg-app"}
        ok = run_step(repo, base / "ok", "check", values, {"handler": [{"stdout": "configuration OK\n"}]})
        runs = ok.of("handler")
        if ok.of("decoy-handler"):
            found.append("check step: runs a handler other than the one in dist/functionapp.zip (the staging copy or cargo's output)")
        if ok.status != 0:
            found.append(f"check step: fails on an accepted configuration (exit status {ok.status}): {ok.output[-400:]}")
        if len(runs) != 1:
            found.append(f"check step: runs the packaged handler {len(runs)} times, not once")
        else:
            args = runs[0]["args"]
            if tuple(args[:3]) != CHECK_COMMAND or len(args) != 4:
                found.append(f"check step: runs `handler {' '.join(args)}`, not `handler {' '.join(CHECK_COMMAND)} FILE`")
            env_file = runs[0].get("env_file")
            if env_file is None:
                found.append("check step: gives the handler no settings file")
            else:
                if env_file["mode"] != 0o600:
                    found.append(f"check step: the settings file has mode {env_file['mode']:o}, not 600 (it may hold the secret)")
                if not env_file["path"].startswith(str(ok.runner_temp)):
                    found.append(f"check step: the settings file {env_file['path']} is not under RUNNER_TEMP")
                if Path(env_file["path"]).exists():
                    found.append("check step: the settings file is left behind")
                deployed = run_step(repo, base / "deployed", "deployment", values, {"az": [{"when": ["deployment", "create"], "stdout": DEPLOYMENT_OUTPUTS}]})
                parameters = _deployed_parameters(deployed)
                if parameters is None:
                    found.append("check step: cannot compare with the deployment step, which passes no parameters file")
                else:
                    found += settings_mismatches(repo, parameters, parse_env_file(env_file["text"]), "check step (the deployment's parameters)")
        leftovers = [p.name for p in ok.runner_temp.iterdir() if p.name.startswith("deploy-inputs")]
        if leftovers:
            found.append(f"check step: leaves {leftovers} in RUNNER_TEMP")
        refusal = "handler: configuration error: NX_CACHE_TRUST_POLICY: rule 'web-main': a read-write rule needs event_name"
        refused = run_step(repo, base / "refused", "check", values, {"handler": [{"stderr": refusal + "\n", "exit": 1}]})
        if refused.status == 0:
            found.append("check step: passes although the handler refuses the configuration")
        elif refusal not in refused.output or "::error" not in refused.output:
            found.append(f"check step: a refused configuration does not end in an error annotation with the handler's line: {refused.output[-400:]}")
    return found


DEPLOYMENT_OUTPUTS = json.dumps({
    "cacheUrl": {"type": "String", "value": "https://acme-nx-cache.azurewebsites.net"},
    "teamCacheUrl": {"type": "String", "value": "https://acme-nx-cache.azurewebsites.net/teams/<team>"},
    "functionAppName": {"type": "String", "value": "acme-nx-cache"},
})


def _deployed_parameters(run: StepRun) -> dict[str, Any] | None:
    """The parameters of the run's `az deployment group create`, from its `@file` (read when az
    was called)."""
    for call in run.of("az", "deployment", "create"):
        for argument, content in (call.get("files") or {}).items():
            if argument.startswith("@"):
                return {k: v["value"] for k, v in json.loads(content["text"])["parameters"].items()}
    return None


def deployment_step_problems(repo: Path = REPO, tmp: Path | None = None) -> list[str]:
    """The deployment passes the parameters of scripts/deploy-inputs as a mode-600 file (not on
    the command line: the secret), removes it, and hands the outputs to the later steps."""
    found = []
    with tempfile.TemporaryDirectory(prefix="deployment-step-") as scratch:
        base = Path(tmp or scratch)
        values = {**INPUT_SCENARIOS["secret as a secure parameter, blank policy"], "RESOURCE_GROUP": "rg-app"}
        run = run_step(repo, base / "run", "deployment", values, {"az": [{"when": ["deployment", "create"], "stdout": DEPLOYMENT_OUTPUTS}]})
        if run.status != 0:
            return [f"deployment step: fails (exit status {run.status}): {run.output[-400:]}"]
        calls = run.of("az", "deployment", "create")
        if len(calls) != 1:
            return [f"deployment step: runs `az deployment group create` {len(calls)} times"]
        args = calls[0]["args"]
        if any(SECRET_INPUT[3] in arg for arg in args):
            found.append("deployment step: the token secret is on az's command line")
        files = [c for a, c in (calls[0].get("files") or {}).items() if a.startswith("@")]
        if not files:
            found.append("deployment step: passes no parameters file (`--parameters @FILE`)")
        elif files[0]["mode"] != 0o600:
            found.append(f"deployment step: the parameters file has mode {files[0]['mode']:o}, not 600")
        parameters = _deployed_parameters(run)
        reference = base / "reference"
        subprocess.run(["bash", str(Path(repo) / DEPLOY_INPUTS), str(reference)], env={"PATH": os.environ.get("PATH", ""), **values}, capture_output=True, check=False)
        if parameters is not None and (reference / "parameters.json").exists():
            expected = {k: v["value"] for k, v in json.loads((reference / "parameters.json").read_text())["parameters"].items()}
            if parameters != expected:
                found.append(f"deployment step: deploys other parameters than {DEPLOY_INPUTS} makes: {sorted(set(parameters.items()) ^ set(expected.items()))[:4]}")
        for flag, value in (("--resource-group", "rg-app"), ("--template-file", "infra/main.bicep")):
            if flag not in args or args[args.index(flag) + 1] != value:
                found.append(f"deployment step: az deployment group create lacks {flag} {value}")
        if [p.name for p in run.runner_temp.iterdir() if p.name.startswith("deploy-inputs")]:
            found.append("deployment step: leaves the parameters file in RUNNER_TEMP")
        for line in ("cache_url=https://acme-nx-cache.azurewebsites.net", "app_name=acme-nx-cache"):
            if line not in run.github_output.splitlines():
                found.append(f"deployment step: does not output {line}")
        missing = run_step(repo, base / "no-group", "deployment", {**values, "RESOURCE_GROUP": ""}, {})
        if missing.status == 0 or missing.of("az"):
            found.append("deployment step: runs without vars.AZURE_RESOURCE_GROUP")
    return found


CONFIG_ZIP_TOLERATED = (
    # azure-cli 2.91.0, appservice/custom.py, check_flex_app_after_deployment (exit status 3, then 1).
    (3, "ERROR: Failed to fetch host key to check for function app status\n"),
    (1, "ERROR: Deployment was successful but the app appears to be unhealthy. Please check the app logs.\n"),
)
CONFIG_ZIP_FAILURES = (
    # _check_zip_deployment_status_flex and enable_zip_deploy_flex: the package is not deployed.
    (1, "ERROR: Zip deployment failed. {'status': 3}. These are the deployment logs: \n[]\n"),
    (1, "ERROR: There may be an ongoing deployment. Please track your deployment in https://acme-nx-cache.scm.azurewebsites.net/api/deployments/latest\n"),
)


# config-zip tried again after a failure: at least this many attempts in all, at most this many,
# and at least this long between two (a role assignment takes a minute or two to apply).
CONFIG_ZIP_ATTEMPTS = (2, 5)
CONFIG_ZIP_PAUSE_SECONDS = 60


def _seconds_slept_between(run: StepRun, program_tokens: tuple[str, ...]) -> list[float]:
    """For each pair of consecutive calls matching `program_tokens`, the seconds `sleep` was asked
    for between them."""
    gaps, current, seen = [], 0.0, False
    for call in run.calls:
        if call["program"] == program_tokens[0] and all(t in call["args"] for t in program_tokens[1:]):
            if seen:
                gaps.append(current)
            seen, current = True, 0.0
        elif call["program"] == "sleep" and seen:
            try:
                current += float(call["args"][0]) if call["args"] else 0.0
            except ValueError:
                pass
    return gaps


def config_zip_problems(repo: Path = REPO, tmp: Path | None = None) -> list[str]:
    """The package step tolerates exactly the two failures of config-zip's own health check on
    Flex Consumption (the package is deployed by then); any other failure is tried again, a
    bounded number of times and minutes apart (a first deployment's role on the deployment
    container may still be propagating), and fails the step when it persists."""
    found = []
    config_zip = ("az", "config-zip")
    with tempfile.TemporaryDirectory(prefix="config-zip-step-") as scratch:
        base = Path(tmp or scratch)
        values = {"RESOURCE_GROUP": "rg-app", "DEPLOYED_APP": "acme-nx-cache"}
        cases = [(0, "", True), *((e, m, True) for e, m in CONFIG_ZIP_TOLERATED), *((e, m, False) for e, m in CONFIG_ZIP_FAILURES)]
        for number, (exit_status, stderr, passes) in enumerate(cases):
            run = run_step(repo, base / f"case-{number}", "config-zip", values, {"az": [{"when": ["config-zip"], "stderr": stderr, "exit": exit_status}]})
            calls = run.of(*config_zip)
            what = stderr.strip().splitlines()[0] if stderr else "success"
            if not calls or any("--src" not in c["args"] or c["args"][c["args"].index("--src") + 1] != PACKAGE_ZIP for c in calls):
                found.append(f"config-zip step ({what}): does not deploy {PACKAGE_ZIP} with config-zip")
            if passes and len(calls) != 1:
                found.append(f"config-zip step ({what}): runs config-zip {len(calls)} times, although the first run deployed the package")
            if passes and run.status != 0:
                found.append(f"config-zip step: fails on `{what}` (exit status {exit_status}), which leaves the package deployed; the health check must decide")
            if not passes and run.status == 0:
                found.append(f"config-zip step: passes on `{what}`, a failed deployment")
            if not passes:
                low, high = CONFIG_ZIP_ATTEMPTS
                if len(calls) < low:
                    found.append(f"config-zip step ({what}): does not try again after a failure (a first deployment's role may still be propagating)")
                elif len(calls) > high:
                    found.append(f"config-zip step ({what}): runs config-zip {len(calls)} times; it must give up after at most {high}")
                gaps = _seconds_slept_between(run, config_zip)
                if any(gap < CONFIG_ZIP_PAUSE_SECONDS for gap in gaps):
                    found.append(f"config-zip step ({what}): tries again after {gaps} seconds; at least {CONFIG_ZIP_PAUSE_SECONDS} apart")
            if stderr and stderr.strip() not in run.output:
                found.append(f"config-zip step ({what}): hides az's message")
        # The first deployment's race: the first attempt fails, the next one deploys the package.
        for number, (exit_status, stderr) in enumerate(CONFIG_ZIP_FAILURES):
            plan = {"az": [
                {"when": ["config-zip"], "before": [[list(config_zip), 1]], "stderr": stderr, "exit": exit_status},
                {"when": ["config-zip"]},
            ]}
            run = run_step(repo, base / f"race-{number}", "config-zip", values, plan)
            what = stderr.strip().splitlines()[0]
            if run.status != 0:
                found.append(f"config-zip step: fails when `{what}` is followed by a successful deployment on the next attempt")
            if len(run.of(*config_zip)) != 2:
                found.append(f"config-zip step: runs config-zip {len(run.of(*config_zip))} times when the second attempt deploys the package (`{what}` first)")
    return found


APP_ID = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-app/providers/Microsoft.Web/sites/acme-nx-cache"
REFERENCES_API = "api-version=2022-03-01"


def _health_plan(*, healthy_after: list | None, references: str, resolved_after: list | None) -> dict[str, list[dict]]:
    """Stand-ins for the health check: /health answers 503 until the calls in `healthy_after` have
    happened (never, when None), the Key Vault references are `references` until the calls in
    `resolved_after` have happened."""
    unhealthy = {"when": ["--max-time"], "body": "not ready: the cache storage is unavailable (the handler's log says why; `handler doctor` checks it)", "stdout": "503"}
    healthy = {"when": ["--max-time"], "body": "ok", "stdout": "200"}
    resolved = json.dumps({"value": [{"name": "NX_CACHE_JWT_SECRET", "properties": {"status": "Resolved", "details": "Reference has been successfully resolved."}}]})
    plan: dict[str, list[dict]] = {"curl": [], "az": [{"when": ["functionapp", "show"], "stdout": APP_ID + "\n"}]}
    if healthy_after is not None:
        plan["curl"].append({**healthy, "after": healthy_after})
    plan["curl"].append(unhealthy)
    if resolved_after is not None:
        plan["az"].append({"when": ["rest", "get"], "after": resolved_after, "stdout": resolved})
    plan["az"].append({"when": ["rest", "get"], "stdout": references})
    return plan


UNRESOLVED = json.dumps({"value": [
    {"name": "NX_CACHE_JWT_SECRET", "properties": {"status": "AccessToKeyVaultDenied", "details": "Key Vault reference was not able to be resolved because site was denied access to Key Vault reference's vault."}},
    {"name": "NX_CACHE_JWT_PREVIOUS_SECRETS", "properties": {"status": "Resolved", "details": "Reference has been successfully resolved."}},
]})
NO_REFERENCES = json.dumps({"value": []})
REFRESH = ["az", "rest", "post"]
RESTART = ["az", "functionapp", "restart"]


HEALTH_SCENARIOS = ("healthy", "recovers", "never", "storage")


def health_check_problems(repo: Path = REPO, tmp: Path | None = None, only: tuple[str, ...] = HEALTH_SCENARIOS) -> list[str]:
    """The health check waits for /health 200 without hiding a 503's body; while it is not 200 and
    a Key Vault reference is not Resolved, it refreshes the references and restarts the app, at
    most 3 times and not back to back; it fails with what it saw. `only`: some of the scenarios
    (healthy at once; a reference that resolves after a refresh; one that never does; a storage
    problem with every reference resolved)."""
    found = []
    values = {"RESOURCE_GROUP": "rg-app", "DEPLOYED_APP": "acme-nx-cache", "CACHE_URL": "https://acme-nx-cache.azurewebsites.net"}
    refresh_url = f"{APP_ID}/config/configreferences/appsettings/refresh?{REFERENCES_API}"
    status_url = f"{APP_ID}/config/configreferences/appsettings?{REFERENCES_API}"
    with tempfile.TemporaryDirectory(prefix="health-step-") as scratch:
        base = Path(tmp or scratch)

        if "healthy" in only:
            run = run_step(repo, base / "healthy", "health", values, _health_plan(healthy_after=[], references=NO_REFERENCES, resolved_after=None))
            if run.status != 0 or run.of(*REFRESH) or run.of(*RESTART):
                found.append(f"health step: a healthy app fails the step or gets refreshed (exit status {run.status}): {run.output[-300:]}")

        if "recovers" in only:
            # The reference resolves after one refresh, and the app is healthy after the restart.
            run = run_step(repo, base / "recovers", "health", values, _health_plan(healthy_after=[[RESTART, 1]], references=UNRESOLVED, resolved_after=[[REFRESH, 1]]))
            refreshes, restarts = run.of(*REFRESH), run.of(*RESTART)
            if not refreshes:
                found.append("health step: does not refresh the Key Vault references while one is not Resolved (POST .../config/configreferences/appsettings/refresh)")
            elif refreshes[0]["args"][refreshes[0]["args"].index("--url") + 1] != refresh_url:
                found.append(f"health step: refreshes {refreshes[0]['args']}, not {refresh_url}")
            if not restarts:
                found.append("health step: does not restart the app after refreshing the references")
            if run.status != 0:
                found.append(f"health step: fails although the app is healthy after a refresh and a restart: {run.output[-300:]}")
            if len(refreshes) > 1:
                found.append(f"health step: refreshes {len(refreshes)} times, although one did it")
            gets = run.of("az", "rest", "get")
            if gets and gets[0]["args"][gets[0]["args"].index("--url") + 1] != status_url:
                found.append(f"health step: reads the references' statuses at {gets[0]['args']}, not {status_url}")
            positions = [i for i, c in enumerate(run.calls) if c["program"] == "az" and ({"post"} <= set(c["args"]) or "restart" in c["args"])]
            kinds = ["refresh" if "post" in run.calls[i]["args"] else "restart" for i in positions]
            if kinds[:2] == ["restart", "refresh"]:
                found.append("health step: restarts before it refreshes the references")

        if "never" in only:
            # It never resolves: bounded refreshes, spaced, then a failure that says what was seen.
            run = run_step(repo, base / "never", "health", values, _health_plan(healthy_after=None, references=UNRESOLVED, resolved_after=None))
            refreshes = run.of(*REFRESH)
            if run.status == 0:
                found.append("health step: passes although /health never answers 200")
            if not 1 <= len(refreshes) <= 3:
                found.append(f"health step: refreshes {len(refreshes)} times while a reference stays unresolved; expected at most 3 (and at least 1)")
            attempts_between = []
            count = 0
            for call in run.calls:
                if call["program"] == "curl":
                    count += 1
                elif call["program"] == "az" and "post" in call["args"]:
                    attempts_between.append(count)
            if any(b - a < 2 for a, b in zip(attempts_between, attempts_between[1:])):
                found.append(f"health step: refreshes back to back (after health checks {attempts_between})")
            errors = "\n".join(line for line in run.output.splitlines() if line.startswith("::error"))
            for needle in ("NX_CACHE_JWT_SECRET: AccessToKeyVaultDenied", "503", "not ready: the cache storage is unavailable"):
                if needle not in errors:
                    found.append(f"health step: its failure (the ::error lines) does not show `{needle}`")
            if "NX_CACHE_JWT_PREVIOUS_SECRETS: Resolved" in run.output:
                found.append("health step: reports a resolved reference as unresolved")
            if len(run.of("curl")) > 40:
                found.append(f"health step: checks /health {len(run.of('curl'))} times; it must give up")
            curl = run.of("curl")
            if curl and any(arg.startswith("-") and not arg.startswith("--") and "f" in arg for arg in curl[0]["args"]):
                found.append("health step: curl -f hides the body of a 503")

        if "storage" in only:
            # Not a Key Vault problem: no refresh, no restart.
            run = run_step(repo, base / "storage", "health", values, _health_plan(healthy_after=None, references=NO_REFERENCES, resolved_after=None))
            if run.of(*REFRESH) or run.of(*RESTART):
                found.append("health step: refreshes or restarts although every Key Vault reference is resolved")
            if run.status == 0:
                found.append("health step: passes although /health never answers 200")
    return found


# ---------------------------------------------------------------------------------------------
# docs/deploy.md: its settings file for `handler check`, and its az commands
# ---------------------------------------------------------------------------------------------

DEPLOY_DOC = Path("docs") / "deploy.md"
# The placeholders of the guide's settings example, as the parameters they stand for.
DOC_SETTINGS_PARAMETERS = {
    "appName": "$APP",
    "cacheStorageAccountName": "$ACCOUNT",
    "cacheContainerName": "$CONTAINER",
    "tokenSecretKeyVaultUri": "$SECRET_URI",
}


def doc_settings_example(repo: Path = REPO) -> str | None:
    """The body of the guide's `cat > app-settings.env <<EOF ... EOF`."""
    text = (Path(repo) / DEPLOY_DOC).read_text(encoding="utf-8")
    match = re.search(r"^cat > app-settings\.env <<EOF\n(.*?)^EOF$", text, re.M | re.S)
    return match.group(1) if match else None


def doc_settings_problems(repo: Path = REPO) -> list[str]:
    """The settings file the guide writes before `handler check` (step 3) is what main.bicep
    writes with the guide's parameters and the defaults: no setting missing, none misspelt, no
    value other than the template's."""
    example = doc_settings_example(repo)
    if example is None:
        return [f"{DEPLOY_DOC}: no `cat > app-settings.env <<EOF` example for `handler check`"]
    return settings_mismatches(repo, DOC_SETTINGS_PARAMETERS, parse_env_file(example), f"{DEPLOY_DOC} (settings for handler check)")


# The guides whose commands are checked below.
GUIDES = (DEPLOY_DOC, Path("docs") / "migrate-from-nx-azure-cache.md")
# Hosts a command must not spell out: the public cloud's, wrong in every other cloud. `az rest`
# puts the current cloud's Resource Manager endpoint before a URL that starts with a resource id;
# Microsoft Graph's is `az cloud show --query endpoints.microsoftGraphResourceId`.
CLOUD_HOSTS = ("https://management.azure.com", "https://graph.microsoft.com")
_PERIOD = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")
_AGO = re.compile(r"ago\((\d+)([dhm])\)")


def _minutes(number: str, unit: str) -> int:
    return int(number) * {"d": 1440, "h": 60, "m": 1}[unit]


def _commands(text: str, start: str) -> list[tuple[int, str]]:
    """Each command of `text` that begins with `start`, with its continuation lines: (line, text)."""
    line = r"(?:[^\n\\]|\\(?!\n))*"  # up to the end of the line, or to a backslash that continues it
    found = [(text[: m.start()].count("\n") + 1, m.group(0)) for m in re.finditer(re.escape(start) + line + r"(?:\\\n" + line + ")*", text)]
    # A command quoted in prose ends at its closing backtick.
    return [(number, command.split("`")[0]) for number, command in found]


def doc_command_problems(repo: Path = REPO) -> list[str]:
    """Commands of the guides that azure-cli 2.91.0 or Core Tools take otherwise:
    - `az monitor app-insights query` takes the component as `--apps` (the application-insights
      extension's _params.py; `--app` works only as an abbreviation), and looks at the last hour
      only unless `--offset` widens it (custom.py `execute_query(..., offset='1h')`): a query over
      `ago(1d)` needs `--offset 24h` or more;
    - `func azure functionapp publish` needs `--custom` for a package without local.settings.json
      (Core Tools, GlobalCoreToolsSettings: "Can't determine project language from files");
    - no command names the public cloud's Resource Manager or Graph host.
    And the check runs before the deployment."""
    found = []
    for guide in GUIDES:
        path = Path(repo) / guide
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        for line, command in _commands(text, "az monitor app-insights query"):
            if re.search(r"\s--app\b(?!s)", command) or "--apps" not in command:
                found.append(f"{guide}:{line}: `az monitor app-insights query` takes the component as --apps")
            spans = [_minutes(n, u) for n, u in _AGO.findall(command)]
            offset = re.search(r"--offset\s+(\S+)", command)
            covered = 60
            if offset:
                period = _PERIOD.match(offset.group(1))
                covered = sum(_minutes(n, u) for n, u in zip(period.groups(), "dhm") if n) if period and any(period.groups()) else 0
            if spans and max(spans) > covered and "--start-time" not in command:
                found.append(f"{guide}:{line}: `az monitor app-insights query` looks at the last {covered} minutes only, and the query asks for {max(spans)}: pass --offset")
        for line, command in _commands(text, "func azure functionapp publish"):
            if "--custom" not in command:
                found.append(f"{guide}:{line}: `func azure functionapp publish` needs --custom (a custom handler; the package has no local.settings.json)")
        for number, text_line in enumerate(text.splitlines(), 1):
            for host in CLOUD_HOSTS:
                if host in text_line and ("az rest" in text_line or "--url" in text_line):
                    found.append(f"{guide}:{number}: a command names {host}, the public cloud's host: use the current cloud's (az rest with a resource id, az cloud show)")
    text = (Path(repo) / DEPLOY_DOC).read_text(encoding="utf-8")
    check = re.search(r"^\S*handler check --functions --env-file ", text, re.M)
    deploy = re.search(r"^az deployment group create ", text, re.M)
    if check is None or deploy is None or check.start() > deploy.start():
        found.append(f"{DEPLOY_DOC}: the manual path must run `handler check --functions --env-file` before `az deployment group create`")
    return found


def deploy_job_problems(repo: Path = REPO) -> list[str]:
    """Every check of the deploy job."""
    return [
        *deploy_order_problems(repo),
        *deploy_inputs_problems(repo),
        *check_step_problems(repo),
        *deployment_step_problems(repo),
        *config_zip_problems(repo),
        *health_check_problems(repo),
        *doc_settings_problems(repo),
        *doc_command_problems(repo),
    ]


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
