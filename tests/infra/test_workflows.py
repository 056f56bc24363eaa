"""Offline tests of the CI files: the workflows pass every check, every check fails on a copy broken
on purpose (mutation tests), and CI snippets in the docs are extracted and held to the same
checks (a sample doc with a bad snippet fails, a good one passes).

Run with scripts/check-infra (it makes the venv with the pinned zizmor and check-jsonschema).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import workflow_checks as checks

REPO = checks.REPO
DEPLOY = REPO / ".github" / "workflows" / "deploy.yml"


def assert_found(found: list[str], *needles: str) -> None:
    assert found, "the check found nothing"
    for needle in needles:
        assert any(needle in problem for problem in found), f"no problem mentions {needle!r}: {found}"


# ---------------------------------------------------------------------------------------------
# The real workflows and docs
# ---------------------------------------------------------------------------------------------


def test_there_is_a_workflow():
    assert DEPLOY in checks.workflow_files()


def test_workflows_pass_every_check():
    assert checks.workflow_problems() == []


def test_every_remote_action_is_a_verified_pin():
    text = DEPLOY.read_text()
    for (action, sha), version in checks.VERIFIED_PINS.items():
        if f"{action}@" in text:
            assert f"{action}@{sha} # {version}" in text


def test_doc_snippets_pass():
    assert checks.snippet_problems() == []


# ---------------------------------------------------------------------------------------------
# Mutation tests on a copy of the workflow
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    (copy / ".github").mkdir(parents=True)
    shutil.copytree(REPO / ".github" / "workflows", copy / ".github" / "workflows")
    return copy


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) == count, f"{old!r} occurs {text.count(old)} times in {path.name}, expected {count}"
    path.write_text(text.replace(old, new))


def workflow(repo: Path) -> Path:
    return repo / ".github" / "workflows" / "deploy.yml"


def test_action_by_tag_is_caught(repo: Path):
    edit(workflow(repo), "azure/login@a457da9ea143d694b1b9c7c869ebb04ebe844ef5 # v2.3.0", "azure/login@v2")
    found = checks.workflow_problems(repo)
    assert_found(found, "deploy.yml:", "uses: azure/login@v2: not pinned to a full 40-hex commit SHA")
    assert_found(found, "zizmor", "unpinned-uses")


def test_action_by_short_sha_is_caught(repo: Path):
    edit(workflow(repo), "actions/cache@0057852bfaa89a56745cba8c7296529d2fc39830", "actions/cache@0057852", count=2)
    assert_found(checks.pin_problems(workflow(repo)), "uses: actions/cache@0057852: not pinned")


def test_pin_without_version_comment_is_caught(repo: Path):
    edit(workflow(repo), "49933ea5288caeca8642d1e84afbd3f7d6820020 # v4.4.0", "49933ea5288caeca8642d1e84afbd3f7d6820020", count=2)
    assert_found(checks.pin_problems(workflow(repo)), "no `# vX.Y.Z` comment")


def test_comment_naming_another_release_is_caught(repo: Path):
    edit(workflow(repo), "a457da9ea143d694b1b9c7c869ebb04ebe844ef5 # v2.3.0", "a457da9ea143d694b1b9c7c869ebb04ebe844ef5 # v2.2.0")
    assert_found(checks.pin_problems(workflow(repo)), "the comment says v2.2.0, but a457da9ea143d694b1b9c7c869ebb04ebe844ef5 is azure/login v2.3.0")


def test_unverified_sha_is_caught(repo: Path):
    edit(workflow(repo), "azure/login@a457da9ea143d694b1b9c7c869ebb04ebe844ef5", "azure/login@" + "0" * 40)
    assert_found(checks.pin_problems(workflow(repo)), "is not in VERIFIED_PINS")


def test_checkout_persisting_credentials_is_caught(repo: Path):
    edit(
        workflow(repo),
        "        with:\n          # Nothing here pushes to the repository: no token left in .git/config for later steps.\n          persist-credentials: false\n",
        "",
        count=2,
    )
    found = checks.workflow_problems(repo)
    assert_found(found, "job 'test' step 1 (actions/checkout) must set persist-credentials: false", "job 'deploy' step 1")
    assert_found(found, "artipacked")


def test_checkout_with_persist_credentials_true_is_caught(repo: Path):
    edit(workflow(repo), "persist-credentials: false", "persist-credentials: true", count=2)
    assert_found(checks.checkout_problems(workflow(repo)), "must set persist-credentials: false")


def test_template_injection_is_caught(repo: Path):
    """Only zizmor knows this one: an expression expanded into a shell script."""
    edit(
        workflow(repo),
        "      - name: Tests\n        run: scripts/test\n\n  deploy:",
        "      - name: Tests\n        run: scripts/test\n\n      - run: echo \"${{ github.event.pull_request.title }}\"\n\n  deploy:",
    )
    found = checks.workflow_problems(repo)
    assert_found(found, "template-injection")


def test_invalid_workflow_is_caught(repo: Path):
    """Only the schema knows this one: a misspelt key."""
    edit(workflow(repo), "    timeout-minutes: 60\n", "    timeout-minute: 60\n")
    found = checks.workflow_problems(repo)
    assert_found(found, "check-jsonschema --builtin-schema vendor.github-workflows", "timeout-minute")


# ---------------------------------------------------------------------------------------------
# CI snippets in the docs
# ---------------------------------------------------------------------------------------------

GOOD_WORKFLOW = """\
name: build
on:
  push:
    branches: [main]
permissions:
  contents: read
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@11d5960a326750d5838078e36cf38b85af677262 # v4.4.0
        with:
          persist-credentials: false
      - run: npx nx run-many -t build
"""

BAD_WORKFLOW = """\
name: build
on: pull_request_target
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.pull_request.title }}"
"""

GOOD_AZURE = """\
trigger:
  - main
pool:
  vmImage: ubuntu-latest
steps:
  - script: npx nx run-many -t build
    displayName: build
"""

GOOD_GITLAB = """\
build:
  image: node:20
  script:
    - npx nx run-many -t build
"""


def doc(*blocks: tuple[str, str], prose: str = "Some prose.\n") -> str:
    return "# Title\n\n" + "".join(f"{prose}\n```{info}\n{body}```\n\n" for info, body in blocks)


def docs_repo(tmp_path: Path, readme: str = "# Nothing\n", guide: str | None = None) -> Path:
    root = tmp_path / "docs-repo"
    (root / "docs").mkdir(parents=True)
    (root / "README.md").write_text(readme)
    if guide is not None:
        (root / "docs" / "guide.md").write_text(guide)
    return root


def test_fenced_blocks_are_read_as_commonmark():
    text = (
        "```yaml github-workflow\na: 1\n```\n"
        "~~~~ yaml gitlab-ci \nb: 2\n~~~\nstill inside\n~~~~\n"
        "   ```yaml azure-pipelines\n   c: 3\n     d: 4\n   ```\n"
        "````\n```yaml github-workflow\nnot a block: the outer fence is longer\n```\n````\n"
        "```yaml\nplain: yes\n```\n"
    )
    blocks = checks.fenced_blocks(text)
    assert blocks == [
        (1, "yaml github-workflow", "a: 1\n"),
        (4, "yaml gitlab-ci", "b: 2\n~~~\nstill inside\n"),
        (9, "yaml azure-pipelines", "c: 3\n  d: 4\n"),
        (13, "", "```yaml github-workflow\nnot a block: the outer fence is longer\n```\n"),
        (18, "yaml", "plain: yes\n"),
    ]


def test_only_exactly_tagged_blocks_are_snippets(tmp_path: Path):
    root = docs_repo(
        tmp_path,
        readme=doc(("yaml", BAD_WORKFLOW), ("yaml github-workflows", BAD_WORKFLOW), ("yml github-workflow", BAD_WORKFLOW)),
        guide=doc(("yaml github-workflow", GOOD_WORKFLOW), ("yaml gitlab-ci", GOOD_GITLAB)),
    )
    snippets = checks.ci_snippets(root)
    assert [(s.source, s.info) for s in snippets] == [("docs/guide.md", "yaml github-workflow"), ("docs/guide.md", "yaml gitlab-ci")]
    assert snippets[0].text == GOOD_WORKFLOW
    assert snippets[0].line == 5


def test_good_snippets_pass(tmp_path: Path):
    root = docs_repo(
        tmp_path,
        readme=doc(("yaml github-workflow", GOOD_WORKFLOW)),
        guide=doc(("yaml azure-pipelines", GOOD_AZURE), ("yaml gitlab-ci", GOOD_GITLAB)),
    )
    assert len(checks.ci_snippets(root)) == 3
    assert checks.snippet_problems(root) == []
    assert checks.main(["workflow_checks.py", str(root)]) == 0


def test_bad_github_snippet_fails(tmp_path: Path):
    root = docs_repo(tmp_path, guide=doc(("yaml github-workflow", GOOD_WORKFLOW), ("yaml github-workflow", BAD_WORKFLOW)))
    good, bad = checks.ci_snippets(root)
    found = checks.snippet_problems(root)
    # Findings name the doc and the line of the bad block (line 7 of the block: the checkout), not
    # a temporary file.
    assert_found(found, f"docs/guide.md:{bad.line} (yaml github-workflow):7: uses: actions/checkout@v4: not pinned")
    assert_found(found, f"docs/guide.md:{bad.line} (yaml github-workflow): job 'build' step 1 (actions/checkout) must set persist-credentials: false")
    assert_found(found, "template-injection", "dangerous-triggers", "unpinned-uses")
    assert not any(good.label in problem for problem in found), found
    assert checks.main(["workflow_checks.py", str(root)]) == 1


def test_invalid_github_snippet_fails_the_schema(tmp_path: Path):
    broken = GOOD_WORKFLOW.replace("    runs-on: ubuntu-latest\n", "    run-on: ubuntu-latest\n")
    root = docs_repo(tmp_path, readme=doc(("yaml github-workflow", broken)))
    assert_found(checks.snippet_problems(root), "vendor.github-workflows", "'runs-on' is a required property")


def test_bad_azure_pipelines_snippet_fails(tmp_path: Path):
    broken = GOOD_AZURE.replace("  - script:", "  - scriptt:")
    root = docs_repo(tmp_path, guide=doc(("yaml azure-pipelines", broken)))
    assert_found(checks.snippet_problems(root), "vendor.azure-pipelines", "docs/guide.md:5 (yaml azure-pipelines)", "'scriptt' was unexpected")


def test_bad_gitlab_snippet_fails(tmp_path: Path):
    broken = GOOD_GITLAB.replace("  image: node:20\n", "  image: node:20\n  when: sometimes\n")
    root = docs_repo(tmp_path, guide=doc(("yaml gitlab-ci", broken)))
    assert_found(checks.snippet_problems(root), "vendor.gitlab-ci", "'sometimes' is not one of")


def test_snippet_that_is_not_yaml_fails(tmp_path: Path):
    root = docs_repo(tmp_path, readme=doc(("yaml github-workflow", "jobs: [\n")))
    assert checks.snippet_problems(root)


def test_indented_tagged_fence_is_refused(tmp_path: Path):
    """Inside a list item, indented 4 spaces: not read as a fence here, so it must not pass
    silently."""
    readme = "# Title\n\n1. Add this workflow:\n\n    ```yaml github-workflow\n    " + BAD_WORKFLOW.replace("\n", "\n    ") + "```\n"
    root = docs_repo(tmp_path, readme=readme)
    assert checks.ci_snippets(root) == []
    assert_found(checks.snippet_problems(root), "README.md:5: looks like a CI snippet")
    assert checks.main(["workflow_checks.py", str(root)]) == 1


def test_no_snippets_is_fine(tmp_path: Path):
    root = docs_repo(tmp_path, readme=doc(("yaml", BAD_WORKFLOW), ("sh", "echo hi\n")))
    assert checks.ci_snippets(root) == []
    assert checks.snippet_problems(root) == []
    assert checks.main(["workflow_checks.py", str(root)]) == 0
