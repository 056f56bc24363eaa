"""Offline tests of infra/: the templates parse, pass every structural check, and every check
fails on a copy of the templates broken on purpose (mutation tests).

Run with scripts/check-infra (it makes the venv with the pinned pycep-parser and pytest).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import bicep_checks as checks

INFRA = Path(__file__).resolve().parents[2] / "infra"
BICEP_FILES = checks.bicep_files(INFRA)


# ---------------------------------------------------------------------------------------------
# The real templates
# ---------------------------------------------------------------------------------------------


def test_there_are_templates():
    names = {p.relative_to(INFRA).as_posix() for p in BICEP_FILES}
    assert {"main.bicep", "modules/cache-access.bicep"} <= names


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_template_parses(path: Path):
    tree = checks.parse(path)
    assert tree.get("resources") or tree.get("modules"), f"{path} declares nothing"


@pytest.mark.parametrize("check", checks.CHECKS, ids=lambda c: c.__name__)
def test_check_passes_on_the_templates(check):
    assert check(INFRA) == []


def test_every_required_app_setting_is_set():
    settings = checks.all_app_settings(checks.load(INFRA))
    for name in checks.REQUIRED_APP_SETTINGS:
        assert name in settings and not settings[name][2], name
    # Optional ones the handler reads are there too.
    for name in ("AZURE_STORAGE_BLOB_ENDPOINT", "AZURE_CLIENT_ID", "NX_CACHE_DOWNLOAD", "NX_CACHE_SAS_TTL", "NX_CACHE_REVOKED_TOKENS", "NX_CACHE_EXPIRED_GRACE"):
        assert name in settings, name
    # Keyless access and the earlier secrets only when given.
    for name in (checks.TRUST_POLICY_SETTING, checks.PREVIOUS_SECRETS_SETTING):
        assert name in settings and settings[name][2], name


def test_expired_grace_follows_its_parameter():
    templates = checks.load(INFRA)
    assert checks.setting_under(templates, {}, "NX_CACHE_EXPIRED_GRACE") == ("value", "12h")
    assert checks.setting_under(templates, {"expiredGrace": "30m"}, "NX_CACHE_EXPIRED_GRACE") == ("value", "30m")


def test_scenarios_compute_what_arm_would():
    """The evaluator the scenario checks rely on, on the secret setting whose behaviour is
    documented in docs/deploy.md: a Key Vault reference, the secure parameter, or a stop."""
    templates = checks.load(INFRA)
    uri = checks.SCENARIO_BASE[checks.SECRET_URI_PARAM]
    secret = "s" * 44
    assert checks.setting_under(templates, {}, "NX_CACHE_JWT_SECRET") == ("value", f"@Microsoft.KeyVault(SecretUri={uri})")
    assert checks.setting_under(templates, {"tokenSecretKeyVaultUri": "", "tokenSecret": secret}, "NX_CACHE_JWT_SECRET") == ("value", secret)
    assert checks.setting_under(templates, {"tokenSecret": secret}, "NX_CACHE_JWT_SECRET") == ("fails", "Set exactly one of the parameters tokenSecret and tokenSecretKeyVaultUri.")
    assert checks.setting_under(templates, {"tokenSecretKeyVaultUri": "", "tokenSecret": "short"}, "NX_CACHE_JWT_SECRET") == ("fails", "The parameter tokenSecret must be at least 32 bytes long.")
    assert checks.setting_under(templates, {}, "NX_CACHE_TRUST_POLICY") == ("absent", None)
    assert checks.setting_under(templates, {"mode": "read-only"}, "NX_CACHE_MODE") == ("value", "read-only")


EVALUATOR_SNIPPET = """
param uri string = ''
var vault = first(split(split(uri, '/')[2], '.'))
var secret = split(uri, '/')[4]
var opens = startsWith(trim(uri), 'HTTPS://')
var both = (!empty(uri)) && (length(uri) > 10)
var picked = opens ? 'yes' : string(int('no such number'))
var ref = '@Microsoft.KeyVault(SecretUri=${uri})'
"""


def test_evaluator_follows_arm_functions():
    """split/first/index, trim, startsWith (case-insensitive in ARM), &&, interpolation, and the
    int('sentence') idiom, on a snippet parsed by pycep like the templates."""
    tree = checks._parse_text("evaluator-snippet", EVALUATOR_SNIPPET)
    template = checks.Template(INFRA, INFRA / "snippet.bicep", tree)
    env = {"uri": " https://kv-x.vault.azure.net/secrets/name "}
    assert checks._value(template, "vault", env) == "kv-x"
    assert checks._value(template, "secret", env) == "name "
    assert checks._value(template, "opens", env) is True
    assert checks._value(template, "both", env) is True
    assert checks._value(template, "picked", env) == "yes"
    assert checks._value(template, "ref", {"uri": "u"}) == "@Microsoft.KeyVault(SecretUri=u)"
    with pytest.raises(checks._DeploymentFails, match="no such number"):
        checks._value(template, "picked", {"uri": "ftp://x"})


def test_cache_roles_are_where_they_belong():
    templates = checks.load(INFRA)
    scopes = {}
    for template, _, role, scope in checks.role_assignments(templates):
        scopes[role] = template.resources[scope]["type"] if scope else None
    assert scopes[checks.STORAGE_BLOB_DATA_CONTRIBUTOR] == checks.CONTAINER_TYPE
    assert scopes[checks.STORAGE_BLOB_DELEGATOR] == checks.ACCOUNT_TYPE
    assert scopes[checks.STORAGE_BLOB_DATA_OWNER] == checks.ACCOUNT_TYPE


def test_size_limits_follow_one_parameter():
    """The evaluator the size check relies on computes what ARM would: 1024 MiB -> '1024M' and
    twice as many bytes for the host."""
    templates = checks.load(INFRA)
    settings = checks.all_app_settings(templates)
    template, artifact, _ = settings["NX_CACHE_MAX_ARTIFACT_SIZE"]
    _, body, _ = settings["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"]
    env = {"maxArtifactSizeMiB": 1024, "instanceMemoryMB": 512, "maximumInstanceCount": 40, "retentionDays": 0}
    assert checks._evaluate(template, artifact, env, set()) == "1024M"
    assert checks._evaluate(template, body, env, set()) == str(2 * 1024 * 1048576)


def test_name_lengths_follow_the_parameters():
    """The bounds the name check relies on: appName's own, '-plan' adds 5, uniqueString() is 13
    characters (also inside an interpolation), take() cuts."""
    templates = checks.load(INFRA)
    main = checks.main_template(templates)
    bounds = lambda expr: checks._length_bounds(templates, main, expr)  # noqa: E731
    assert bounds("appName") == (2, 55)
    assert bounds("${appName}-plan") == (7, 60)
    assert bounds(main.params["deploymentStorageAccountName"]["default"]) == (17, 17)
    assert bounds({"function": {"type": "take", "parameters": {"original_value": "${appName}-cache-access", "number_to_take": 64}}}) == (15, 64)


def test_workbook_reads_the_request_line_fields():
    """The query scanner the workbook checks rely on finds every query (the namespace parameter's
    and the eight charts and tables) and the fields they use, all fields of the request line."""
    workbook = json.loads((INFRA / checks.WORKBOOK_FILE).read_text())
    queries = list(checks._walk_queries(workbook))
    assert len(queries) == 9, [where for where, _ in queries]
    used = set()
    for _, holder in queries:
        fields, problems = checks.workbook_query_fields(holder["query"])
        assert problems == []
        used |= fields
    assert used == {"message", "level", "target", "client", "namespace", "outcome", "bytes", "time_saved_ms", "subject", "rule"}
    assert used <= checks.REQUEST_LOG_FIELDS


def test_workbook_field_scanner_follows_the_convention():
    fields, problems = checks.workbook_query_fields('traces | extend e = parse_json(message) | where tostring(e.message) == "request" | summarize sum(tolong(e.bytes)) by tostring(e.namespace), the.e.x')
    assert (fields, problems) == ({"message", "bytes", "namespace"}, [])
    _, problems = checks.workbook_query_fields('traces | extend e = parse_json(message) | where e["outcome"] == "hit"')
    assert len(problems) == 1 and "e[\"outcome" in problems[0]
    _, problems = checks.workbook_query_fields("traces | extend d = parse_json(message) | where d.outcome == 'hit'")
    assert "parses the line into e 0 times" in problems[0]


def test_workbook_is_deployed_by_default_and_can_be_left_out():
    templates = checks.load(INFRA)
    main = checks.main_template(templates)
    _, condition = checks.unwrap(main.modules["workbook"]["config"])
    assert checks._holds(main, condition, dict(checks.SCENARIO_BASE)) is True
    assert checks._holds(main, condition, {**checks.SCENARIO_BASE, checks.WORKBOOK_PARAM: False}) is False


# ---------------------------------------------------------------------------------------------
# Mutation tests: each check must catch a template broken on purpose.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def infra(tmp_path: Path) -> Path:
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    return copy


def edit(infra: Path, relative: str, old: str, new: str, count: int = 1) -> None:
    """Replaces `old` (which must occur exactly `count` times, so that a change to the templates
    cannot silently turn a mutation into a no-op) by `new`."""
    path = infra / relative
    text = path.read_text()
    assert text.count(old) == count, f"{old!r} occurs {text.count(old)} times in {relative}, expected {count}"
    path.write_text(text.replace(old, new))


def drop_line(infra: Path, relative: str, pattern: str) -> None:
    path = infra / relative
    text = path.read_text()
    new, n = re.subn(rf"(?m)^[ \t]*{pattern}.*\n", "", text)
    assert n == 1, f"{pattern!r} matched {n} lines in {relative}"
    path.write_text(new)


def assert_found(found: list[str], *needles: str) -> None:
    assert found, "the check found nothing"
    for needle in needles:
        assert any(needle in problem for problem in found), f"no problem mentions {needle!r}: {found}"


@pytest.mark.parametrize("setting", checks.REQUIRED_APP_SETTINGS)
def test_dropping_an_app_setting_is_caught(infra: Path, setting: str):
    drop_line(infra, "main.bicep", rf"{setting}:")
    assert_found(checks.app_setting_problems(infra), setting)
    assert_found(checks.problems(infra), setting)


def test_app_setting_only_under_a_condition_is_caught(infra: Path):
    drop_line(infra, "main.bicep", "NX_CACHE_MODE:")
    edit(infra, "main.bicep", "  AZURE_CLIENT_ID: identityClientId\n", "  AZURE_CLIENT_ID: identityClientId\n  NX_CACHE_MODE: mode\n")
    assert_found(checks.app_setting_problems(infra), "NX_CACHE_MODE", "condition")


def test_dropping_azure_client_id_is_caught(infra: Path):
    drop_line(infra, "main.bicep", "AZURE_CLIENT_ID:")
    assert_found(checks.app_setting_problems(infra), "AZURE_CLIENT_ID")


def test_functions_worker_runtime_is_caught(infra: Path):
    edit(infra, "main.bicep", "    NX_CACHE_LOG_FORMAT: 'json'\n", "    NX_CACHE_LOG_FORMAT: 'json'\n    FUNCTIONS_WORKER_RUNTIME: 'custom'\n")
    assert_found(checks.app_setting_problems(infra), "FUNCTIONS_WORKER_RUNTIME")


def test_swapping_the_role_scopes_is_caught(infra: Path):
    module = "modules/cache-access.bicep"
    edit(infra, module, "  scope: container\n", "  scope: SWAP\n")
    edit(infra, module, "  scope: account\n", "  scope: container\n")
    edit(infra, module, "  scope: SWAP\n", "  scope: account\n")
    found = checks.role_problems(infra)
    assert_found(found, "Storage Blob Data Contributor must be scoped to the cache container", "Storage Blob Delegator must be scoped to the cache storage account")
    assert_found(checks.problems(infra), "Storage Blob Data Contributor")


def test_data_contributor_on_the_account_is_caught(infra: Path):
    edit(infra, "modules/cache-access.bicep", "  scope: container\n", "  scope: account\n")
    assert_found(checks.role_problems(infra), "Storage Blob Data Contributor must be scoped to the cache container, not to a Microsoft.Storage/storageAccounts")


def test_data_contributor_on_the_resource_group_is_caught(infra: Path):
    drop_line(infra, "modules/cache-access.bicep", "scope: container")
    assert_found(checks.role_problems(infra), "Storage Blob Data Contributor) has no scope")


def test_delegator_on_the_container_is_caught(infra: Path):
    edit(infra, "modules/cache-access.bicep", "  scope: account\n", "  scope: container\n")
    assert_found(checks.role_problems(infra), "Storage Blob Delegator must be scoped to the cache storage account")


def test_data_contributor_on_the_deployment_storage_is_caught(infra: Path):
    """The right kind of scope, the wrong account: the module is handed the deployment storage."""
    edit(infra, "main.bicep", "    storageAccountName: cacheStorageAccountName\n", "    storageAccountName: deploymentStorage.name\n")
    assert_found(checks.role_problems(infra), "outside the account cacheStorageAccountName", "not cacheStorageAccountName")


def test_data_owner_on_the_cache_is_caught(infra: Path):
    edit(infra, "main.bicep", "    storageAccountName: deploymentStorage.name\n", "    storageAccountName: cacheStorageAccountName\n")
    assert_found(checks.role_problems(infra), "Storage Blob Data Owner must never be granted on the cache storage")


def test_wrong_role_id_is_caught(infra: Path):
    edit(infra, "modules/cache-access.bicep", checks.STORAGE_BLOB_DELEGATOR, "00000000-0000-0000-0000-000000000000")
    assert_found(checks.role_problems(infra), "no valid Storage Blob Delegator")


def test_cache_access_in_the_wrong_resource_group_is_caught(infra: Path):
    drop_line(infra, "main.bicep", "scope: resourceGroup\\(cacheStorageResourceGroup\\)")
    assert_found(checks.role_problems(infra), "must be deployed with scope resourceGroup(cacheStorageResourceGroup)")


def test_list_keys_is_caught(infra: Path):
    with (infra / "main.bicep").open("a") as f:
        f.write("\nvar leaked = listKeys(deploymentStorage.id, '2023-05-01').keys[0].value\n")
    assert_found(checks.key_material_problems(infra), "listKeys()", "listkeys")
    assert_found(checks.problems(infra), "listKeys")


def test_list_keys_accessor_is_caught(infra: Path):
    with (infra / "modules/cache-access.bicep").open("a") as f:
        f.write("\noutput leaked string = account.listKeys().keys[0].value\n")
    assert_found(checks.key_material_problems(infra), ".listKeys()")


def test_connection_string_setting_is_caught(infra: Path):
    edit(
        infra,
        "main.bicep",
        "    AZURE_STORAGE_ACCOUNT: cacheStorageAccountName\n",
        "    AZURE_STORAGE_ACCOUNT: cacheStorageAccountName\n"
        "    AZURE_STORAGE_CONNECTION_STRING: 'DefaultEndpointsProtocol=https;AccountName=x;AccountKey=${appName}'\n",
    )
    assert_found(checks.key_material_problems(infra), "azure_storage_connection_string", "defaultendpointsprotocol", "accountkey")


def test_account_key_in_the_parameters_file_is_caught(infra: Path):
    edit(infra, "main.parameters.json", '"value": "5m"', '"value": "5m", "note": "AccountKey=abc"')
    assert_found(checks.key_material_problems(infra), "main.parameters.json: contains 'accountkey'")


def test_https_only_false_is_caught(infra: Path):
    edit(infra, "main.bicep", "    httpsOnly: true\n", "    httpsOnly: false\n")
    assert_found(checks.function_app_problems(infra), "httpsOnly must be true")
    assert_found(checks.problems(infra), "httpsOnly")


def test_missing_https_only_is_caught(infra: Path):
    drop_line(infra, "main.bicep", "httpsOnly:")
    assert_found(checks.function_app_problems(infra), "httpsOnly must be true")


def test_old_tls_is_caught(infra: Path):
    edit(infra, "main.bicep", "      minTlsVersion: '1.2'\n", "      minTlsVersion: '1.0'\n")
    assert_found(checks.function_app_problems(infra), "minTlsVersion")


def test_ftps_state_is_caught(infra: Path):
    """Even 'Disabled': Flex Consumption deprecates the property itself."""
    edit(infra, "main.bicep", "      scmMinTlsVersion: '1.2'\n", "      scmMinTlsVersion: '1.2'\n      ftpsState: 'Disabled'\n")
    assert_found(checks.function_app_problems(infra), "siteConfig.ftpsState must not be set")
    assert_found(checks.problems(infra), "ftpsState")


FTP_POLICY = """
resource ftpPublishingCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}
"""


def test_ftp_publishing_policy_is_caught(infra: Path):
    with (infra / "main.bicep").open("a") as f:
        f.write(FTP_POLICY)
    assert_found(checks.function_app_problems(infra), "'ftpPublishingCredentials' is the 'ftp' one")


def test_basic_auth_deployments_allowed_is_caught(infra: Path):
    edit(infra, "main.bicep", "  name: 'scm'\n  properties: {\n    allow: false\n", "  name: 'scm'\n  properties: {\n    allow: true\n")
    assert_found(checks.function_app_problems(infra), "named 'scm' with allow: false")


def test_dropping_the_scm_policy_is_caught(infra: Path):
    edit(infra, "main.bicep", "  name: 'scm'\n", "  name: 'ftp'\n")
    assert_found(checks.function_app_problems(infra), "named 'scm' with allow: false", "is the 'ftp' one")


def test_mixed_web_api_versions_are_caught(infra: Path):
    edit(infra, "main.bicep", "basicPublishingCredentialsPolicies@2024-04-01'", "basicPublishingCredentialsPolicies@2023-12-01'")
    found = checks.web_api_version_problems(infra)
    assert_found(found, "Microsoft.Web resources use 2 API versions; use one for all", "2023-12-01: main.bicep: 'scmPublishingCredentials'")
    assert_found(checks.problems(infra), "use one for all")


def test_unchecked_web_api_version_is_caught(infra: Path):
    """One version for all, but one nobody checked against the published type definitions."""
    edit(infra, "main.bicep", "@2024-04-01' = {", "@2022-03-01' = {", count=4)
    found = checks.web_api_version_problems(infra)
    assert_found(found, "Microsoft.Web/sites@2022-03-01, a Microsoft.Web API version not checked")
    assert not any("use one for all" in problem for problem in found), found


def test_unchecked_web_type_is_caught(infra: Path):
    with (infra / "main.bicep").open("a") as f:
        f.write("\nresource binding 'Microsoft.Web/sites/hostNameBindings@2024-04-01' = {\n  parent: functionApp\n  name: 'cache.example.com'\n}\n")
    assert_found(checks.web_api_version_problems(infra), "Microsoft.Web/sites/hostNameBindings@2024-04-01, a type not checked")


def test_max_instances_below_flex_minimum_is_caught(infra: Path):
    edit(infra, "main.bicep", "@minValue(40)\n@maxValue(1000)\nparam maximumInstanceCount", "@minValue(1)\n@maxValue(1000)\nparam maximumInstanceCount")
    assert_found(checks.scale_problems(infra), "parameter 'maximumInstanceCount' allows a maximumInstanceCount of 1; Flex Consumption's lowest maximum is 40")
    assert_found(checks.problems(infra), "lowest maximum is 40")


def test_max_instances_above_flex_maximum_is_caught(infra: Path):
    edit(infra, "main.bicep", "@maxValue(1000)\nparam maximumInstanceCount", "@maxValue(2000)\nparam maximumInstanceCount")
    assert_found(checks.scale_problems(infra), "allows a maximumInstanceCount of 2000")


def test_unbounded_max_instances_is_caught(infra: Path):
    edit(infra, "main.bicep", "@minValue(40)\n@maxValue(1000)\nparam maximumInstanceCount", "param maximumInstanceCount")
    assert_found(checks.scale_problems(infra), "needs @minValue(40) and @maxValue(1000)")


def test_literal_max_instances_below_flex_minimum_is_caught(infra: Path):
    edit(infra, "main.bicep", "maximumInstanceCount: maximumInstanceCount", "maximumInstanceCount: 10")
    assert_found(checks.scale_problems(infra), "maximumInstanceCount 10 allows a maximumInstanceCount of 10")


def test_max_instances_below_flex_minimum_in_the_parameters_file_is_caught(infra: Path):
    edit(infra, "main.parameters.json", '"maximumInstanceCount": {\n      "value": 40', '"maximumInstanceCount": {\n      "value": 20')
    assert_found(checks.parameters_file_problems(infra), "'maximumInstanceCount' = 20 is below 40")


def test_app_name_that_overflows_derived_names_is_caught(infra: Path):
    """60 characters was the old limit: '-plan' then makes 65 (limit 60), '-logs' 65 (limit 63)."""
    edit(infra, "main.bicep", "@maxLength(55)\nparam appName", "@maxLength(60)\nparam appName")
    found = checks.name_length_problems(infra)
    assert_found(
        found,
        "resource 'plan' (Microsoft.Web/serverfarms): its name can have 65 characters; Microsoft.Web/serverfarms names have at most 60",
        "resource 'logAnalytics' (Microsoft.OperationalInsights/workspaces): its name can have 65 characters",
    )
    assert not any("'functionApp'" in problem for problem in found), found
    assert_found(checks.problems(infra), "'plan'")


def test_app_name_one_character_too_long_is_caught(infra: Path):
    edit(infra, "main.bicep", "@maxLength(55)\nparam appName", "@maxLength(56)\nparam appName")
    found = checks.name_length_problems(infra)
    assert_found(found, "resource 'plan' (Microsoft.Web/serverfarms): its name can have 61 characters")
    assert not any("'logAnalytics'" in problem for problem in found), found


def test_unbounded_app_name_is_caught(infra: Path):
    drop_line(infra, "main.bicep", "@maxLength\\(55\\)")
    assert_found(checks.name_length_problems(infra), "cannot bound the length of its name (parameter 'appName' has no @maxLength)")


def test_module_deployment_name_overflow_is_caught(infra: Path):
    edit(infra, "main.bicep", "name: take('${appName}-host-storage-access', 64)", "name: '${appName}-host-storage-access'")
    assert_found(checks.name_length_problems(infra), "module 'hostStorageAccess' (its deployment): its name can have 75 characters; Microsoft.Resources/deployments names have at most 64")


def test_storage_account_name_overflow_is_caught(infra: Path):
    edit(infra, "main.bicep", "@maxLength(24)\nparam deploymentStorageAccountName", "@maxLength(30)\nparam deploymentStorageAccountName")
    assert_found(checks.name_length_problems(infra), "resource 'deploymentStorage' (Microsoft.Storage/storageAccounts): its name can have 30 characters")


def test_short_app_name_under_the_site_minimum_is_caught(infra: Path):
    edit(infra, "main.bicep", "@minLength(2)\n@maxLength(55)\nparam appName", "@minLength(1)\n@maxLength(55)\nparam appName")
    assert_found(checks.name_length_problems(infra), "resource 'functionApp' (Microsoft.Web/sites): its name can have 1 characters; Microsoft.Web/sites names have at least 2")


def test_non_custom_runtime_is_caught(infra: Path):
    edit(infra, "main.bicep", "        name: 'custom'\n", "        name: 'node'\n")
    assert_found(checks.function_app_problems(infra), "runtime.name must be 'custom'")


def test_shared_key_access_is_caught(infra: Path):
    edit(infra, "main.bicep", "    allowSharedKeyAccess: false\n", "    allowSharedKeyAccess: true\n")
    assert_found(checks.storage_account_problems(infra), "allowSharedKeyAccess: false")
    assert_found(checks.problems(infra), "allowSharedKeyAccess")


def test_missing_shared_key_setting_is_caught(infra: Path):
    drop_line(infra, "main.bicep", "allowSharedKeyAccess:")
    assert_found(checks.storage_account_problems(infra), "deploymentStorage")


def test_new_storage_account_without_the_setting_is_caught(infra: Path):
    with (infra / "modules/host-storage-access.bicep").open("a") as f:
        f.write("\nresource extra 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'extra${uniqueString(resourceGroup().id)}'\n  location: resourceGroup().location\n  kind: 'StorageV2'\n  sku: {\n    name: 'Standard_LRS'\n  }\n}\n")
    assert_found(checks.storage_account_problems(infra), "modules/host-storage-access.bicep: storage account 'extra'")


def test_literal_secret_is_caught(infra: Path):
    edit(infra, "main.bicep", "    NX_CACHE_JWT_SECRET: tokenSecretSetting\n", "    NX_CACHE_JWT_SECRET: 'correct-horse-battery-staple-0123456789abcdef'\n")
    assert_found(checks.jwt_secret_problems(infra), "literal")
    assert_found(checks.problems(infra), "NX_CACHE_JWT_SECRET")


def test_literal_secret_on_one_branch_is_caught(infra: Path):
    edit(infra, "main.bicep", "(useKeyVaultSecret ? keyVaultSecretReference : tokenSecret)", "(useKeyVaultSecret ? keyVaultSecretReference : 'correct-horse-battery-staple-0123456789abcdef')")
    assert_found(checks.jwt_secret_problems(infra), "literal")


def test_secret_from_a_plain_parameter_is_caught(infra: Path):
    edit(infra, "main.bicep", "@secure()\nparam tokenSecret string", "param tokenSecret string")
    assert_found(checks.jwt_secret_problems(infra), "NX_CACHE_JWT_SECRET comes from parameter 'tokenSecret', which is not @secure()")


def test_secret_in_an_output_is_caught(infra: Path):
    with (infra / "main.bicep").open("a") as f:
        f.write("\noutput oops string = tokenSecret\n")
    assert_found(checks.jwt_secret_problems(infra), "exposes a @secure() parameter")


# Keyless access: the trust policy.


def test_dropping_the_trust_policy_setting_is_caught(infra: Path):
    drop_line(infra, "main.bicep", "NX_CACHE_TRUST_POLICY:")
    assert_found(checks.trust_policy_problems(infra), "app setting NX_CACHE_TRUST_POLICY is never set")
    assert_found(checks.problems(infra), "NX_CACHE_TRUST_POLICY")


def test_trust_policy_set_unconditionally_is_caught(infra: Path):
    """An empty NX_CACHE_TRUST_POLICY is not the same as none: it must be left out."""
    drop_line(infra, "main.bicep", "NX_CACHE_TRUST_POLICY:")
    edit(infra, "main.bicep", "    NX_CACHE_EXPIRED_GRACE: expiredGrace\n", "    NX_CACHE_EXPIRED_GRACE: expiredGrace\n    NX_CACHE_TRUST_POLICY: trustPolicySetting\n")
    assert_found(checks.trust_policy_problems(infra), 'with trustPolicy="", it is set to ""; NX_CACHE_TRUST_POLICY must not be set at all')


def test_trust_policy_under_the_wrong_condition_is_caught(infra: Path):
    edit(infra, "main.bicep", "var useTrustPolicy = !empty(trim(trustPolicy))", "var useTrustPolicy = !empty(trim(logLevel))")
    assert_found(checks.trust_policy_problems(infra), "must not be set at all")


def test_blank_trust_policy_that_turns_keyless_on_is_caught(infra: Path):
    edit(infra, "main.bicep", "var useTrustPolicy = !empty(trim(trustPolicy))", "var useTrustPolicy = !empty(trustPolicy)")
    assert_found(checks.trust_policy_problems(infra), 'with trustPolicy="  \\n", ')


def test_trust_policy_that_is_not_the_parameter_is_caught(infra: Path):
    edit(infra, "main.bicep", "string(int(trustPolicyProblem)) : trustPolicy", "string(int(trustPolicyProblem)) : '{\"rules\": []}'")
    assert_found(checks.trust_policy_problems(infra), "with a policy in trustPolicy, it is set to \"{\\\"rules\\\": []}\"; NX_CACHE_TRUST_POLICY must be the parameter's text")


def test_trust_policy_without_the_check_is_caught(infra: Path):
    edit(infra, "main.bicep", "var trustPolicySetting = (!empty(trustPolicyProblem)) ? string(int(trustPolicyProblem)) : trustPolicy", "var trustPolicySetting = trustPolicy")
    found = checks.trust_policy_problems(infra)
    assert_found(found, 'with trustPolicy="@/home/site/wwwroot/trust-policy.json", it is set to', "a value that is not a JSON object must stop the deployment")
    assert len(found) == 3, found


def test_trust_policy_on_by_default_is_caught(infra: Path):
    edit(infra, "main.bicep", "param trustPolicy string = ''", "param trustPolicy string = '{}'")
    assert_found(checks.trust_policy_problems(infra), "parameter 'trustPolicy' must be a string that defaults to ''")


def test_missing_trust_policy_parameter_is_caught(infra: Path):
    edit(infra, "main.bicep", "param trustPolicy string = ''", "param trustPolicyJson string = ''")
    assert_found(checks.trust_policy_problems(infra), "main.bicep has no parameter 'trustPolicy' for NX_CACHE_TRUST_POLICY")


# Rotation: the earlier secrets and their Key Vault access.


def test_dropping_the_previous_secrets_setting_is_caught(infra: Path):
    drop_line(infra, "main.bicep", "NX_CACHE_JWT_PREVIOUS_SECRETS:")
    assert_found(checks.previous_secrets_problems(infra), "app setting NX_CACHE_JWT_PREVIOUS_SECRETS is never set")
    assert_found(checks.problems(infra), "NX_CACHE_JWT_PREVIOUS_SECRETS")


def test_previous_secrets_set_unconditionally_is_caught(infra: Path):
    edit(infra, "main.bicep", "var usePreviousSecrets = useKeyVaultPreviousSecrets || (!empty(tokenPreviousSecrets))", "var usePreviousSecrets = true")
    assert_found(checks.previous_secrets_problems(infra), 'with the defaults, it is set to ""; NX_CACHE_JWT_PREVIOUS_SECRETS must not be set without earlier secrets')


def test_previous_secrets_reference_to_the_wrong_uri_is_caught(infra: Path):
    edit(infra, "main.bicep", "var previousSecretsReference = '@Microsoft.KeyVault(SecretUri=${tokenPreviousSecretsKeyVaultUri})'", "var previousSecretsReference = '@Microsoft.KeyVault(SecretUri=${tokenSecretKeyVaultUri})'")
    assert_found(
        checks.previous_secrets_problems(infra),
        'it is set to "@Microsoft.KeyVault(SecretUri=https://kv-current.vault.azure.net/secrets/nx-cache-jwt-secret)"',
        "must be \"@Microsoft.KeyVault(SecretUri=https://kv-previous.vault.azure.net/secrets/nx-cache-jwt-previous-secrets)\"",
    )


def test_malformed_previous_secrets_reference_is_caught(infra: Path):
    """Not a reference the platform resolves: the app would get the text itself and refuse to start."""
    edit(infra, "main.bicep", "'@Microsoft.KeyVault(SecretUri=${tokenPreviousSecretsKeyVaultUri})'", "'@Microsoft.KeyVault(SecretUri=${tokenPreviousSecretsKeyVaultUri}'")
    assert_found(checks.previous_secrets_problems(infra), "NX_CACHE_JWT_PREVIOUS_SECRETS must be \"@Microsoft.KeyVault(SecretUri=")


def test_literal_previous_secrets_are_caught(infra: Path):
    edit(infra, "main.bicep", "(useKeyVaultPreviousSecrets ? previousSecretsReference : tokenPreviousSecrets)", "(useKeyVaultPreviousSecrets ? previousSecretsReference : 'correct-horse-battery-staple-0123456789abcdef')")
    assert_found(checks.jwt_secret_problems(infra), "NX_CACHE_JWT_PREVIOUS_SECRETS can be the literal")
    assert_found(checks.previous_secrets_problems(infra), 'with tokenPreviousSecrets="AAAA')


def test_previous_secrets_from_a_plain_parameter_are_caught(infra: Path):
    edit(infra, "main.bicep", "@secure()\nparam tokenPreviousSecrets string", "param tokenPreviousSecrets string")
    assert_found(checks.previous_secrets_problems(infra), "parameter 'tokenPreviousSecrets' holds secrets and must be @secure()")
    assert_found(checks.jwt_secret_problems(infra), "NX_CACHE_JWT_PREVIOUS_SECRETS comes from parameter 'tokenPreviousSecrets', which is not @secure()")


def test_previous_secrets_in_an_output_are_caught(infra: Path):
    with (infra / "main.bicep").open("a") as f:
        f.write("\noutput oops string = 'old: ${tokenPreviousSecrets}'\n")
    assert_found(checks.jwt_secret_problems(infra), "output 'oops' exposes a @secure() parameter")


def test_previous_secrets_from_both_sources_are_caught(infra: Path):
    edit(infra, "main.bicep", "((!empty(tokenPreviousSecrets)) && useKeyVaultPreviousSecrets) ? 'Set at most one", "(false) ? 'Set at most one")
    assert_found(checks.previous_secrets_problems(infra), 'tokenPreviousSecretsKeyVaultUri="https://kv-previous', "the deployment must stop (at most one)")


def test_short_previous_secrets_are_caught(infra: Path):
    edit(infra, "main.bicep", "(length(tokenPreviousSecrets) < 32)", "(length(tokenPreviousSecrets) < 3)")
    assert_found(checks.previous_secrets_problems(infra), 'with tokenPreviousSecrets="too-short", it is set to "too-short"')


def test_previous_secrets_naming_the_current_secret_are_caught(infra: Path):
    edit(infra, "main.bicep", "(toLower(keyVaultSecretName) == toLower(previousKeyVaultSecretName))", "(toLower(keyVaultSecretName) == toLower(keyVaultName))")
    assert_found(checks.previous_secrets_problems(infra), "the deployment must stop (the current secret's own URI)")


def test_previous_secrets_role_on_the_current_secret_is_caught(infra: Path):
    edit(infra, "main.bicep", "    secretName: previousKeyVaultSecretName\n", "    secretName: keyVaultSecretName\n")
    assert_found(
        checks.key_vault_access_problems(infra),
        "no 'Key Vault Secrets User' on the secret kv-previous/nx-cache-jwt-previous-secrets in resource group rg-previous-vault, so NX_CACHE_JWT_PREVIOUS_SECRETS cannot be resolved",
    )
    assert_found(checks.problems(infra), "NX_CACHE_JWT_PREVIOUS_SECRETS cannot be resolved")


def test_previous_secrets_role_in_the_wrong_resource_group_is_caught(infra: Path):
    edit(infra, "main.bicep", "scope: resourceGroup(tokenPreviousSecretsKeyVaultResourceGroup)", "scope: resourceGroup(tokenSecretKeyVaultResourceGroup)")
    assert_found(checks.key_vault_access_problems(infra), "module 'previousSecretsKeyVaultAccess' on secret kv-previous/nx-cache-jwt-previous-secrets in rg-current-vault")


def test_missing_previous_secrets_role_is_caught(infra: Path):
    edit(infra, "main.bicep", "module previousSecretsKeyVaultAccess 'modules/keyvault-access.bicep' = if (useKeyVaultPreviousSecrets && grantKeyVaultSecretAccess) {", "module previousSecretsKeyVaultAccess 'modules/keyvault-access.bicep' = if (false) {")
    found = checks.key_vault_access_problems(infra)
    assert_found(found, "with tokenPreviousSecretsKeyVaultUri=", "(assignments made: module 'keyVaultAccess' on secret kv-current/nx-cache-jwt-secret in rg-current-vault)")
    assert not any("tokenSecretKeyVaultUri=" in problem for problem in found), found


def test_current_secret_role_on_the_wrong_secret_is_caught(infra: Path):
    edit(infra, "main.bicep", "    secretName: keyVaultSecretName\n", "    secretName: keyVaultName\n")
    assert_found(checks.key_vault_access_problems(infra), "no 'Key Vault Secrets User' on the secret kv-current/nx-cache-jwt-secret in resource group rg-current-vault, so NX_CACHE_JWT_SECRET cannot be resolved")


def test_key_vault_role_on_the_vault_is_caught(infra: Path):
    edit(infra, "modules/keyvault-access.bicep", "  scope: secret\n", "  scope: vault\n")
    found = checks.key_vault_access_problems(infra)
    assert_found(found, "module 'keyVaultAccess' grants 'Key Vault Secrets User' on the whole vault kv-current", "module 'previousSecretsKeyVaultAccess' grants 'Key Vault Secrets User' on the whole vault kv-previous")


def test_wrong_key_vault_role_is_caught(infra: Path):
    edit(infra, "modules/keyvault-access.bicep", checks.KEY_VAULT_SECRETS_USER, "21090545-7ca7-4776-b22c-e363652d74d2")
    found = checks.key_vault_access_problems(infra)
    assert_found(found, "so NX_CACHE_JWT_SECRET cannot be resolved (assignments made: none)", "so NX_CACHE_JWT_PREVIOUS_SECRETS cannot be resolved (assignments made: none)")


def test_app_settings_not_waiting_for_the_previous_secrets_role_is_caught(infra: Path):
    drop_line(infra, "main.bicep", "previousSecretsKeyVaultAccess$")
    assert_found(checks.key_vault_access_problems(infra), "the app settings do not wait for module 'previousSecretsKeyVaultAccess' (dependsOn)")


def test_previous_secrets_role_despite_grant_false_is_caught(infra: Path):
    edit(infra, "main.bicep", "= if (useKeyVaultPreviousSecrets && grantKeyVaultSecretAccess) {", "= if (useKeyVaultPreviousSecrets) {")
    assert_found(checks.key_vault_access_problems(infra), "and grantKeyVaultSecretAccess=false: module 'previousSecretsKeyVaultAccess' still grants")


def test_small_request_body_limit_is_caught(infra: Path):
    edit(infra, "main.bicep", "var requestBodyLimitBytes = maxArtifactBytes * 2\n", "var requestBodyLimitBytes = maxArtifactBytes / 2\n")
    assert_found(checks.size_limit_problems(infra), "is below NX_CACHE_MAX_ARTIFACT_SIZE")


def test_fixed_request_body_limit_is_caught(infra: Path):
    edit(infra, "main.bicep", "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: string(requestBodyLimitBytes)", "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: '104857600'")
    assert_found(checks.size_limit_problems(infra), "must both derive from one parameter")


def test_creating_the_cache_container_is_caught(infra: Path):
    edit(infra, "modules/cache-access.bicep", "containers@2023-05-01' existing = {", "containers@2023-05-01' = {")
    assert_found(checks.container_problems(infra), "creates container 'container' in an existing storage account")
    assert_found(checks.role_problems(infra), "container the template creates")


def test_unconditional_management_policy_is_caught(infra: Path):
    edit(infra, "modules/cache-access.bicep", "= if (!empty(lifecycleRules)) {", "= {")
    assert_found(checks.container_problems(infra), "must be opt-in")
    assert_found(checks.lifecycle_problems(infra), "with the defaults: modules/cache-access.bicep: management policy 'lifecyclePolicy' is written")


# Flex Consumption's per-instance HTTP concurrency, and NX_CACHE_MAX_CONNECTIONS.

DERIVED_CONCURRENCY = "var httpPerInstanceConcurrency = (perInstanceConcurrency > 0) ? perInstanceConcurrency : (memoryBoundConnections - handlerConnectionHeadroom)\n"


def test_concurrency_follows_the_instance_memory():
    """What the check relies on: the default grows with the instance size, a given value is used
    as given, and NX_CACHE_MAX_CONNECTIONS is the concurrency plus the headroom."""
    templates = checks.load(INFRA)
    derived = [checks._site_concurrency(templates, {"instanceMemoryMB": m})[1] for m in checks.FLEX_INSTANCE_MEMORY_MB]
    assert derived == sorted(set(derived)) and all(1 <= c <= checks.CONCURRENCY_LIMIT for c in derived), derived
    assert checks._site_concurrency(templates, {"perInstanceConcurrency": 50}) == ("value", 50)
    for memory, concurrency in zip(checks.FLEX_INSTANCE_MEMORY_MB, derived):
        _, connections = checks.setting_under(templates, {"instanceMemoryMB": memory}, "NX_CACHE_MAX_CONNECTIONS")
        assert checks.CONNECTION_HEADROOM[0] <= int(connections) - concurrency <= checks.CONNECTION_HEADROOM[1]


def test_missing_concurrency_is_caught(infra: Path):
    edit(infra, "main.bicep", "        triggers: {\n          http: {\n            perInstanceConcurrency: httpPerInstanceConcurrency\n          }\n        }\n", "")
    found = checks.concurrency_problems(infra)
    assert_found(found, "functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency is not set")
    assert_found(checks.problems(infra), "perInstanceConcurrency is not set")


def test_constant_default_concurrency_is_caught(infra: Path):
    edit(infra, "main.bicep", DERIVED_CONCURRENCY, "var httpPerInstanceConcurrency = (perInstanceConcurrency > 0) ? perInstanceConcurrency : 16\n")
    found = checks.concurrency_problems(infra)
    assert_found(found, "the default perInstanceConcurrency does not follow instanceMemoryMB (512 MB: 16, 2048 MB: 16, 4096 MB: 16)")
    assert len(found) == 1, found


def test_constant_concurrency_parameter_default_is_caught(infra: Path):
    edit(infra, "main.bicep", "param perInstanceConcurrency int = 0\n", "param perInstanceConcurrency int = 32\n")
    assert_found(checks.concurrency_problems(infra), "does not follow instanceMemoryMB (512 MB: 32, 2048 MB: 32, 4096 MB: 32)")


def test_concurrency_given_but_ignored_is_caught(infra: Path):
    edit(infra, "main.bicep", DERIVED_CONCURRENCY, "var httpPerInstanceConcurrency = memoryBoundConnections - handlerConnectionHeadroom\n")
    found = checks.concurrency_problems(infra)
    assert_found(found, 'with instanceMemoryMB=512, perInstanceConcurrency=50, perInstanceConcurrency is 27; a value given in \'perInstanceConcurrency\' must be used as given')


def test_concurrency_that_does_not_fit_is_caught(infra: Path):
    """A derivation that leaves nothing at the smallest size (the reserve above the instance)."""
    edit(infra, "main.bicep", "var functionsHostReserveMiB = 200\n", "var functionsHostReserveMiB = 600\n")
    assert_found(checks.concurrency_problems(infra), "with instanceMemoryMB=512, the derived perInstanceConcurrency is -12; it must be between 1 and 1000")


def test_unbounded_concurrency_parameter_is_caught(infra: Path):
    edit(infra, "main.bicep", "@maxValue(1000)\nparam perInstanceConcurrency", "@maxValue(5000)\nparam perInstanceConcurrency")
    assert_found(checks.concurrency_problems(infra), "parameter 'perInstanceConcurrency' must be an int with @minValue(0) and @maxValue at most 1000")


def test_missing_max_connections_is_caught(infra: Path):
    drop_line(infra, "main.bicep", "NX_CACHE_MAX_CONNECTIONS:")
    found = checks.concurrency_problems(infra)
    assert_found(found, "with instanceMemoryMB=512, app setting NX_CACHE_MAX_CONNECTIONS is not set; it must be a little above perInstanceConcurrency (27)")
    assert_found(checks.problems(infra), "NX_CACHE_MAX_CONNECTIONS is not set")


def test_fixed_max_connections_is_caught(infra: Path):
    edit(infra, "main.bicep", "NX_CACHE_MAX_CONNECTIONS: string(handlerMaxConnections)", "NX_CACHE_MAX_CONNECTIONS: '512'")
    found = checks.concurrency_problems(infra)
    assert_found(found, "with instanceMemoryMB=512, NX_CACHE_MAX_CONNECTIONS is 512 and perInstanceConcurrency 27: it must be 1 to 16 above it")
    # 512 happens to be within the headroom of nothing: every scenario is caught.
    assert len(found) == 6, found


def test_max_connections_without_headroom_is_caught(infra: Path):
    edit(infra, "main.bicep", "NX_CACHE_MAX_CONNECTIONS: string(handlerMaxConnections)", "NX_CACHE_MAX_CONNECTIONS: string(httpPerInstanceConcurrency)")
    assert_found(checks.concurrency_problems(infra), "NX_CACHE_MAX_CONNECTIONS is 27 and perInstanceConcurrency 27: it must be 1 to 16 above it")


def test_max_connections_from_memory_alone_is_caught(infra: Path):
    """Derived from memory too, but not from the concurrency: a given concurrency leaves it behind."""
    edit(infra, "main.bicep", "NX_CACHE_MAX_CONNECTIONS: string(handlerMaxConnections)", "NX_CACHE_MAX_CONNECTIONS: string(memoryBoundConnections)")
    found = checks.concurrency_problems(infra)
    assert_found(found, "with instanceMemoryMB=512, perInstanceConcurrency=50, NX_CACHE_MAX_CONNECTIONS is 31 and perInstanceConcurrency 50")
    assert not any("perInstanceConcurrency=" not in problem for problem in found), found


# The cache account's lifecycle policy: retention and the legacy @nx/azure-cache entries.

CACHE_ACCESS = "modules/cache-access.bicep"


def test_lifecycle_rules_share_one_policy():
    """What the check relies on: both rules, when both are asked for, in the one 'default' policy of
    the cache account; the legacy rule's prefixes are the ten digits of the container."""
    templates = checks.load(INFRA)
    assert checks.lifecycle_policies(templates, {}) == []
    (policy,) = checks.lifecycle_policies(templates, {"retentionDays": 30, "legacyEntriesRetentionDays": 7})
    assert (policy["name"], policy["account"]) == ("default", "acmenxcache")
    prefixes = {rule["name"]: rule["definition"]["filters"]["prefixMatch"] for rule in policy["rules"]}
    assert prefixes["nxCacheRetention"] == ["nx-cache/org/", "nx-cache/teams/", "nx-cache/turbo/"]
    assert prefixes["nxAzureCacheLegacyEntries"] == [f"nx-cache/{d}" for d in range(10)]
    (legacy_only,) = checks.lifecycle_policies(templates, {"legacyEntriesRetentionDays": 7})
    assert [rule["name"] for rule in legacy_only["rules"]] == ["nxAzureCacheLegacyEntries"]


def test_legacy_rule_on_by_default_is_caught(infra: Path):
    edit(infra, "main.bicep", "param legacyEntriesRetentionDays int = 0\n", "param legacyEntriesRetentionDays int = 7\n")
    found = checks.lifecycle_problems(infra)
    assert_found(
        found,
        "parameter 'legacyEntriesRetentionDays' must be an int with @minValue(0) that defaults to 0 (the legacy rule off)",
        "with the defaults: modules/cache-access.bicep: management policy 'lifecyclePolicy' is written",
    )
    assert_found(checks.problems(infra), "legacyEntriesRetentionDays")


def test_legacy_rule_on_by_default_in_the_module_is_caught(infra: Path):
    """main.bicep right, but the module ignores what it is given and turns the rule on itself."""
    edit(infra, "main.bicep", "    legacyEntriesRetentionDays: legacyEntriesRetentionDays\n", "")
    edit(infra, CACHE_ACCESS, "param legacyEntriesRetentionDays int = 0\n", "param legacyEntriesRetentionDays int = 30\n")
    found = checks.lifecycle_problems(infra)
    assert_found(found, "with the defaults: modules/cache-access.bicep: management policy 'lifecyclePolicy' is written", "deletes 30 days after the last modification; expected 7")


def test_legacy_rule_matching_org_is_caught(infra: Path):
    edit(infra, CACHE_ACCESS, "          '${containerName}/0'\n", "          '${containerName}/0'\n          '${containerName}/org/'\n")
    found = checks.lifecycle_problems(infra)
    assert_found(found, "rule 'nxAzureCacheLegacyEntries' matches this cache's own entries under nx-cache/org/", "0 legacy-entries rules")
    assert_found(checks.problems(infra), "matches this cache's own entries")


def test_legacy_rule_matching_teams_is_caught(infra: Path):
    """A prefix that is not a digit: 't' matches teams/ (and nothing the plugin wrote)."""
    edit(infra, CACHE_ACCESS, "          '${containerName}/9'\n", "          '${containerName}/t'\n")
    found = checks.lifecycle_problems(infra)
    assert_found(found, "rule 'nxAzureCacheLegacyEntries' matches this cache's own entries under nx-cache/teams/")


def test_legacy_rule_on_the_whole_container_is_caught(infra: Path):
    edit(infra, CACHE_ACCESS, "          '${containerName}/5'\n", "          '${containerName}/'\n")
    found = checks.lifecycle_problems(infra)
    assert_found(found, "matches this cache's own entries under nx-cache/org/, nx-cache/teams/, nx-cache/turbo/")


def test_legacy_rule_missing_a_digit_is_caught(infra: Path):
    drop_line(infra, CACHE_ACCESS, "'\\$\\{containerName\\}/5'")
    found = checks.lifecycle_problems(infra)
    assert_found(found, "rule 'nxAzureCacheLegacyEntries' does not cover the hashes that start with 5")
    assert not any("own entries" in problem for problem in found), found


def test_legacy_rule_with_a_longer_prefix_is_caught(infra: Path):
    edit(infra, CACHE_ACCESS, "          '${containerName}/1'\n", "          '${containerName}/12'\n")
    assert_found(checks.lifecycle_problems(infra), "does not cover the hashes that start with 1", "has the prefixes nx-cache/12")


def test_legacy_rule_outside_the_container_is_caught(infra: Path):
    edit(infra, CACHE_ACCESS, "          '${containerName}/3'\n", "          '3'\n")
    assert_found(checks.lifecycle_problems(infra), "has the prefix '3', which is not under the container (nx-cache/)")


def test_legacy_rule_with_the_retention_days_is_caught(infra: Path):
    edit(infra, CACHE_ACCESS, "            daysAfterModificationGreaterThan: legacyEntriesRetentionDays\n", "            daysAfterModificationGreaterThan: retentionDays\n")
    assert_found(checks.lifecycle_problems(infra), "with legacyEntriesRetentionDays=7: rule 'nxAzureCacheLegacyEntries' deletes 0 days after the last modification; expected 7")


def test_legacy_days_not_passed_to_the_module_is_caught(infra: Path):
    edit(infra, "main.bicep", "    legacyEntriesRetentionDays: legacyEntriesRetentionDays\n", "")
    found = checks.lifecycle_problems(infra)
    assert_found(found, "with legacyEntriesRetentionDays=7: 0 lifecycle policies are written on the cache account")


def test_legacy_rule_replacing_the_retention_rule_is_caught(infra: Path):
    """Both asked for: one policy per account, so both rules must be in it."""
    edit(infra, CACHE_ACCESS, "var lifecycleRules = concat(retentionRules, legacyRules)", "var lifecycleRules = (legacyEntriesRetentionDays > 0) ? legacyRules : retentionRules")
    found = checks.lifecycle_problems(infra)
    assert_found(found, "with retentionDays=30, legacyEntriesRetentionDays=7: 0 retention rules (prefixes nx-cache/org/, nx-cache/teams/, nx-cache/turbo/); expected one")
    assert len(found) == 1, found


def test_legacy_rule_in_a_second_policy_is_caught(infra: Path):
    """A policy of its own for the legacy rule: the account has one, and the second replaces the first."""
    edit(infra, CACHE_ACCESS, "var lifecycleRules = concat(retentionRules, legacyRules)", "var lifecycleRules = retentionRules")
    with (infra / CACHE_ACCESS).open("a") as f:
        f.write("\nresource legacyPolicy 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = if (legacyEntriesRetentionDays > 0) {\n  parent: account\n  name: 'default'\n  properties: {\n    policy: {\n      rules: legacyRules\n    }\n  }\n}\n")
    found = checks.lifecycle_problems(infra)
    assert_found(found, "with retentionDays=30, legacyEntriesRetentionDays=7: 2 lifecycle policies are written on the cache account")


def test_retention_rule_matching_the_legacy_entries_is_caught(infra: Path):
    """The retention rule on the whole container would delete the legacy entries (and be no retention rule)."""
    edit(infra, CACHE_ACCESS, "          '${containerName}/org/'\n          '${containerName}/teams/'\n          '${containerName}/turbo/'\n", "          '${containerName}/'\n")
    found = checks.lifecycle_problems(infra)
    assert_found(found, "rule 'nxCacheRetention' (prefixes nx-cache/) is neither the retention rule nor the legacy-entries rule", "0 retention rules")


def test_retention_rule_without_turbo_artifacts_is_caught(infra: Path):
    """Turborepo's artifacts under turbo/ would never expire."""
    drop_line(infra, CACHE_ACCESS, "'\\$\\{containerName\\}/turbo/'")
    found = checks.lifecycle_problems(infra)
    assert_found(found, "rule 'nxCacheRetention' (prefixes nx-cache/org/, nx-cache/teams/) is neither the retention rule nor the legacy-entries rule", "0 retention rules")


def test_unknown_parameter_in_the_parameters_file_is_caught(infra: Path):
    edit(infra, "main.parameters.json", '"sasTtl"', '"sasTTL"')
    assert_found(checks.parameters_file_problems(infra), "'sasTTL' is not a parameter")


def test_secret_in_the_parameters_file_is_caught(infra: Path):
    edit(infra, "main.parameters.json", '"tokenSecretKeyVaultUri"', '"tokenSecret"')
    assert_found(checks.parameters_file_problems(infra), "secure parameter 'tokenSecret'")


def test_bad_value_in_the_parameters_file_is_caught(infra: Path):
    edit(infra, "main.parameters.json", '"value": "read-write"', '"value": "rw"')
    edit(infra, "main.parameters.json", '"value": 512', '"value": 1024')
    assert_found(checks.parameters_file_problems(infra), "'mode' = 'rw'", "'instanceMemoryMB' = 1024")


def test_missing_required_parameter_is_caught(infra: Path):
    edit(infra, "main.parameters.json", '"appName"', '"appNameX"')
    assert_found(checks.parameters_file_problems(infra), "required parameter 'appName' is missing")


SYNTAX_BREAKS = {
    # an unclosed object
    "main.bicep": ("  properties: {\n    allow: false\n  }\n}\n\n// ----", "  properties: {\n    allow: false\n  }\n\n// ----"),
    # a half-written expression
    "modules/cache-access.bicep": ("name: guid(container.id, principalId, storageBlobDataContributorRoleId)", "name: guid(container.id, principalId,"),
    # a stray token
    "modules/host-storage-access.bicep": ("  scope: account\n", "  scope: account account\n"),
    # an unterminated string
    "modules/keyvault-access.bicep": ("name: keyVaultName\n", "name: 'keyVaultName\n"),
    # an unclosed call
    "modules/workbook.bicep": ("var sourceId = toLower(appInsightsId)\n", "var sourceId = toLower(appInsightsId\n"),
}


@pytest.mark.parametrize("relative", sorted(SYNTAX_BREAKS))
def test_broken_syntax_is_caught(infra: Path, relative: str):
    old, new = SYNTAX_BREAKS[relative]
    edit(infra, relative, old, new)
    assert_found(checks.syntax_problems(infra), f"{relative}: does not parse")
    assert_found(checks.problems(infra), "does not parse")


def test_every_bicep_file_has_a_syntax_mutation():
    assert sorted(SYNTAX_BREAKS) == sorted(p.relative_to(INFRA).as_posix() for p in BICEP_FILES)


# The workbook: its deployment (main.bicep, modules/workbook.bicep).

WORKBOOK_MODULE = "modules/workbook.bicep"
WORKBOOK_CONDITION = "module workbook 'modules/workbook.bicep' = if (deployWorkbook) {"


def test_unconditional_workbook_is_caught(infra: Path):
    edit(infra, "main.bicep", WORKBOOK_CONDITION, "module workbook 'modules/workbook.bicep' = {")
    found = checks.workbook_deployment_problems(infra)
    assert_found(found, "with deployWorkbook=false: module 'workbook' (the workbook) is deployed, with deployWorkbook=false")
    assert_found(checks.problems(infra), "module 'workbook' (the workbook) is deployed")


def test_workbook_under_the_wrong_condition_is_caught(infra: Path):
    edit(infra, "main.bicep", WORKBOOK_CONDITION, "module workbook 'modules/workbook.bicep' = if (!deployWorkbook) {")
    found = checks.workbook_deployment_problems(infra)
    assert_found(found, "with deployWorkbook=true: module 'workbook' (the workbook) is not deployed, with deployWorkbook and Application Insights", "with deployWorkbook=false: module 'workbook' (the workbook) is deployed")


def test_workbook_without_application_insights_is_caught(infra: Path):
    """Were Application Insights ever optional, the workbook must follow it."""
    edit(infra, "main.bicep", "param deployWorkbook bool = true\n", "param deployWorkbook bool = true\n\nparam deployMonitoring bool = true\n")
    edit(infra, "main.bicep", "resource appInsights 'Microsoft.Insights/components@2020-02-02' = {", "resource appInsights 'Microsoft.Insights/components@2020-02-02' = if (deployMonitoring) {")
    found = checks.workbook_deployment_problems(infra)
    assert_found(found, "with deployMonitoring=false: module 'workbook' (the workbook) is deployed, with no Application Insights")
    assert len(found) == 1, found


def test_missing_workbook_parameter_is_caught(infra: Path):
    edit(infra, "main.bicep", "param deployWorkbook bool = true\n", "param workbook bool = true\n")
    assert_found(checks.workbook_deployment_problems(infra), "main.bicep has no parameter 'deployWorkbook'")


def test_workbook_off_by_default_is_caught(infra: Path):
    edit(infra, "main.bicep", "param deployWorkbook bool = true\n", "param deployWorkbook bool = false\n")
    assert_found(checks.workbook_deployment_problems(infra), "parameter 'deployWorkbook' must be a bool that defaults to true")


def test_workbook_linked_to_the_workspace_is_caught(infra: Path):
    edit(infra, "main.bicep", "    appInsightsId: appInsights.id\n", "    appInsightsId: logAnalytics.id\n")
    found = checks.workbook_deployment_problems(infra)
    assert_found(found, "properties.sourceId must be the id of main.bicep's Application Insights", "fallbackResourceIds must name the Application Insights resource only")


def test_workbook_linked_to_the_resource_group_is_caught(infra: Path):
    edit(infra, WORKBOOK_MODULE, "    sourceId: sourceId\n", "    sourceId: resourceGroup().id\n")
    found = checks.workbook_deployment_problems(infra)
    assert_found(found, "modules/workbook.bicep: workbook 'workbook': properties.sourceId must be the id of main.bicep's Application Insights")
    assert len(found) == 1, found


def test_workbook_fallback_to_another_resource_is_caught(infra: Path):
    edit(infra, WORKBOOK_MODULE, "      fallbackResourceIds: [\n        sourceId\n", "      fallbackResourceIds: [\n        resourceGroup().id\n")
    assert_found(checks.workbook_deployment_problems(infra), "fallbackResourceIds must name the Application Insights resource only")


def test_workbook_data_added_in_bicep_is_caught(infra: Path):
    edit(infra, WORKBOOK_MODULE, "      fallbackResourceIds: [\n", "      isLocked: true\n      fallbackResourceIds: [\n")
    assert_found(checks.workbook_deployment_problems(infra), "properties.serializedData adds 'isLocked' to workbook.json")


def test_workbook_from_another_file_is_caught(infra: Path):
    edit(infra, WORKBOOK_MODULE, "loadJsonContent('../workbook.json')", "loadJsonContent('../main.parameters.json')")
    assert_found(checks.workbook_deployment_problems(infra), "properties.serializedData loads '../main.parameters.json', not infra/workbook.json")


def test_inline_workbook_is_caught(infra: Path):
    path = infra / WORKBOOK_MODULE
    text = path.read_text()
    start = text.index("    serializedData: ")
    end = text.index("    }))\n", start) + len("    }))\n")
    path.write_text(text[:start] + "    serializedData: '{\"version\":\"Notebook/1.0\",\"items\":[]}'\n" + text[end:])
    assert_found(checks.workbook_deployment_problems(infra), "properties.serializedData is \"{\\\"version\\\"", "it must be loadTextContent('workbook.json')")


def test_workbook_loaded_as_text_passes(infra: Path):
    """loadTextContent() is the other accepted form (with no fallbackResourceIds)."""
    path = infra / WORKBOOK_MODULE
    text = path.read_text()
    start = text.index("    serializedData: ")
    end = text.index("    }))\n", start) + len("    }))\n")
    path.write_text(text[:start] + "    serializedData: loadTextContent('../workbook.json')\n" + text[end:])
    assert checks.workbook_deployment_problems(infra) == []


def test_workbook_with_a_fixed_name_is_caught(infra: Path):
    edit(infra, WORKBOOK_MODULE, "  name: guid(resourceGroup().id, appName, 'nx-cache-workbook')\n", "  name: 'nx-cache-workbook'\n")
    assert_found(checks.workbook_deployment_problems(infra), "its name must be guid(...)")


def test_workbook_kind_and_category_are_caught(infra: Path):
    edit(infra, WORKBOOK_MODULE, "  kind: 'shared'\n", "  kind: 'user'\n")
    edit(infra, WORKBOOK_MODULE, "    category: 'workbook'\n", "    category: 'tsg'\n")
    edit(infra, WORKBOOK_MODULE, "    version: 'Notebook/1.0'\n", "    version: '1.0'\n")
    assert_found(checks.workbook_deployment_problems(infra), "kind must be 'shared'", "properties.category must be 'workbook'", "properties.version must be 'Notebook/1.0'")


def test_workbook_missing_required_properties_are_caught(infra: Path):
    drop_line(infra, WORKBOOK_MODULE, "displayName:")
    drop_line(infra, WORKBOOK_MODULE, "location: location")
    assert_found(checks.workbook_deployment_problems(infra), "properties.displayName is required", "location is required")


def test_unchecked_workbook_api_version_is_caught(infra: Path):
    edit(infra, WORKBOOK_MODULE, "workbooks@2023-06-01'", "workbooks@2018-06-17-preview'")
    assert_found(checks.workbook_deployment_problems(infra), "uses Microsoft.Insights/workbooks@2018-06-17-preview, an API version not checked")


def test_workbook_conditional_inside_its_module_is_caught(infra: Path):
    edit(infra, WORKBOOK_MODULE, "workbooks@2023-06-01' = {", "workbooks@2023-06-01' = if (!empty(appName)) {")
    assert_found(checks.workbook_deployment_problems(infra), "workbook 'workbook' is conditional inside its module")


def test_second_workbook_is_caught(infra: Path):
    with (infra / "main.bicep").open("a") as f:
        f.write("\nresource otherWorkbook 'Microsoft.Insights/workbooks@2023-06-01' = {\n  name: guid(resourceGroup().id)\n  location: location\n  kind: 'shared'\n  properties: {\n    displayName: 'x'\n    category: 'workbook'\n    serializedData: loadTextContent('workbook.json')\n  }\n}\n")
    assert_found(checks.workbook_deployment_problems(infra), "the templates create 2 Microsoft.Insights/workbooks resources; expected one")


def test_workbook_module_deployed_twice_is_caught(infra: Path):
    with (infra / "main.bicep").open("a") as f:
        f.write("\nmodule workbookAgain 'modules/workbook.bicep' = {\n  name: 'workbook-again'\n  params: {\n    appName: appName\n    appInsightsId: appInsights.id\n  }\n}\n")
    assert_found(checks.workbook_deployment_problems(infra), "must be in a module that main.bicep deploys once (found 2 deployments)")


def test_workbook_without_application_insights_at_all_is_caught(infra: Path):
    edit(infra, "main.bicep", "resource appInsights 'Microsoft.Insights/components@2020-02-02' = {", "resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {")
    assert_found(checks.workbook_deployment_problems(infra), "main.bicep creates no Application Insights")


# The workbook: its content (infra/workbook.json).


def edit_workbook(infra: Path, change) -> None:
    """Applies `change` to the parsed infra/workbook.json and writes it back."""
    path = infra / checks.WORKBOOK_FILE
    workbook = json.loads(path.read_text())
    change(workbook)
    path.write_text(json.dumps(workbook, indent=2))


def item(workbook: dict, name: str) -> dict:
    (found,) = [i for i in workbook["items"] if i.get("name") == name]
    return found


def edit_query(infra: Path, name: str, old: str, new: str) -> None:
    """Replaces `old` (which must occur once) in the query of item `name`."""

    def change(workbook):
        content = item(workbook, name)["content"]
        assert content["query"].count(old) == 1, f"{old!r} in {name}: {content['query']}"
        content["query"] = content["query"].replace(old, new)

    edit_workbook(infra, change)


def test_workbook_that_is_not_json_is_caught(infra: Path):
    path = infra / checks.WORKBOOK_FILE
    path.write_text(path.read_text()[:-20])
    assert_found(checks.workbook_content_problems(infra), "workbook.json: not JSON")
    assert_found(checks.problems(infra), "workbook.json: not JSON")


def test_missing_workbook_is_caught(infra: Path):
    (infra / checks.WORKBOOK_FILE).unlink()
    assert_found(checks.workbook_content_problems(infra), "infra/workbook.json is missing")


def test_workbook_of_another_schema_is_caught(infra: Path):
    edit(infra, checks.WORKBOOK_FILE, '"version": "Notebook/1.0"', '"version": "Notebook/2.0"')
    assert_found(checks.workbook_content_problems(infra), "workbook.json: version is 'Notebook/2.0'")


def test_workbook_with_a_resource_id_is_caught(infra: Path):
    edit_workbook(infra, lambda w: w.update(fallbackResourceIds=["/subscriptions/0000/resourceGroups/rg/providers/microsoft.insights/components/x"]))
    assert_found(checks.workbook_content_problems(infra), "workbook.json: names a resource itself")


def test_bracket_access_to_a_field_is_caught(infra: Path):
    edit_query(infra, "outcomes", "by outcome = tostring(e.outcome)", 'by outcome = tostring(e["outcome"])')
    found = checks.workbook_content_problems(infra)
    assert_found(found, 'workbook.json: query /items/outcomes/content: reads the line as `e["outcome"]`; only as e.FIELD')
    assert_found(checks.problems(infra), "only as e.FIELD")


def test_field_through_another_name_is_caught(infra: Path):
    edit_query(infra, "subjects", "| extend e = parse_json(message)\n", "| extend e = parse_json(message)\n| extend line = e\n")
    assert_found(checks.workbook_content_problems(infra), "query /items/subjects/content: reads the line as `e`; only as e.FIELD")


def test_line_parsed_under_another_name_is_caught(infra: Path):
    edit_query(infra, "namespaces", "| extend e = parse_json(message)\n", "| extend e = parse_json(message)\n| extend entry = parse_json(message)\n")
    assert_found(checks.workbook_content_problems(infra), "query /items/namespaces/content: uses parse_json() beyond `extend e = parse_json(message)`")


def test_unpacked_line_is_caught(infra: Path):
    edit_query(infra, "namespaces", "| extend e = parse_json(message)\n", "| extend e = parse_json(message)\n| evaluate bag_unpack(e)\n")
    found = checks.workbook_content_problems(infra)
    assert_found(found, "uses bag_unpack() beyond", "reads the line as `e`;")


def test_line_not_parsed_into_e_is_caught(infra: Path):
    edit_query(infra, "hit-rate", "| extend e = parse_json(message)\n", "| extend entry = parse_json(message)\n")
    assert_found(checks.workbook_content_problems(infra), "query /items/hit-rate/content: parses the line into e 0 times")


def test_unknown_field_is_caught(infra: Path):
    edit_query(infra, "bytes-stored", "sum(tolong(e.bytes) * itemCount)", "sum(tolong(e.size) * itemCount)")
    assert_found(checks.workbook_content_problems(infra), "query /items/bytes-stored/content: e.size is not a field of the handler's request line")


def test_field_name_with_capitals_is_caught(infra: Path):
    edit_query(infra, "outcomes", "by outcome = tostring(e.outcome)", "by outcome = tostring(e.Outcome)")
    assert_found(checks.workbook_content_problems(infra), "reads the line as `e.Outcome`; only as e.FIELD")


def test_outcome_the_handler_never_writes_is_caught(infra: Path):
    edit_query(infra, "bytes-stored", '| where tostring(e.outcome) == "stored"', '| where tostring(e.outcome) == "store"')
    edit_query(infra, "hit-rate", 'tostring(e.outcome) in ("hit", "miss")', 'tostring(e.outcome) in ("hit", "misses")')
    found = checks.workbook_content_problems(infra)
    assert_found(found, "query /items/bytes-stored/content: compares e.outcome with 'store', which the handler never writes", "query /items/hit-rate/content: compares e.outcome with 'misses'")


def test_level_the_handler_never_writes_is_caught(infra: Path):
    edit_query(infra, "storage-errors", 'tostring(e.level) in ("WARN", "ERROR")', 'tostring(e.level) in ("Warning", "ERROR")')
    assert_found(checks.workbook_content_problems(infra), "compares e.level with 'Warning'")


def test_query_of_a_workspace_is_caught(infra: Path):
    edit_workbook(infra, lambda w: item(w, "subjects")["content"].update(resourceType="microsoft.operationalinsights/workspaces"))
    assert_found(checks.workbook_content_problems(infra), "query /items/subjects/content: its data source must be Application Insights")


def test_query_of_another_kind_is_caught(infra: Path):
    edit_workbook(infra, lambda w: item(w, "outcomes")["content"].update(queryType=1))
    assert_found(checks.workbook_content_problems(infra), "not queryType 1")


def test_parameter_query_of_another_resource_is_caught(infra: Path):
    def change(workbook):
        (namespace,) = [p for p in item(workbook, "parameters")["content"]["parameters"] if p["name"] == "Namespace"]
        namespace["crossComponentResources"] = ["/providers/x"]

    edit_workbook(infra, change)
    assert_found(checks.workbook_content_problems(infra), "query /items/parameters/content/parameters/Namespace: queries other resources")


def test_query_of_another_table_is_caught(infra: Path):
    edit_query(infra, "outcomes", "traces\n", "requests\n")
    assert_found(checks.workbook_content_problems(infra), "query /items/outcomes/content: does not read `traces`")


def test_query_of_every_line_is_caught(infra: Path):
    edit_query(infra, "subjects", '| where tostring(e.message) == "request"\n', "")
    assert_found(checks.workbook_content_problems(infra), "query /items/subjects/content: does not keep the request lines")


def test_query_item_without_the_time_range_is_caught(infra: Path):
    edit_workbook(infra, lambda w: item(w, "namespaces")["content"].pop("timeContextFromParameter"))
    assert_found(checks.workbook_content_problems(infra), "query item namespaces does not take the workbook's time range parameter (TimeRange)")


def test_query_item_that_is_not_kql_is_caught(infra: Path):
    edit_workbook(infra, lambda w: item(w, "namespaces")["content"].update(version="KqlItem/2.0"))
    assert_found(checks.workbook_content_problems(infra), "query item namespaces is not a KqlItem/1.0 with a query")


def test_workbook_without_the_top_subjects_is_caught(infra: Path):
    edit_workbook(infra, lambda w: w["items"].remove(item(w, "subjects")))
    assert_found(checks.workbook_content_problems(infra), "no query uses e.subject; the workbook must chart it")


def test_workbook_with_no_items_is_caught(infra: Path):
    edit_workbook(infra, lambda w: w.update(items=[]))
    assert_found(checks.workbook_content_problems(infra), "workbook.json: no items")


def test_undocumented_field_in_the_workbook_is_caught(infra: Path):
    edit_query(infra, "outcomes", "by outcome = tostring(e.outcome)", "by outcome = tostring(e.outcome), method = tostring(e.method)")
    found = checks.workbook_content_problems(infra)
    assert_found(found, "workbook.json: the first item does not name e.method", "modules/workbook.bicep: the comment at its top does not name e.method")
    assert len(found) == 2, found


def test_workbook_without_its_description_is_caught(infra: Path):
    edit_workbook(infra, lambda w: w["items"].remove(item(w, "about")))
    assert_found(checks.workbook_content_problems(infra), "the first item must be a markdown text that names the log fields")


def test_module_comment_missing_a_field_is_caught(infra: Path):
    edit(infra, WORKBOOK_MODULE, "e.outcome, e.bytes,", "e.bytes,")
    assert_found(checks.workbook_content_problems(infra), "modules/workbook.bicep: the comment at its top does not name e.outcome")


def test_workbook_under_a_condition_that_cannot_be_evaluated_is_caught(infra: Path):
    edit(infra, "main.bicep", WORKBOOK_CONDITION, "module workbook 'modules/workbook.bicep' = if (deployWorkbook && (!empty(appInsights.properties.ConnectionString))) {")
    assert_found(checks.workbook_deployment_problems(infra), "cannot evaluate whether module 'workbook' is deployed")


def test_workbook_merged_with_a_computed_object_is_caught(infra: Path):
    edit(infra, WORKBOOK_MODULE, "loadJsonContent('../workbook.json'), {", "loadJsonContent('../workbook.json'), json('{}'), {")
    assert_found(checks.workbook_deployment_problems(infra), "union()s {\"function\"", "only an object literal may be")


def test_workbook_that_is_not_an_object_is_caught(infra: Path):
    (infra / checks.WORKBOOK_FILE).write_text("[]\n")
    assert_found(checks.workbook_content_problems(infra), "workbook.json: not a JSON object")
