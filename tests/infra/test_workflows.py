"""Offline tests of the CI files: the workflows pass every check, every check fails on a copy broken
on purpose (mutation tests), and CI snippets in the docs are extracted and held to the same
checks (a sample doc with a bad snippet fails, a good one passes).

Run with scripts/check-infra (it makes the venv with the pinned zizmor and check-jsonschema).
"""

from __future__ import annotations

import os
import shutil
import subprocess
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


# ---------------------------------------------------------------------------------------------
# The deploy job: its steps, their inputs, and the steps run against stand-ins (workflow_checks)
# ---------------------------------------------------------------------------------------------

DEPLOY_JOB_CHECKS = (
    checks.deploy_order_problems,
    checks.deploy_inputs_problems,
    checks.check_step_problems,
    checks.deployment_step_problems,
    checks.config_zip_problems,
    checks.health_check_problems,
    checks.doc_settings_problems,
    checks.doc_command_problems,
)


@pytest.mark.parametrize("check", DEPLOY_JOB_CHECKS, ids=lambda c: c.__name__)
def test_deploy_job_passes(check):
    assert check(REPO) == []


def test_deploy_inputs_cover_the_templates_parameters():
    """Every parameter the workflow offers is one of main.bicep's, and the ones issue 18 asked
    for are there."""
    import bicep_checks

    main = bicep_checks.main_template(bicep_checks.load(REPO / "infra"))
    offered = {param for _, _, param, _, _ in (*checks.WORKFLOW_INPUTS, checks.SECRET_INPUT)}
    assert offered <= set(main.params)
    assert {"tokenSecretKeyVaultResourceGroup", "tokenPreviousSecretsKeyVaultResourceGroup", "grantKeyVaultSecretAccess", "expiredGrace"} <= offered


def test_deploy_inputs_refuse_what_cannot_be_deployed(tmp_path: Path):
    """scripts/deploy-inputs stops, naming the variable, before anything runs."""
    script = REPO / checks.DEPLOY_INPUTS
    base = {**checks.REQUIRED_INPUTS, "TOKEN_SECRET_URI": checks.WORKFLOW_INPUTS[4][3]}
    cases = {
        "no secret": ({k: v for k, v in base.items() if k != "TOKEN_SECRET_URI"}, "NX_CACHE_TOKEN_SECRET_URI"),
        "no account": ({k: v for k, v in base.items() if k != "CACHE_ACCOUNT"}, "CACHE_ACCOUNT is not set"),
        "size not a number": ({**base, "MAX_ARTIFACT_SIZE_MIB": "1G"}, "MAX_ARTIFACT_SIZE_MIB is '1G'"),
        "grant not a bool": ({**base, "GRANT_KEY_VAULT_SECRET_ACCESS": "yes"}, "use true or false"),
        "policy not JSON": ({**base, "TRUST_POLICY": '{"rules": ['}, "TRUST_POLICY (vars.NX_CACHE_TRUST_POLICY) is not JSON"),
        "secret with a line break": ({**checks.REQUIRED_INPUTS, "TOKEN_SECRET": "s" * 40 + "\n" + "s" * 4}, "NX_CACHE_JWT_SECRET would hold a line break"),
    }
    for number, (label, (env, message)) in enumerate(cases.items()):
        result = subprocess.run(["bash", str(script), str(tmp_path / str(number))], env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, check=False)
        assert result.returncode != 0, label
        assert message in result.stderr, (label, result.stderr)
        assert "s" * 40 not in result.stderr, "the secret is never printed"


@pytest.fixture
def deploy_repo(tmp_path: Path) -> Path:
    """A copy of what the deploy job's checks read: the workflows, scripts, infra and docs."""
    copy = tmp_path / "repo"
    for part in (".github/workflows", "scripts", "infra", "docs"):
        shutil.copytree(REPO / part, copy / part)
    return copy


def edit_first(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def step_block(path: Path, name: str) -> str:
    """The text of the step `- name: NAME` of deploy.yml, up to the next step or comment line
    at step level."""
    text = path.read_text()
    start = text.index(f"      - name: {name}\n")
    rest = text[start + 1 :]
    ends = [rest.find(marker) for marker in ("\n      - ", "\n      # ") if rest.find(marker) >= 0]
    return text[start : start + 1 + min(ends) + 1] if ends else text[start:]


CHECK_STEP = "Check the configuration with the packaged handler"


def test_check_step_missing_is_caught(deploy_repo: Path):
    edit(workflow(deploy_repo), step_block(workflow(deploy_repo), CHECK_STEP), "")
    assert_found(checks.deploy_order_problems(deploy_repo), "the deploy job has no check step")


def test_check_step_after_the_deployment_is_caught(deploy_repo: Path):
    path = workflow(deploy_repo)
    block = step_block(path, CHECK_STEP)
    edit(path, block, "")
    edit(path, "      - name: Deploy the package\n", block + "\n      - name: Deploy the package\n")
    assert_found(checks.deploy_order_problems(deploy_repo), "package, check, deployment, config-zip, health in that order")


def test_check_step_running_another_handler_is_caught(deploy_repo: Path, tmp_path: Path):
    """The staging copy is built from the same source, but only the zip is what is deployed."""
    edit(workflow(deploy_repo), '"$package/handler" check', "dist/functionapp/handler check")
    assert_found(checks.check_step_problems(deploy_repo, tmp_path / "run"), "runs a handler other than the one in dist/functionapp.zip")


def test_check_step_without_functions_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(workflow(deploy_repo), "check --functions --env-file", "check --env-file")
    assert_found(checks.check_step_problems(deploy_repo, tmp_path / "run"), "not `handler check --functions --env-file FILE`")


def test_check_step_ignoring_a_refusal_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(workflow(deploy_repo), '--env-file "$inputs/app-settings.env" 2>&1)"', '--env-file "$inputs/app-settings.env" 2>&1 || true)"')
    assert_found(checks.check_step_problems(deploy_repo, tmp_path / "run"), "passes although the handler refuses the configuration")


def test_settings_file_left_behind_is_caught(deploy_repo: Path, tmp_path: Path):
    edit_first(workflow(deploy_repo), "          trap 'rm -rf \"$inputs\"' EXIT\n", "")
    assert_found(checks.check_step_problems(deploy_repo, tmp_path / "run"), "the settings file is left behind", "leaves ['deploy-inputs.")


def test_settings_readable_by_others_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(deploy_repo / checks.DEPLOY_INPUTS, "umask 077\n", "umask 022\n")
    edit(deploy_repo / checks.DEPLOY_INPUTS, 'chmod 700 "$dir"\n', "")
    assert_found(checks.deploy_inputs_problems(deploy_repo, tmp_path / "inputs"), "parameters.json has mode 644, not 600", "app-settings.env has mode 644")
    assert_found(checks.check_step_problems(deploy_repo, tmp_path / "run"), "the settings file has mode 644, not 600")


def test_deployment_not_using_the_checked_parameters_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(
        workflow(deploy_repo),
        '--parameters "@$inputs/parameters.json"',
        '--parameters appName="$APP_NAME" cacheStorageAccountName="$CACHE_ACCOUNT" cacheContainerName="$CACHE_CONTAINER" tokenSecret="$TOKEN_SECRET"',
    )
    found = checks.deployment_step_problems(deploy_repo, tmp_path / "run")
    assert_found(found, "passes no parameters file", "the token secret is on az's command line")
    assert_found(checks.check_step_problems(deploy_repo, tmp_path / "check"), "cannot compare with the deployment step")


def test_secret_for_every_step_is_caught(deploy_repo: Path):
    path = workflow(deploy_repo)
    edit(path, "      TRUST_POLICY: ${{ vars.NX_CACHE_TRUST_POLICY }}\n", "      TRUST_POLICY: ${{ vars.NX_CACHE_TRUST_POLICY }}\n      TOKEN_SECRET: ${{ secrets.NX_CACHE_JWT_SECRET }}\n")
    assert_found(checks.deploy_order_problems(deploy_repo), "the deploy job's env holds secrets.NX_CACHE_JWT_SECRET")


def test_check_step_without_the_secret_is_caught(deploy_repo: Path):
    edit_first(workflow(deploy_repo), "        env:\n          TOKEN_SECRET: ${{ secrets.NX_CACHE_JWT_SECRET }}\n", "")
    assert_found(checks.deploy_order_problems(deploy_repo), "the check step does not map secrets.NX_CACHE_JWT_SECRET to TOKEN_SECRET")


@pytest.mark.parametrize("variable", ["NX_CACHE_TOKEN_SECRET_RESOURCE_GROUP", "NX_CACHE_TOKEN_PREVIOUS_SECRETS_RESOURCE_GROUP", "NX_CACHE_GRANT_KEY_VAULT_SECRET_ACCESS", "NX_CACHE_EXPIRED_GRACE"])
def test_variable_not_mapped_is_caught(deploy_repo: Path, variable: str):
    name = next(n for v, n, _, _, _ in checks.WORKFLOW_INPUTS if v == f"vars.{variable}")
    edit(workflow(deploy_repo), f"      {name}: ${{{{ vars.{variable} }}}}\n", "")
    assert_found(checks.deploy_order_problems(deploy_repo), f"does not map vars.{variable} to {name}")


@pytest.mark.parametrize("parameter", ["tokenSecretKeyVaultResourceGroup", "tokenPreviousSecretsKeyVaultResourceGroup", "grantKeyVaultSecretAccess", "expiredGrace"])
def test_variable_not_passed_as_parameter_is_caught(deploy_repo: Path, tmp_path: Path, parameter: str):
    script = deploy_repo / checks.DEPLOY_INPUTS
    line = next(l for l in script.read_text().splitlines() if f"{{{parameter}:" in l)
    edit(script, line + "\n", "")
    name = next(n for _, n, p, _, _ in checks.WORKFLOW_INPUTS if p == parameter)
    assert_found(checks.deploy_inputs_problems(deploy_repo, tmp_path / "inputs"), f"{name}=", f"gives {parameter} = None")


def test_setting_left_out_of_the_check_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(deploy_repo / checks.DEPLOY_INPUTS, '      ["NX_CACHE_LOG_FORMAT", "json"],\n', "")
    assert_found(checks.deploy_inputs_problems(deploy_repo, tmp_path / "inputs"), "main.bicep writes NX_CACHE_LOG_FORMAT = \"json\", which is not checked")


def test_template_default_changed_on_one_side_is_caught(deploy_repo: Path, tmp_path: Path):
    """The settings repeat main.bicep's defaults for the parameters the workflow does not pass;
    a default changed in the template alone is a difference."""
    edit(deploy_repo / "infra" / "main.bicep", "param sasTtl string = '5m'", "param sasTtl string = '10m'")
    assert_found(checks.deploy_inputs_problems(deploy_repo, tmp_path / "inputs"), "NX_CACHE_SAS_TTL checked as '5m', but main.bicep writes '10m'")
    assert_found(checks.doc_settings_problems(deploy_repo), "docs/deploy.md (settings for handler check): NX_CACHE_SAS_TTL checked as '5m'")


def test_trust_policy_not_compacted_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(deploy_repo / checks.DEPLOY_INPUTS, "($p.trustPolicy.value | fromjson | tojson)", "$p.trustPolicy.value")
    assert_found(checks.deploy_inputs_problems(deploy_repo, tmp_path / "inputs"), "(every variable): exit status", "NX_CACHE_TRUST_POLICY would hold a line break")


CONFIG_ZIP_STEP = "Deploy the package"


def test_config_zip_not_tolerant_is_caught(deploy_repo: Path, tmp_path: Path):
    """The plain command of before: az's own health check on Flex fails the deployment."""
    path = workflow(deploy_repo)
    edit(
        path,
        step_block(path, CONFIG_ZIP_STEP),
        "      - name: Deploy the package\n        env:\n          DEPLOYED_APP: ${{ steps.infra.outputs.app_name }}\n        run: |\n"
        '          az functionapp deployment source config-zip --resource-group "$RESOURCE_GROUP" --name "$DEPLOYED_APP" --src dist/functionapp.zip\n',
    )
    found = checks.config_zip_problems(deploy_repo, tmp_path / "run")
    assert_found(found, "fails on `ERROR: Failed to fetch host key to check for function app status`", "fails on `ERROR: Deployment was successful but the app appears to be unhealthy")


def test_config_zip_tolerating_a_failed_deployment_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(workflow(deploy_repo), '          exit "$status"\n', "          exit 0\n")
    assert_found(checks.config_zip_problems(deploy_repo, tmp_path / "run"), "passes on `ERROR: Zip deployment failed.", "passes on `ERROR: There may be an ongoing deployment")


def test_config_zip_without_retry_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(workflow(deploy_repo), "attempts=3 status=0", "attempts=1 status=0")
    found = checks.config_zip_problems(deploy_repo, tmp_path / "run")
    assert_found(found, "does not try again after a failure", "fails when `ERROR: Zip deployment failed. {'status': 3}")


def test_config_zip_retrying_back_to_back_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(workflow(deploy_repo), "              sleep 120\n", "")
    assert_found(checks.config_zip_problems(deploy_repo, tmp_path / "run"), "tries again after [0.0, 0.0] seconds")


def test_config_zip_retrying_without_bound_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(workflow(deploy_repo), "attempts=3 status=0", "attempts=9 status=0")
    assert_found(checks.config_zip_problems(deploy_repo, tmp_path / "run"), "runs config-zip 9 times; it must give up after at most 5")


def test_health_check_without_refresh_is_caught(deploy_repo: Path, tmp_path: Path):
    path = workflow(deploy_repo)
    edit(path, '                az rest --method post --url "$references/refresh?$api" || echo "::warning::the reference refresh failed"\n', "")
    edit(path, '                az functionapp restart --resource-group "$RESOURCE_GROUP" --name "$DEPLOYED_APP" || echo "::warning::the restart failed"\n', "")
    found = checks.health_check_problems(deploy_repo, tmp_path / "run", only=("recovers",))
    assert_found(found, "does not refresh the Key Vault references", "does not restart the app", "fails although the app is healthy after a refresh")


def test_health_check_refreshing_without_bound_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(workflow(deploy_repo), "max_refreshes=3", "max_refreshes=100")
    assert_found(checks.health_check_problems(deploy_repo, tmp_path / "run", only=("never",)), "refreshes 5 times while a reference stays unresolved")


def test_health_check_refreshing_back_to_back_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(workflow(deploy_repo), "[ $((attempt - last_refresh)) -ge 4 ]", "[ $((attempt - last_refresh)) -ge 1 ]")
    assert_found(checks.health_check_problems(deploy_repo, tmp_path / "run", only=("never",)), "refreshes back to back (after health checks [1, 2, 3])")


def test_health_check_refreshing_for_a_storage_problem_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(workflow(deploy_repo), '            if [ -n "$unresolved" ]; then\n              echo "Key Vault', '            if true; then\n              echo "Key Vault')
    assert_found(checks.health_check_problems(deploy_repo, tmp_path / "run", only=("storage",)), "refreshes or restarts although every Key Vault reference is resolved")


def test_health_check_failing_silently_is_caught(deploy_repo: Path, tmp_path: Path):
    """The failure must say what it saw: the last answer and the references' statuses."""
    path = workflow(deploy_repo)
    edit(path, '            echo "::error::Key Vault references still not resolved after $refreshes refresh(es): ${unresolved//$\'\\n\'/; }"\n', "")
    edit(path, 'echo "::error::$CACHE_URL/health did not answer 200 in $attempts attempts; last answer: $code: $answer"', 'echo "::error::$CACHE_URL/health did not answer 200"')
    found = checks.health_check_problems(deploy_repo, tmp_path / "run", only=("never",))
    assert_found(found, "does not show `NX_CACHE_JWT_SECRET: AccessToKeyVaultDenied`", "does not show `503`", "does not show `not ready: the cache storage is unavailable`")


def test_health_check_with_curl_f_is_caught(deploy_repo: Path, tmp_path: Path):
    edit(workflow(deploy_repo), "curl -sS --max-time 30", "curl -fsS --max-time 30")
    assert_found(checks.health_check_problems(deploy_repo, tmp_path / "run", only=("never",)), "curl -f hides the body of a 503")


def test_doc_with_app_instead_of_apps_is_caught(deploy_repo: Path):
    edit_first(deploy_repo / "docs" / "deploy.md", '--apps "$APP-insights"', '--app "$APP-insights"')
    assert_found(checks.doc_command_problems(deploy_repo), "takes the component as --apps")


def test_doc_without_the_check_is_caught(deploy_repo: Path):
    edit(deploy_repo / "docs" / "deploy.md", "dist/functionapp/handler check --functions --env-file app-settings.env\n", "")
    assert_found(checks.doc_command_problems(deploy_repo), "must run `handler check --functions --env-file` before `az deployment group create`")


def test_doc_query_over_a_day_without_offset_is_caught(deploy_repo: Path):
    edit(deploy_repo / "docs" / "deploy.md", '--apps "$APP-insights" --offset 24h', '--apps "$APP-insights"')
    assert_found(checks.doc_command_problems(deploy_repo), "looks at the last 60 minutes only, and the query asks for 1440: pass --offset")


def test_doc_query_with_a_short_offset_is_caught(deploy_repo: Path):
    edit(deploy_repo / "docs" / "deploy.md", "--offset 24h", "--offset 2h")
    assert_found(checks.doc_command_problems(deploy_repo), "looks at the last 120 minutes only")


def test_doc_publish_without_custom_is_caught(deploy_repo: Path):
    edit(deploy_repo / "docs" / "deploy.md", 'func azure functionapp publish "$APP" --custom', 'func azure functionapp publish "$APP"')
    assert_found(checks.doc_command_problems(deploy_repo), "`func azure functionapp publish` needs --custom")


def test_doc_naming_the_public_management_host_is_caught(deploy_repo: Path):
    path = deploy_repo / "docs" / "deploy.md"
    edit_first(path, '--url "$APP_RESOURCE_ID/config/configreferences/appsettings/refresh', '--url "https://management.azure.com$APP_RESOURCE_ID/config/configreferences/appsettings/refresh')
    edit_first(deploy_repo / "docs" / "migrate-from-nx-azure-cache.md", "ACCOUNT_RG=", 'az rest --url "https://graph.microsoft.com/v1.0/me"\nACCOUNT_RG=')
    found = checks.doc_command_problems(deploy_repo)
    assert_found(found, "names https://management.azure.com", "docs/migrate-from-nx-azure-cache.md:")
    assert any("https://graph.microsoft.com" in f for f in found), found


def test_doc_settings_misspelt_is_caught(deploy_repo: Path):
    edit(deploy_repo / "docs" / "deploy.md", "NX_CACHE_SAS_TTL=5m\n", "NX_CACHE_SAS_TIL=5m\n")
    assert_found(checks.doc_settings_problems(deploy_repo), "have NX_CACHE_SAS_TIL, which main.bicep does not write", "main.bicep writes NX_CACHE_SAS_TTL")
