"""Offline checks of the Bicep templates in infra/.

No Bicep compiler and no Azure here: every `.bicep` file is parsed with pycep-parser, and the
checks below read the parsed trees (pycep's JSON form). Each check is a plain function
`xxx_problems(infra_dir) -> list[str]`; an empty list means the check passes. `problems()` runs
them all. The mutation tests in test_bicep.py break a copy of the templates on purpose and call
these functions directly, to prove each check can fail.

Some checks go further than the shape of the tree: they evaluate the templates with given
parameter values (SCENARIO_BASE plus the scenario's own), as ARM would for the small part of the
language that the settings and role assignments use. That tells which app settings a deployment
writes, what they hold, which role assignments it makes, and which parameter values stop it (the
templates' int('sentence') idiom). An expression outside that part is reported, not guessed.

Limits of pycep's tree, which the checks work around:
- A quoted literal and a bare name both come out as a Python str ('x' and x are alike), so a str
  is taken as a name when it names a parameter, variable, resource or module of its file.
- Operator precedence is not Bicep's: `!a ? b : c` parses as `!(a ? b : c)` and `a > b ? c : d`
  as `a > (b ? c : d)`. The templates parenthesize such conditions; the checks only read
  conditions that are bare names.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from pycep import BicepParser

# Settings the handler reads, which must be set whatever the parameters are.
REQUIRED_APP_SETTINGS = (
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_CONTAINER",
    "NX_CACHE_JWT_SECRET",
    "NX_CACHE_MODE",
    "NX_CACHE_MAX_ARTIFACT_SIZE",
    "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT",
    "NX_CACHE_LOG_FORMAT",
)
# Flex Consumption takes the runtime from functionAppConfig.runtime and rejects these settings.
FORBIDDEN_APP_SETTINGS = ("FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION")

# Built-in role definition ids.
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_BLOB_DELEGATOR = "db58b8e5-c6ad-4a2a-8342-4190687cbf4a"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
ROLE_NAMES = {
    STORAGE_BLOB_DATA_CONTRIBUTOR: "Storage Blob Data Contributor",
    STORAGE_BLOB_DELEGATOR: "Storage Blob Delegator",
    STORAGE_BLOB_DATA_OWNER: "Storage Blob Data Owner",
}

# main.bicep's parameters naming the existing cache storage.
CACHE_ACCOUNT_PARAM = "cacheStorageAccountName"
CACHE_CONTAINER_PARAM = "cacheContainerName"
CACHE_RESOURCE_GROUP_PARAM = "cacheStorageResourceGroup"

# main.bicep's parameters for the token secrets and keyless access, and the settings they feed.
SECRET_URI_PARAM = "tokenSecretKeyVaultUri"
SECRET_RESOURCE_GROUP_PARAM = "tokenSecretKeyVaultResourceGroup"
PREVIOUS_SECRETS_PARAM = "tokenPreviousSecrets"
PREVIOUS_SECRETS_URI_PARAM = "tokenPreviousSecretsKeyVaultUri"
PREVIOUS_SECRETS_RESOURCE_GROUP_PARAM = "tokenPreviousSecretsKeyVaultResourceGroup"
GRANT_KEY_VAULT_ACCESS_PARAM = "grantKeyVaultSecretAccess"
TRUST_POLICY_PARAM = "trustPolicy"
SECRET_SETTING = "NX_CACHE_JWT_SECRET"
PREVIOUS_SECRETS_SETTING = "NX_CACHE_JWT_PREVIOUS_SECRETS"
TRUST_POLICY_SETTING = "NX_CACHE_TRUST_POLICY"

# Key Vault Secrets User: read secret contents, which is what resolving a Key Vault reference takes.
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"

# Parameter values the scenario checks start from (every other parameter takes its default). Each
# scenario then sets the parameters it is about. The two secrets are in different vaults and
# resource groups, so that a wiring that mixes them up cannot pass.
SCENARIO_BASE = {
    "appName": "acme-nx-cache",
    CACHE_ACCOUNT_PARAM: "acmenxcache",
    CACHE_CONTAINER_PARAM: "nx-cache",
    CACHE_RESOURCE_GROUP_PARAM: "rg-cache",
    SECRET_URI_PARAM: "https://kv-current.vault.azure.net/secrets/nx-cache-jwt-secret",
    SECRET_RESOURCE_GROUP_PARAM: "rg-current-vault",
}
PREVIOUS_SECRETS_URI = "https://kv-previous.vault.azure.net/secrets/nx-cache-jwt-previous-secrets"

# Anything that is, or makes, a storage key or a key-based connection string.
FORBIDDEN_WORDS = (
    "listkeys",
    "accountkey",
    "azure_storage_connection_string",
    "defaultendpointsprotocol",
)

ACCOUNT_TYPE = "Microsoft.Storage/storageAccounts"
CONTAINER_TYPE = "Microsoft.Storage/storageAccounts/blobServices/containers"
ROLE_ASSIGNMENT_TYPE = "Microsoft.Authorization/roleAssignments"
VAULT_TYPE = "Microsoft.KeyVault/vaults"
VAULT_SECRET_TYPE = "Microsoft.KeyVault/vaults/secrets"
SITE_TYPE = "Microsoft.Web/sites"
SITE_CONFIG_TYPE = "Microsoft.Web/sites/config"
POLICY_TYPE = "Microsoft.Storage/storageAccounts/managementPolicies"
SERVER_FARM_TYPE = "Microsoft.Web/serverfarms"
PUBLISHING_POLICY_TYPE = "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
WORKSPACE_TYPE = "Microsoft.OperationalInsights/workspaces"
COMPONENT_TYPE = "Microsoft.Insights/components"
IDENTITY_TYPE = "Microsoft.ManagedIdentity/userAssignedIdentities"
# A module is deployed as a Microsoft.Resources/deployments resource named by its `name:`.
DEPLOYMENT_TYPE = "Microsoft.Resources/deployments"

# Name lengths (min, max) from Learn's "Naming rules and restrictions for Azure resources".
NAME_LIMITS = {
    SITE_TYPE: (2, 60),
    SERVER_FARM_TYPE: (1, 60),
    WORKSPACE_TYPE: (4, 63),
    COMPONENT_TYPE: (1, 260),
    IDENTITY_TYPE: (3, 128),
    ACCOUNT_TYPE: (3, 24),
    CONTAINER_TYPE: (3, 63),
    DEPLOYMENT_TYPE: (1, 64),
}
# Interpolated functions of known output length.
FIXED_LENGTH_FUNCTIONS = {"unique_string": 13, "guid": 36}

# The Azure Monitor workbook (modules/workbook.bicep, its content in infra/workbook.json).
WORKBOOK_TYPE = "Microsoft.Insights/workbooks"
WORKBOOK_PARAM = "deployWorkbook"
WORKBOOK_FILE = "workbook.json"
# Checked against Azure/bicep-types-az generated/applicationinsights/microsoft.insights/2023-06-01/
# types.md: name and location required; kind 'shared' ("only valid value"); properties.category,
# displayName and serializedData required; version "like 'Notebook/1.0', which should match the
# workbook in serializedData"; sourceId the resource it is linked to. A version not listed here
# has not been checked and is refused until it is.
WORKBOOK_API_VERSIONS = ("2023-06-01",)
WORKBOOK_REQUIRED_PROPERTIES = ("displayName", "category", "serializedData")
WORKBOOK_SCHEMA = "Notebook/1.0"
# The gallery of Application Insights > Workbooks (Learn: workbooks-automate, "Workbook types").
WORKBOOK_CATEGORY = "workbook"
# What the workbook's queries run against: the Application Insights resource (Logs queries).
APP_INSIGHTS_RESOURCE_TYPE = "microsoft.insights/components"
WORKBOOK_QUERY_TYPE_LOGS = 0
# The handler's request log line under NX_CACHE_LOG_FORMAT=json (src/telemetry.rs), as it
# writes it to stderr; the Functions host forwards the line as the `message` of a `traces` row.
# tests/workbook.rs checks the workbook's fields against real output; this is the offline copy.
REQUEST_LOG_LINE = {
    "timestamp": "2026-11-26T15:46:29.139316Z",
    "level": "INFO",
    "message": "request",
    "method": "GET",
    "path": "/teams/web/v1/cache/1",
    "client": "nx",
    "namespace": "team:web",
    "hash": "1",
    "status": 200,
    "outcome": "hit",
    "subject": "nx-cache-client",
    "rule": "-",
    "bytes": 3,
    "redirected": False,
    "duration_ms": 0.635,
    "time_saved_ms": 0,
    "target": "nx_azure_cache::telemetry",
    "span": {"id": "a4e45952da764adea3d3d88797942f7a", "name": "request"},
    "spans": [{"id": "a4e45952da764adea3d3d88797942f7a", "name": "request"}],
}
REQUEST_LOG_FIELDS = frozenset(REQUEST_LOG_LINE)
# The values of `outcome` (Outcome::name in src/telemetry.rs; "-" when a route sets none) and of
# `level` (tracing's level names), which the queries compare with.
LOG_OUTCOMES = frozenset(
    {
        "hit", "miss", "redirect", "stored", "conflict", "denied", "expired", "unauthorized",
        "too-large", "bad-request", "storage-error", "busy", "exchanged", "exchange-refused", "-",
    }
)
LOG_LEVELS = frozenset({"TRACE", "DEBUG", "INFO", "WARN", "ERROR"})
# What the workbook must chart, by the log fields that carry it: hit rate and requests by outcome
# (outcome), per namespace (namespace), bytes stored (bytes), top subjects (subject).
WORKBOOK_FIELDS_NEEDED = ("outcome", "namespace", "bytes", "subject")

# Per-instance HTTP concurrency (functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency,
# an int in Azure/bicep-types-az Microsoft.Web 2024-04-01) and the handler's connection limit. The
# parameter's 0 means "derived from instanceMemoryMB"; Flex Consumption's instance sizes are 512,
# 2,048 and 4,096 MB (Learn: flex-consumption-plan, "Instance sizes"). Microsoft documents no range
# for the concurrency; the template bounds it at 1000.
CONCURRENCY_PARAM = "perInstanceConcurrency"
MEMORY_PARAM = "instanceMemoryMB"
FLEX_INSTANCE_MEMORY_MB = (512, 2048, 4096)
CONCURRENCY_LIMIT = 1000
MAX_CONNECTIONS_SETTING = "NX_CACHE_MAX_CONNECTIONS"
# NX_CACHE_MAX_CONNECTIONS minus the per-instance concurrency: at least 1, so that the host's probe
# of GET / gets a connection while every request slot is taken, and "a little" at most.
CONNECTION_HEADROOM = (1, 16)

# The lifecycle management policy of the cache account: retention of this cache's entries, and the
# legacy @nx/azure-cache entries (blobs at the container root named by an Nx hash, decimal digits).
# This cache's blobs are {NX_CACHE_BLOB_PREFIX}org/{hash} and {NX_CACHE_BLOB_PREFIX}teams/{team}/{hash},
# and Turborepo's artifacts the same under {NX_CACHE_BLOB_PREFIX}turbo/ (src/key.rs). A prefixMatch is a plain, case-sensitive prefix that starts with the container name,
# at most 10 per rule (Learn: lifecycle-management-policy-structure).
RETENTION_PARAM = "retentionDays"
LEGACY_RETENTION_PARAM = "legacyEntriesRetentionDays"
CACHE_NAMESPACES = ("org/", "teams/", "turbo/")
BLOB_PREFIX_SETTING = "NX_CACHE_BLOB_PREFIX"
DIGITS = tuple("0123456789")
MAX_PREFIXES_PER_RULE = 10

# Flex Consumption's range for functionAppConfig.scaleAndConcurrency.maximumInstanceCount: the
# stack data's lowestMaximumInstanceCount (40; Learn flex-consumption-plan: "The lowest maximum
# scale is currently 40. The highest currently supported value is 1000.").
FLEX_MAX_INSTANCES = (40, 1000)

# The Microsoft.Web API versions checked against Azure's published resource type definitions
# (Azure/bicep-types-az generated/web/microsoft.web/VERSION/types.md), with the types each one
# was checked to define. All Microsoft.Web resources use ONE version; a type or version not
# listed here has not been checked and is refused until it is.
WEB_API_VERSIONS = {
    # Defines all four, and FunctionAppConfig (deployment.storage.authentication,
    # scaleAndConcurrency, runtime name 'custom') that Flex Consumption needs.
    "2024-04-01": frozenset(
        {
            SITE_TYPE,
            SERVER_FARM_TYPE,
            SITE_CONFIG_TYPE,
            PUBLISHING_POLICY_TYPE,
        }
    ),
}

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INTERPOLATION = re.compile(r"\$\{([^}]*)\}")


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _parser() -> BicepParser:
    return BicepParser()


@functools.lru_cache(maxsize=256)
def _parse_text(digest: str, text: str) -> dict[str, Any]:
    del digest  # part of the cache key only
    return _parser().parse(text=text)


def parse(path: Path) -> dict[str, Any]:
    """pycep's JSON tree of one file; raises when the file does not parse."""
    text = path.read_text(encoding="utf-8")
    return _parse_text(hashlib.sha256(text.encode()).hexdigest(), text)


def bicep_files(infra_dir: Path) -> list[Path]:
    return sorted(Path(infra_dir).rglob("*.bicep"))


class Template:
    """One parsed file, with name resolution within it."""

    def __init__(self, infra_dir: Path, path: Path, tree: dict[str, Any]):
        self.path = path
        self.rel = path.relative_to(infra_dir).as_posix()
        self.tree = tree
        self.params: dict[str, Any] = tree.get("parameters") or {}
        self.vars: dict[str, Any] = tree.get("variables") or {}
        self.resources: dict[str, Any] = tree.get("resources") or {}
        self.modules: dict[str, Any] = tree.get("modules") or {}

    def is_symbol(self, value: Any) -> bool:
        return (
            isinstance(value, str)
            and IDENTIFIER.match(value) is not None
            and (
                value in self.params
                or value in self.vars
                or value in self.resources
                or value in self.modules
            )
        )

    def resolve(self, expr: Any, depth: int = 0) -> Any:
        """Replaces a bare variable name by the variable's value, repeatedly."""
        while isinstance(expr, str) and expr in self.vars and depth < 50:
            expr = self.vars[expr].get("value")
            depth += 1
        return expr

    def param_is_secure(self, name: str) -> bool:
        decorators = self.params.get(name, {}).get("decorators") or []
        return any(d.get("type") == "secure" for d in decorators)

    def param_decorator(self, name: str, kind: str) -> Any:
        for decorator in self.params.get(name, {}).get("decorators") or []:
            if decorator.get("type") == kind:
                return decorator.get("argument")
        return None

    def resource_list(self) -> Iterator[tuple[str, dict[str, Any], dict[str, Any], Any]]:
        """(symbol, resource, config, condition) for every resource; condition is None when the
        resource is unconditional."""
        for name, resource in self.resources.items():
            config, condition = unwrap(resource.get("config"))
            yield name, resource, config, condition

    def scope_symbol(self, scope: Any) -> str | None:
        """The resource symbol a `scope:` names: `x`, or `a::b` (flattened to `a__b` by pycep)."""
        if isinstance(scope, str) and scope in self.resources:
            return scope
        operator = operator_of(scope)
        if operator and operator["type"] == "nested_resource_accessor":
            operands = operator["operands"]
            left = self.scope_symbol(operands["operand_1"]) or operands["operand_1"]
            right = operands["operand_2"]
            joined = f"{left}__{right}"
            return joined if joined in self.resources else None
        return None

    def parent_symbol(self, symbol: str) -> str | None:
        """The parent resource of a resource: `parent:`, or the nesting that pycep flattened."""
        config, _ = unwrap(self.resources[symbol].get("config"))
        parent = config.get("parent")
        if parent is not None:
            return self.scope_symbol(parent)
        if "__" in symbol:
            return symbol.rsplit("__", 1)[0]
        return None


def unwrap(config: Any) -> tuple[dict[str, Any], Any]:
    """pycep puts a conditional resource's body under config.config, next to config.condition."""
    if isinstance(config, dict) and "condition" in config and isinstance(config.get("config"), dict):
        return config["config"], config["condition"]
    return (config if isinstance(config, dict) else {}), None


def operator_of(expr: Any) -> dict[str, Any] | None:
    if isinstance(expr, dict) and set(expr) == {"operator"} and isinstance(expr["operator"], dict):
        return expr["operator"]
    return None


def function_of(expr: Any) -> dict[str, Any] | None:
    if isinstance(expr, dict) and set(expr) == {"function"} and isinstance(expr["function"], dict):
        return expr["function"]
    return None


def walk(node: Any) -> Iterator[Any]:
    """Every key and value in a tree, depth first."""
    yield node
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def get_path(config: dict[str, Any], *keys: str) -> Any:
    node: Any = config
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def load(infra_dir: Path) -> list[Template]:
    """Every file that parses (the ones that do not are syntax_problems' business)."""
    infra_dir = Path(infra_dir)
    templates = []
    for path in bicep_files(infra_dir):
        try:
            templates.append(Template(infra_dir, path, parse(path)))
        except Exception:  # noqa: BLE001 - reported by syntax_problems
            continue
    return templates


def main_template(templates: list[Template]) -> Template | None:
    return next((t for t in templates if t.rel == "main.bicep"), None)


def module_call(main: Template, module: Template) -> dict[str, Any] | None:
    """main.bicep's `module x 'modules/y.bicep' = {...}` body that deploys `module`."""
    for declaration in main.modules.values():
        target = (declaration.get("detail") or {}).get("path")
        if target and (main.path.parent / target).resolve() == module.path.resolve():
            config, _ = unwrap(declaration.get("config"))
            return config
    return None


def trace(templates: list[Template], template: Template, expr: Any) -> tuple[Template, Any]:
    """Follows variables, and a module's parameters to what main.bicep passes them."""
    expr = template.resolve(expr)
    main = main_template(templates)
    if main is not None and template is not main and isinstance(expr, str) and expr in template.params:
        call = module_call(main, template)
        params = (call or {}).get("params") or {}
        if expr in params:
            return trace(templates, main, params[expr])
    return template, expr


def property_chain(expr: Any) -> list[Any]:
    """`a.b.c` -> ['a', 'b', 'c'] (pycep nests property accessors to the right)."""
    operator = operator_of(expr)
    if operator and operator["type"] == "property_accessor":
        operands = operator["operands"]
        return [operands["operand_1"], *property_chain(operands["operand_2"])]
    return [expr]


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def syntax_problems(infra_dir: Path) -> list[str]:
    """Every .bicep file under infra/ parses (and there is a main.bicep)."""
    infra_dir = Path(infra_dir)
    found = []
    files = bicep_files(infra_dir)
    if not (infra_dir / "main.bicep").is_file():
        found.append("infra/main.bicep is missing")
    for path in files:
        try:
            parse(path)
        except Exception as error:  # noqa: BLE001 - any parser error is the finding
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            found.append(f"{path.relative_to(infra_dir)}: does not parse: {first_line}")
    return found


def app_settings(template: Template) -> dict[str, tuple[Any, bool]]:
    """name -> (value expression, set only under a condition), from every `sites/config
    appsettings` resource and every site's siteConfig.appSettings array in the file."""
    settings: dict[str, tuple[Any, bool]] = {}

    def collect(expr: Any, conditional: bool, depth: int = 0) -> None:
        if depth > 20:
            return
        expr = template.resolve(expr)
        function = function_of(expr)
        operator = operator_of(expr)
        if function is not None:
            if function["type"] in ("union", "shallowMerge", "shallow_merge"):
                for argument in (function.get("parameters") or {}).values():
                    collect(argument, conditional, depth + 1)
        elif operator is not None:
            if operator["type"] == "conditional":
                operands = operator["operands"]
                collect(operands["true_value"], True, depth + 1)
                collect(operands["false_value"], True, depth + 1)
        elif isinstance(expr, dict):
            for name, value in expr.items():
                if name not in settings or settings[name][1]:
                    settings[name] = (value, conditional)
        elif isinstance(expr, list):
            # siteConfig.appSettings: [{name: ..., value: ...}]
            for item in expr:
                item = template.resolve(item)
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    settings.setdefault(item["name"], (item.get("value"), conditional))

    for _, resource, config, condition in template.resource_list():
        if resource.get("existing"):
            continue
        if resource.get("type") == SITE_CONFIG_TYPE and config.get("name") == "appsettings":
            collect(config.get("properties"), condition is not None)
        if resource.get("type") == SITE_TYPE:
            collect(get_path(config, "properties", "siteConfig", "appSettings"), condition is not None)
    return settings


def all_app_settings(templates: list[Template]) -> dict[str, tuple[Template, Any, bool]]:
    merged: dict[str, tuple[Template, Any, bool]] = {}
    for template in templates:
        for name, (value, conditional) in app_settings(template).items():
            if name not in merged or merged[name][2]:
                merged[name] = (template, value, conditional)
    return merged


def app_setting_problems(infra_dir: Path) -> list[str]:
    """Every setting the handler requires is set unconditionally; none Flex Consumption rejects;
    AZURE_CLIENT_ID is set when the app can run as a user-assigned identity."""
    templates = load(infra_dir)
    settings = all_app_settings(templates)
    found = []
    if not settings:
        return ["no app settings found (no Microsoft.Web/sites/config 'appsettings' resource)"]
    for name in REQUIRED_APP_SETTINGS:
        if name not in settings:
            found.append(f"app setting {name} is not set")
        elif settings[name][2]:
            found.append(f"app setting {name} is set only under a condition; the handler always needs it")
    for name in FORBIDDEN_APP_SETTINGS:
        if name in settings:
            found.append(f"app setting {name} must not be set on Flex Consumption (runtime comes from functionAppConfig)")
    can_use_user_assigned = any(
        value == "UserAssigned"
        for template in templates
        for _, resource, config, _ in template.resource_list()
        if resource.get("type") == SITE_TYPE
        for value in walk(config.get("identity"))
    )
    if can_use_user_assigned and "AZURE_CLIENT_ID" not in settings:
        found.append("the app can run as a user-assigned identity but AZURE_CLIENT_ID is never set")
    return found


def _role_id(template: Template, expr: Any) -> str | None:
    """The role definition GUID in a roleDefinitionId expression, following variables."""
    expr = template.resolve(expr)
    for node in walk(expr):
        if isinstance(node, str):
            value = template.resolve(node)
            if isinstance(value, str):
                match = GUID.search(value)
                if match:
                    return match.group(0).lower()
            elif value is not node:
                found = _role_id(template, value)
                if found:
                    return found
    return None


def _traces_to_param(templates: list[Template], template: Template, expr: Any, param: str) -> bool:
    owner, final = trace(templates, template, expr)
    return owner is main_template(templates) and final == param


def role_assignments(templates: list[Template]) -> Iterator[tuple[Template, str, str | None, str | None]]:
    """(template, symbol, role GUID, scope resource symbol or None for the deployment's scope)."""
    for template in templates:
        for symbol, resource, config, _ in template.resource_list():
            if resource.get("type") != ROLE_ASSIGNMENT_TYPE or resource.get("existing"):
                continue
            role = _role_id(template, get_path(config, "properties", "roleDefinitionId"))
            scope = config.get("scope")
            yield template, symbol, role, (template.scope_symbol(scope) if scope is not None else None)


def role_problems(infra_dir: Path) -> list[str]:
    """Storage Blob Data Contributor on the cache CONTAINER only; Storage Blob Delegator on the
    cache ACCOUNT only; Storage Blob Data Owner never on the cache; the cache roles deployed into
    cacheStorageResourceGroup."""
    templates = load(infra_dir)
    found = []
    granted = set()
    for template, symbol, role, scope in role_assignments(templates):
        where = f"{template.rel}: role assignment '{symbol}'"
        if role not in ROLE_NAMES:
            continue
        name = ROLE_NAMES[role]
        if scope is None:
            found.append(f"{where} ({name}) has no scope: it would apply to the whole resource group")
            continue
        scope_resource = template.resources[scope]
        scope_type = scope_resource.get("type")
        scope_config, _ = unwrap(scope_resource.get("config"))
        scope_name = scope_config.get("name")
        if role == STORAGE_BLOB_DATA_CONTRIBUTOR:
            parent = template.parent_symbol(scope)
            grandparent = template.parent_symbol(parent) if parent else None
            account_name = (
                unwrap(template.resources[grandparent].get("config"))[0].get("name")
                if grandparent in template.resources
                else None
            )
            if scope_type != CONTAINER_TYPE:
                found.append(f"{where}: {name} must be scoped to the cache container, not to a {scope_type}")
            elif not scope_resource.get("existing"):
                found.append(f"{where}: {name} is scoped to a container the template creates; it must be the existing cache container")
            elif not _traces_to_param(templates, template, scope_name, CACHE_CONTAINER_PARAM):
                found.append(f"{where}: {name} is scoped to a container that is not {CACHE_CONTAINER_PARAM}")
            elif not _traces_to_param(templates, template, account_name, CACHE_ACCOUNT_PARAM):
                found.append(f"{where}: {name} is scoped to a container outside the account {CACHE_ACCOUNT_PARAM}")
            else:
                granted.add(role)
        elif role == STORAGE_BLOB_DELEGATOR:
            if scope_type != ACCOUNT_TYPE:
                found.append(f"{where}: {name} must be scoped to the cache storage account (Get User Delegation Key is account-level), not to a {scope_type}")
            elif not _traces_to_param(templates, template, scope_name, CACHE_ACCOUNT_PARAM):
                found.append(f"{where}: {name} is scoped to an account that is not {CACHE_ACCOUNT_PARAM}")
            else:
                granted.add(role)
        elif role == STORAGE_BLOB_DATA_OWNER:
            if scope_type not in (ACCOUNT_TYPE, CONTAINER_TYPE):
                found.append(f"{where}: {name} must be scoped to the deployment storage, not to a {scope_type}")
            elif _traces_to_param(templates, template, scope_name, CACHE_ACCOUNT_PARAM) or _traces_to_param(
                templates, template, scope_name, CACHE_CONTAINER_PARAM
            ):
                found.append(f"{where}: {name} must never be granted on the cache storage")
        if role in (STORAGE_BLOB_DATA_CONTRIBUTOR, STORAGE_BLOB_DELEGATOR):
            main = main_template(templates)
            if main is not None and template is not main:
                call = module_call(main, template) or {}
                scope_function = function_of(call.get("scope"))
                rg = (scope_function or {}).get("parameters", {}).get("resource_group_name")
                if scope_function is None or scope_function.get("type") != "resource_group" or main.resolve(rg) != CACHE_RESOURCE_GROUP_PARAM:
                    found.append(f"{where}: {template.rel} must be deployed with scope resourceGroup({CACHE_RESOURCE_GROUP_PARAM})")
    for role in (STORAGE_BLOB_DATA_CONTRIBUTOR, STORAGE_BLOB_DELEGATOR):
        if role not in granted:
            found.append(f"no valid {ROLE_NAMES[role]} ({role}) assignment on the cache storage")
    return found


def function_app_problems(infra_dir: Path) -> list[str]:
    """The function app: HTTPS only, TLS 1.2, Flex Consumption custom handler, no siteConfig.ftpsState
    (a Flex Consumption deprecation: FTPS is not supported), no 'ftp' publishing-credentials policy
    (undocumented on Flex Consumption), and basic-auth deployments off (the 'scm' policy with
    allow: false)."""
    found = []
    sites = 0
    templates = load(infra_dir)
    for template in templates:
        for symbol, resource, config, _ in template.resource_list():
            if resource.get("type") != SITE_TYPE or resource.get("existing"):
                continue
            sites += 1
            where = f"{template.rel}: function app '{symbol}'"
            properties = config.get("properties") or {}
            if properties.get("httpsOnly") is not True:
                found.append(f"{where}: httpsOnly must be true")
            if get_path(properties, "siteConfig", "minTlsVersion") != "1.2":
                found.append(f"{where}: siteConfig.minTlsVersion must be '1.2'")
            if get_path(properties, "siteConfig", "ftpsState") is not None:
                found.append(
                    f"{where}: siteConfig.ftpsState must not be set: Flex Consumption lists it among the "
                    "deprecated properties that shouldn't be used when creating function app resources"
                )
            if get_path(properties, "functionAppConfig", "runtime", "name") != "custom":
                found.append(f"{where}: functionAppConfig.runtime.name must be 'custom' (a custom handler)")
            if "linux" not in str(config.get("kind", "")):
                found.append(f"{where}: kind must be 'functionapp,linux'")
    if sites == 0:
        found.append("no Microsoft.Web/sites resource")
    scm_off = False
    for template in templates:
        for symbol, resource, config, _ in template.resource_list():
            if resource.get("type") != PUBLISHING_POLICY_TYPE or resource.get("existing"):
                continue
            name = template.resolve(config.get("name"))
            leaf = name.rsplit("/", 1)[-1] if isinstance(name, str) else None
            if leaf == "ftp":
                found.append(
                    f"{template.rel}: publishing-credentials policy '{symbol}' is the 'ftp' one: Flex Consumption "
                    "does not support FTP(S) (Learn lists ftpsState among its deprecations), and documents nothing "
                    "about this policy there"
                )
            elif leaf == "scm" and get_path(config, "properties", "allow") is False:
                scm_off = True
    if sites and not scm_off:
        found.append(
            f"no '{PUBLISHING_POLICY_TYPE}' resource named 'scm' with allow: false: basic-auth "
            "(publishing profile) deployments must stay off"
        )
    return found


def scale_problems(infra_dir: Path) -> list[str]:
    """functionAppConfig.scaleAndConcurrency.maximumInstanceCount stays within what Flex
    Consumption accepts (40 to 1000), whatever value the parameters allow."""
    low_limit, high_limit = FLEX_MAX_INSTANCES
    found = []
    for template in load(infra_dir):
        for symbol, resource, config, _ in template.resource_list():
            if resource.get("type") != SITE_TYPE or resource.get("existing"):
                continue
            where = f"{template.rel}: function app '{symbol}'"
            expr = template.resolve(get_path(config, "properties", "functionAppConfig", "scaleAndConcurrency", "maximumInstanceCount"))
            if expr is None:
                continue
            if isinstance(expr, int) and not isinstance(expr, bool):
                low = high = expr
                what = f"maximumInstanceCount {expr}"
            elif isinstance(expr, str) and expr in template.params:
                low = template.param_decorator(expr, "min_value")
                high = template.param_decorator(expr, "max_value")
                what = f"parameter '{expr}'"
                if low is None or high is None:
                    found.append(f"{where}: {what} (maximumInstanceCount) needs @minValue({low_limit}) and @maxValue({high_limit})")
                    continue
            else:
                found.append(f"{where}: maximumInstanceCount is {json.dumps(expr)[:60]}; use an int parameter with @minValue({low_limit}) @maxValue({high_limit})")
                continue
            if low < low_limit:
                found.append(f"{where}: {what} allows a maximumInstanceCount of {low}; Flex Consumption's lowest maximum is {low_limit}")
            if high > high_limit:
                found.append(f"{where}: {what} allows a maximumInstanceCount of {high}; Flex Consumption's highest is {high_limit}")
    return found


def _length_bounds(templates: list[Template], template: Template, expr: Any, depth: int = 0) -> tuple[int, int]:
    """(shortest, longest) a name expression can evaluate to, from the parameters' @minLength /
    @maxLength / @allowed and the known lengths of literals and a few functions. Raises
    _NotEvaluable when the expression cannot be bounded."""
    if depth > 30:
        raise _NotEvaluable("too deep")
    if isinstance(expr, str) and expr in template.params:
        main = main_template(templates)
        if main is not None and template is not main:
            owner, traced = trace(templates, template, expr)
            if owner is not template:
                return _length_bounds(templates, owner, traced, depth + 1)
        allowed = template.param_decorator(expr, "allowed")
        if isinstance(allowed, list) and allowed and all(isinstance(v, str) for v in allowed):
            return min(map(len, allowed)), max(map(len, allowed))
        high = template.param_decorator(expr, "max_length")
        if high is None:
            raise _NotEvaluable(f"parameter '{expr}' has no @maxLength")
        return template.param_decorator(expr, "min_length") or 0, high
    if isinstance(expr, str) and expr in template.vars:
        return _length_bounds(templates, template, template.resolve(expr), depth + 1)
    if isinstance(expr, str) and template.is_symbol(expr):
        raise _NotEvaluable(f"'{expr}' is not a string")
    if isinstance(expr, str):
        low = high = len(INTERPOLATION.sub("", expr))
        for inner in INTERPOLATION.findall(expr):
            inner = inner.strip()
            if not IDENTIFIER.match(inner):
                # An interpolated call: parse it as an expression of its own.
                inner = _parse_text(hashlib.sha256(inner.encode()).hexdigest(), f"var x = {inner}\n")["variables"]["x"]["value"]
            inner_low, inner_high = _length_bounds(templates, template, inner, depth + 1)
            low, high = low + inner_low, high + inner_high
        return low, high
    function = function_of(expr)
    if function is not None:
        kind = function.get("type")
        arguments = list((function.get("parameters") or {}).values())
        if kind in FIXED_LENGTH_FUNCTIONS:
            return FIXED_LENGTH_FUNCTIONS[kind], FIXED_LENGTH_FUNCTIONS[kind]
        if kind == "take" and len(arguments) == 2 and isinstance(arguments[1], int):
            low, high = _length_bounds(templates, template, arguments[0], depth + 1)
            return min(low, arguments[1]), min(high, arguments[1])
        if kind in ("to_lower", "to_upper") and len(arguments) == 1:
            return _length_bounds(templates, template, arguments[0], depth + 1)
        if kind == "concat":
            bounds = [_length_bounds(templates, template, a, depth + 1) for a in arguments]
            return sum(b[0] for b in bounds), sum(b[1] for b in bounds)
    raise _NotEvaluable(json.dumps(expr)[:80])


def name_length_problems(infra_dir: Path) -> list[str]:
    """The name of every resource and module deployment the templates create fits its type's
    length limit, for every value the parameters allow (names derived from appName included)."""
    templates = load(infra_dir)
    found = []
    for template in templates:
        named = [
            (f"{template.rel}: resource '{symbol}' ({resource.get('type')})", resource.get("type"), config.get("name"))
            for symbol, resource, config, _ in template.resource_list()
            if not resource.get("existing")
        ]
        named += [
            (f"{template.rel}: module '{symbol}' (its deployment)", DEPLOYMENT_TYPE, unwrap(declaration.get("config"))[0].get("name"))
            for symbol, declaration in template.modules.items()
        ]
        for where, kind, name in named:
            if kind not in NAME_LIMITS:
                continue
            low_limit, high_limit = NAME_LIMITS[kind]
            try:
                low, high = _length_bounds(templates, template, name)
            except _NotEvaluable as error:
                found.append(f"{where}: cannot bound the length of its name ({error}); {kind} names have {low_limit}-{high_limit} characters")
                continue
            if high > high_limit:
                found.append(f"{where}: its name can have {high} characters; {kind} names have at most {high_limit}")
            if low < low_limit:
                found.append(f"{where}: its name can have {low} characters; {kind} names have at least {low_limit}")
    return found


def web_api_version_problems(infra_dir: Path) -> list[str]:
    """Every Microsoft.Web resource uses the same API version, one checked against the published
    type definitions for each Microsoft.Web type the templates use (WEB_API_VERSIONS)."""
    found = []
    used: dict[str, list[str]] = {}
    for template in load(infra_dir):
        for symbol, resource, _, _ in template.resource_list():
            kind = resource.get("type") or ""
            if not kind.startswith("Microsoft.Web/"):
                continue
            version = resource.get("api_version")
            used.setdefault(version, []).append(f"{template.rel}: '{symbol}'")
            checked = WEB_API_VERSIONS.get(version)
            if checked is None:
                found.append(f"{template.rel}: '{symbol}' uses {kind}@{version}, a Microsoft.Web API version not checked against the published type definitions ({', '.join(sorted(WEB_API_VERSIONS))})")
            elif kind not in checked:
                found.append(f"{template.rel}: '{symbol}' uses {kind}@{version}, a type not checked against that version's published definitions")
    if len(used) > 1:
        detail = "; ".join(f"{version}: {', '.join(symbols)}" for version, symbols in sorted(used.items(), key=lambda item: str(item[0])))
        found.append(f"Microsoft.Web resources use {len(used)} API versions; use one for all ({detail})")
    return found


def storage_account_problems(infra_dir: Path) -> list[str]:
    """Every storage account the template creates refuses shared keys."""
    found = []
    for template in load(infra_dir):
        for symbol, resource, config, _ in template.resource_list():
            if resource.get("type") != ACCOUNT_TYPE or resource.get("existing"):
                continue
            if get_path(config, "properties", "allowSharedKeyAccess") is not False:
                found.append(f"{template.rel}: storage account '{symbol}' must set allowSharedKeyAccess: false")
    return found


def key_material_problems(infra_dir: Path) -> list[str]:
    """No storage key, no key-based connection string, no list*() call, anywhere: in the parsed
    trees, and in the raw text of every file under infra/ (comments included)."""
    infra_dir = Path(infra_dir)
    found = []
    for template in load(infra_dir):
        for node in walk(template.tree):
            function = function_of(node)
            operator = operator_of(node)
            if function is not None and function.get("type") == "list_func":
                found.append(f"{template.rel}: calls {function['parameters'].get('func_name')}(); list functions return keys or SAS tokens")
            if operator is not None and operator.get("type") == "function_accessor":
                found.append(f"{template.rel}: calls .{operator['operands'].get('func_name')}(); list functions return keys or SAS tokens")
            if isinstance(node, str):
                lowered = node.lower()
                for word in FORBIDDEN_WORDS:
                    if word in lowered:
                        found.append(f"{template.rel}: '{word}' in the template: storage is reached by managed identity only")
    for path in sorted(p for p in infra_dir.rglob("*") if p.is_file()):
        lowered = path.read_text(encoding="utf-8", errors="replace").lower()
        for word in FORBIDDEN_WORDS:
            if word in lowered:
                found.append(f"{path.relative_to(infra_dir)}: contains '{word}'")
    return sorted(set(found))


def _is_deployment_failure(expr: Any) -> bool:
    """`int('sentence')` or `string(int(...))`: the idiom that stops a deployment with a message."""
    function = function_of(expr)
    if function is None:
        return False
    if function.get("type") == "int":
        return True
    if function.get("type") == "string":
        return _is_deployment_failure((function.get("parameters") or {}).get("value_to_convert"))
    return False


def jwt_secret_problems(infra_dir: Path) -> list[str]:
    """NX_CACHE_JWT_SECRET, and NX_CACHE_JWT_PREVIOUS_SECRETS where it is set, are on every branch
    a Key Vault reference or a @secure() parameter: never a literal, never a plain parameter. No
    output exposes a @secure() parameter."""
    templates = load(infra_dir)
    settings = all_app_settings(templates)
    if SECRET_SETTING not in settings:
        return [f"app setting {SECRET_SETTING} is not set"]
    found: list[str] = []

    def check(setting: str, template: Template, expr: Any, depth: int = 0) -> None:
        if depth > 20:
            found.append(f"{setting}: expression too deep to check")
            return
        if isinstance(expr, str) and expr in template.vars:
            check(setting, template, template.resolve(expr), depth + 1)
            return
        operator = operator_of(expr)
        if operator is not None and operator.get("type") == "conditional":
            check(setting, template, operator["operands"]["true_value"], depth + 1)
            check(setting, template, operator["operands"]["false_value"], depth + 1)
            return
        if _is_deployment_failure(expr):
            return
        if isinstance(expr, str) and expr in template.params:
            if not template.param_is_secure(expr):
                found.append(f"{setting} comes from parameter '{expr}', which is not @secure()")
            return
        if isinstance(expr, str) and expr.startswith("@Microsoft.KeyVault("):
            return
        if isinstance(expr, str):
            found.append(f"{setting} can be the literal '{expr[:12]}...'; use a Key Vault reference or a @secure() parameter")
            return
        found.append(f"{setting} can be {json.dumps(expr)[:80]}; use a Key Vault reference or a @secure() parameter")

    # The earlier secrets are optional (previous_secrets_problems says when they must be set).
    for setting in (SECRET_SETTING, PREVIOUS_SECRETS_SETTING):
        if setting in settings:
            template, value, _ = settings[setting]
            check(setting, template, value)
    # Nothing derived from a secure parameter may leave the deployment as an output.
    for t in templates:
        secure = {name for name in t.params if t.param_is_secure(name)}
        for output_name, output in (t.tree.get("outputs") or {}).items():
            mentioned = {n for n in walk(output.get("value")) if isinstance(n, str)}
            text = " ".join(mentioned)
            if secure & mentioned or any(f"${{{name}}}" in text for name in secure):
                found.append(f"{t.rel}: output '{output_name}' exposes a @secure() parameter")
    return found


# ---------------------------------------------------------------------------------------------
# Scenarios: what the deployment does with given parameter values
# ---------------------------------------------------------------------------------------------


class _DeploymentFails(Exception):
    """The expression stops the deployment: int() of a sentence, the templates' way to fail with
    a message (ARM has no fail function). args[0] is the sentence."""


def _param_value(template: Template, name: str, env: dict[str, Any], depth: int) -> Any:
    if name in env:
        return env[name]
    param = template.params[name]
    if "default" not in param or param["default"] is None:
        raise _NotEvaluable(f"parameter '{name}' has no value in this scenario and no default")
    return _value(template, param["default"], env, depth + 1)


def _interpolate(template: Template, text: str, env: dict[str, Any], depth: int) -> str:
    def one(match: re.Match[str]) -> str:
        inner = match.group(1).strip()
        if not IDENTIFIER.match(inner):
            inner = _parse_text(hashlib.sha256(inner.encode()).hexdigest(), f"var x = {inner}\n")["variables"]["x"]["value"]
        value = _value(template, inner, env, depth + 1)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _NotEvaluable(f"interpolates {json.dumps(value)[:40]}")
        return str(value)

    return INTERPOLATION.sub(one, text)


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _NotEvaluable(f"{json.dumps(value)[:40]} is not a bool")
    return value


def _value(template: Template, expr: Any, env: dict[str, Any], depth: int = 0) -> Any:
    """The value ARM would compute for an expression of `template`, with the parameters in `env`
    (the others take their defaults). Like ARM, only the branch of a condition that is taken is
    evaluated. Raises _DeploymentFails for int('sentence'), and _NotEvaluable for anything outside
    the small part of the language the settings and the role assignments use (resource
    properties, for instance)."""
    if depth > 60:
        raise _NotEvaluable("too deep")
    if expr is None or isinstance(expr, (bool, int)):
        return expr
    if isinstance(expr, list):
        return [_value(template, item, env, depth + 1) for item in expr]
    if isinstance(expr, str):
        if expr in template.params:
            return _param_value(template, expr, env, depth)
        if expr in template.vars:
            return _value(template, template.vars[expr].get("value"), env, depth + 1)
        if template.is_symbol(expr):
            raise _NotEvaluable(f"'{expr}' is a resource or module")
        return _interpolate(template, expr, env, depth)
    operator = operator_of(expr)
    if operator is not None:
        kind = operator.get("type")
        operands = operator.get("operands") or {}
        if kind == "conditional":
            taken = "true_value" if _as_bool(_value(template, operands["condition"], env, depth + 1)) else "false_value"
            return _value(template, operands[taken], env, depth + 1)
        if kind == "not":
            return not _as_bool(_value(template, operands["bool_value"], env, depth + 1))
        a = _value(template, operands.get("operand_1"), env, depth + 1)
        b = _value(template, operands.get("operand_2"), env, depth + 1)
        if kind == "and":
            return _as_bool(a) and _as_bool(b)
        if kind == "or":
            return _as_bool(a) or _as_bool(b)
        if kind == "equals":
            return a == b
        if kind == "not_equals":
            return a != b
        if kind == "equals_case_insensitive" and isinstance(a, str) and isinstance(b, str):
            return a.lower() == b.lower()
        if kind in ("greater_than", "greater_than_or_equals", "less_than", "less_than_or_equals"):
            if not (isinstance(a, int) and isinstance(b, int)):
                raise _NotEvaluable(f"{kind} of non-numbers")
            return {"greater_than": a > b, "greater_than_or_equals": a >= b, "less_than": a < b, "less_than_or_equals": a <= b}[kind]
        if kind in ("add", "substract", "multiply", "divide", "modulo"):
            if not (isinstance(a, int) and isinstance(b, int)) or isinstance(a, bool) or isinstance(b, bool):
                raise _NotEvaluable(f"{kind} of non-numbers")
            if kind in ("divide", "modulo") and b == 0:
                raise _DeploymentFails(f"{kind} by zero")
            # ARM's integer division and modulo truncate toward zero.
            quotient = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1) if kind in ("divide", "modulo") else 0
            return {"add": a + b, "substract": a - b, "multiply": a * b, "divide": quotient, "modulo": a - b * quotient}[kind]
        if kind == "index_accessor":
            try:
                return a[b]
            except (IndexError, KeyError, TypeError) as error:
                raise _DeploymentFails(f"index {b!r} of {json.dumps(a)[:40]}: {error}") from None
        raise _NotEvaluable(f"operator {kind}")
    function = function_of(expr)
    if function is not None:
        kind = function.get("type")
        args = [_value(template, a, env, depth + 1) for a in (function.get("parameters") or {}).values()]
        if kind == "int" and len(args) == 1:
            value = args[0]
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
                return int(value)
            raise _DeploymentFails(str(value))
        if kind == "string" and len(args) == 1:
            value = args[0]
            if isinstance(value, bool):
                return "True" if value else "False"
            if isinstance(value, (str, int)):
                return str(value)
            return json.dumps(value, separators=(",", ":"))
        if kind == "empty" and len(args) == 1:
            return args[0] in ("", [], {}, None)
        if kind == "length" and len(args) == 1 and isinstance(args[0], (str, list, dict)):
            return len(args[0])
        if kind == "trim" and len(args) == 1 and isinstance(args[0], str):
            return args[0].strip()
        if kind in ("to_lower", "to_upper") and len(args) == 1 and isinstance(args[0], str):
            return args[0].lower() if kind == "to_lower" else args[0].upper()
        # ARM's startsWith and endsWith ignore case.
        if kind in ("starts_with", "ends_with") and len(args) == 2 and all(isinstance(a, str) for a in args):
            text, part = args[0].lower(), args[1].lower()
            return text.startswith(part) if kind == "starts_with" else text.endswith(part)
        if kind == "split" and len(args) == 2 and all(isinstance(a, str) for a in args):
            return args[0].split(args[1])
        if kind in ("first", "last") and len(args) == 1 and isinstance(args[0], (str, list)):
            if not args[0]:
                return "" if isinstance(args[0], str) else None
            return args[0][0] if kind == "first" else args[0][-1]
        if kind == "take" and len(args) == 2 and isinstance(args[1], int):
            return args[0][: max(args[1], 0)]
        if kind == "concat" and all(isinstance(a, str) for a in args):
            return "".join(args)
        if kind == "concat" and all(isinstance(a, list) for a in args):
            return [item for a in args for item in a]
        if kind in ("min", "max") and args and all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            return min(args) if kind == "min" else max(args)
        if kind == "join" and len(args) == 2 and isinstance(args[0], list) and isinstance(args[1], str):
            return args[1].join(str(item) for item in args[0])
        if kind == "union" and all(isinstance(a, dict) for a in args):
            merged: dict[str, Any] = {}
            for a in args:
                merged.update(a)
            return merged
        raise _NotEvaluable(f"function {kind}")
    if isinstance(expr, dict):
        return {key: _value(template, value, env, depth + 1) for key, value in expr.items()}
    raise _NotEvaluable(json.dumps(expr)[:80])


def _holds(template: Template, condition: Any, env: dict[str, Any]) -> bool:
    """Whether a resource's or module's `if (...)` holds (True when there is none)."""
    return True if condition is None else _as_bool(_value(template, condition, env))


def app_settings_under(templates: list[Template], env: dict[str, Any]) -> dict[str, tuple[Template, Any]]:
    """The app settings the deployment writes with the parameters in `env`: name -> (template,
    value expression). Conditions are evaluated (conditional resources, ternaries, the arguments
    of union()); the values are not, since most are resource properties."""
    settings: dict[str, tuple[Template, Any]] = {}

    def collect(template: Template, expr: Any, depth: int = 0) -> None:
        if depth > 20:
            raise _NotEvaluable("app settings nested too deep")
        expr = template.resolve(expr)
        function = function_of(expr)
        operator = operator_of(expr)
        if function is not None:
            if function["type"] not in ("union", "shallowMerge", "shallow_merge"):
                raise _NotEvaluable(f"app settings built with {function['type']}()")
            for argument in (function.get("parameters") or {}).values():
                collect(template, argument, depth + 1)
        elif operator is not None:
            if operator["type"] != "conditional":
                raise _NotEvaluable(f"app settings built with the operator {operator['type']}")
            operands = operator["operands"]
            taken = "true_value" if _as_bool(_value(template, operands["condition"], env)) else "false_value"
            collect(template, operands[taken], depth + 1)
        elif isinstance(expr, dict):
            for name, value in expr.items():
                settings[name] = (template, value)
        elif isinstance(expr, list):
            for item in expr:
                item = template.resolve(item)
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    settings[item["name"]] = (template, item.get("value"))

    for template in templates:
        for _, resource, config, condition in template.resource_list():
            # Only the resources that write app settings matter; the others' conditions may use
            # a module's own parameters, which `env` (main.bicep's) does not hold.
            if resource.get("type") not in (SITE_CONFIG_TYPE, SITE_TYPE):
                continue
            if resource.get("existing") or not _holds(template, condition, env):
                continue
            if resource.get("type") == SITE_CONFIG_TYPE and config.get("name") == "appsettings":
                collect(template, config.get("properties"))
            if resource.get("type") == SITE_TYPE:
                collect(template, get_path(config, "properties", "siteConfig", "appSettings"))
    return settings


def setting_under(templates: list[Template], env: dict[str, Any], name: str) -> tuple[str, Any]:
    """What the deployment does to one app setting with the parameters in `env` (on top of
    SCENARIO_BASE): ('absent', None), ('value', the value), ('fails', the sentence that stops the
    deployment) or ('unknown', why it cannot be told)."""
    env = {**SCENARIO_BASE, **env}
    try:
        settings = app_settings_under(templates, env)
        if name not in settings:
            return "absent", None
        template, expr = settings[name]
        return "value", _value(template, expr, env)
    except _DeploymentFails as failure:
        return "fails", failure.args[0] if failure.args else ""
    except _NotEvaluable as error:
        return "unknown", str(error)


def _describe(outcome: tuple[str, Any]) -> str:
    kind, detail = outcome
    if kind == "absent":
        return "it is not set"
    if kind == "value":
        return f"it is set to {json.dumps(detail)[:120]}"
    if kind == "fails":
        return f"the deployment stops ({str(detail)[:70]})"
    return f"cannot tell ({detail})"


def _scenario(params: dict[str, Any]) -> str:
    return ", ".join(f"{name}={json.dumps(value)[:100]}" for name, value in params.items()) or "the defaults"


# A policy as someone might paste it: surrounding whitespace, several lines.
TRUST_POLICY_EXAMPLE = '\n  {"rules": [{"name": "web-main", "issuer": "https://token.actions.githubusercontent.com",\n   "audience": "nx-cache", "claims": {"repository": "acme/web"}, "grant": {"teams": ["web"]}}]}\n'


def trust_policy_problems(infra_dir: Path) -> list[str]:
    """Keyless access is opt-in: main.bicep's trustPolicy parameter (a string, empty by default)
    becomes NX_CACHE_TRUST_POLICY only when it is set. Empty or blank: the setting is not written at
    all (POST /token stays off). A policy: the setting holds the parameter's text. A value that is
    not a JSON object (a file name, a Key Vault reference, a bare list): the deployment stops."""
    templates = load(infra_dir)
    main = main_template(templates)
    if main is None:
        return ["infra/main.bicep does not parse"]
    param = main.params.get(TRUST_POLICY_PARAM)
    if param is None:
        return [f"main.bicep has no parameter '{TRUST_POLICY_PARAM}' for {TRUST_POLICY_SETTING}"]
    found = []
    if param.get("type") != "string" or param.get("default") != "":
        found.append(f"parameter '{TRUST_POLICY_PARAM}' must be a string that defaults to '' (keyless access off)")
    settings = all_app_settings(templates)
    if TRUST_POLICY_SETTING not in settings:
        return found + [f"app setting {TRUST_POLICY_SETTING} is never set"]
    for value in ("", "  \n"):
        outcome = setting_under(templates, {TRUST_POLICY_PARAM: value}, TRUST_POLICY_SETTING)
        if outcome[0] != "absent":
            found.append(f"with {_scenario({TRUST_POLICY_PARAM: value})}, {_describe(outcome)}; {TRUST_POLICY_SETTING} must not be set at all")
    outcome = setting_under(templates, {TRUST_POLICY_PARAM: TRUST_POLICY_EXAMPLE}, TRUST_POLICY_SETTING)
    if outcome[0] != "value" or outcome[1] not in (TRUST_POLICY_EXAMPLE, TRUST_POLICY_EXAMPLE.strip()):
        found.append(f"with a policy in {TRUST_POLICY_PARAM}, {_describe(outcome)}; {TRUST_POLICY_SETTING} must be the parameter's text")
    for value in ('[{"name": "web-main"}]', "@/home/site/wwwroot/trust-policy.json", "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/policy)"):
        outcome = setting_under(templates, {TRUST_POLICY_PARAM: value}, TRUST_POLICY_SETTING)
        if outcome[0] != "fails":
            found.append(f"with {_scenario({TRUST_POLICY_PARAM: value})}, {_describe(outcome)}; a value that is not a JSON object must stop the deployment")
    return found


def previous_secrets_problems(infra_dir: Path) -> list[str]:
    """Rotation: NX_CACHE_JWT_PREVIOUS_SECRETS is written only when earlier secrets are given,
    from exactly one source: the @secure() parameter tokenPreviousSecrets (its value as given), or
    the Key Vault reference @Microsoft.KeyVault(SecretUri=<tokenPreviousSecretsKeyVaultUri>). Both
    at once, a list shorter than one secret, or the current secret's own URI stop the deployment."""
    templates = load(infra_dir)
    main = main_template(templates)
    if main is None:
        return ["infra/main.bicep does not parse"]
    missing = [p for p in (PREVIOUS_SECRETS_PARAM, PREVIOUS_SECRETS_URI_PARAM) if p not in main.params]
    if missing:
        return [f"main.bicep has no parameter '{p}' for {PREVIOUS_SECRETS_SETTING}" for p in missing]
    found = []
    if not main.param_is_secure(PREVIOUS_SECRETS_PARAM):
        found.append(f"parameter '{PREVIOUS_SECRETS_PARAM}' holds secrets and must be @secure()")
    if PREVIOUS_SECRETS_SETTING not in all_app_settings(templates):
        return found + [f"app setting {PREVIOUS_SECRETS_SETTING} is never set"]
    secrets = "A" * 44 + ", " + "B" * 44
    expectations: list[tuple[dict[str, Any], str, Any]] = [
        ({}, "absent", None),
        ({PREVIOUS_SECRETS_URI_PARAM: PREVIOUS_SECRETS_URI}, "value", f"@Microsoft.KeyVault(SecretUri={PREVIOUS_SECRETS_URI})"),
        ({PREVIOUS_SECRETS_PARAM: secrets}, "value", secrets),
        ({PREVIOUS_SECRETS_PARAM: secrets, PREVIOUS_SECRETS_URI_PARAM: PREVIOUS_SECRETS_URI}, "fails", "at most one"),
        ({PREVIOUS_SECRETS_PARAM: "too-short"}, "fails", "shorter than one secret"),
        ({PREVIOUS_SECRETS_URI_PARAM: SCENARIO_BASE[SECRET_URI_PARAM]}, "fails", "the current secret's own URI"),
    ]
    for params, kind, expected in expectations:
        outcome = setting_under(templates, params, PREVIOUS_SECRETS_SETTING)
        if kind == "absent" and outcome[0] != "absent":
            found.append(f"with {_scenario(params)}, {_describe(outcome)}; {PREVIOUS_SECRETS_SETTING} must not be set without earlier secrets")
        elif kind == "value" and outcome != ("value", expected):
            found.append(f"with {_scenario(params)}, {_describe(outcome)}; {PREVIOUS_SECRETS_SETTING} must be {json.dumps(expected)[:120]}")
        elif kind == "fails" and outcome[0] != "fails":
            found.append(f"with {_scenario(params)}, {_describe(outcome)}; the deployment must stop ({expected})")
    return found


def _module_calls(main: Template, module: Template) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(symbol, body, condition) of every `module` declaration of main.bicep that deploys `module`."""
    for symbol, declaration in main.modules.items():
        target = (declaration.get("detail") or {}).get("path")
        if target and (main.path.parent / target).resolve() == module.path.resolve():
            config, condition = unwrap(declaration.get("config"))
            yield symbol, config, condition


def _module_value(main: Template, call: dict[str, Any], module: Template, expr: Any, env: dict[str, Any]) -> Any:
    """A module's parameter or literal, as main.bicep's call sets it with the parameters in `env`."""
    expr = module.resolve(expr)
    if isinstance(expr, str) and expr in module.params:
        given = call.get("params") or {}
        if expr in given:
            return _value(main, given[expr], env)
        return _param_value(module, expr, {}, 0)
    return _value(module, expr, {})


def _key_vault_grants(templates: list[Template], env: dict[str, Any]) -> list[dict[str, Any]]:
    """Every 'Key Vault Secrets User' assignment that main.bicep's modules make with the
    parameters in `env`: module symbol, scope kind (secret or vault), vault, secret and resource
    group."""
    main = main_template(templates)
    grants = []
    for module in templates:
        if module is main or main is None:
            continue
        for symbol, call, condition in _module_calls(main, module):
            if not _holds(main, condition, env):
                continue
            scope = function_of(call.get("scope"))
            resource_group = None
            if scope is not None and scope.get("type") == "resource_group":
                resource_group = _value(main, (scope.get("parameters") or {}).get("resource_group_name"), env)
            for _, role_symbol, role, scope_symbol in role_assignments([module]):
                if role != KEY_VAULT_SECRETS_USER:
                    continue
                grant = {"module": symbol, "resource_group": resource_group, "scope": None, "vault": None, "secret": None}
                scope_resource = module.resources.get(scope_symbol or "")
                kind = (scope_resource or {}).get("type")
                if kind == VAULT_SECRET_TYPE:
                    grant["scope"] = "secret"
                    grant["secret"] = _module_value(main, call, module, unwrap(scope_resource.get("config"))[0].get("name"), env)
                    vault_symbol = module.parent_symbol(scope_symbol)
                    if vault_symbol in module.resources:
                        grant["vault"] = _module_value(main, call, module, unwrap(module.resources[vault_symbol].get("config"))[0].get("name"), env)
                elif kind == VAULT_TYPE:
                    grant["scope"] = "vault"
                    grant["vault"] = _module_value(main, call, module, unwrap(scope_resource.get("config"))[0].get("name"), env)
                else:
                    grant["scope"] = kind or "resource group"
                grants.append(grant)
    return grants


def key_vault_access_problems(infra_dir: Path) -> list[str]:
    """Each Key Vault reference comes with the role that resolves it: with tokenSecretKeyVaultUri
    (NX_CACHE_JWT_SECRET) or tokenPreviousSecretsKeyVaultUri (NX_CACHE_JWT_PREVIOUS_SECRETS) set,
    a module gives the app 'Key Vault Secrets User' on that one secret (the vault and secret the
    URI names; not the whole vault), in the vault's resource group parameter; the app settings
    wait for it; and it is not made when grantKeyVaultSecretAccess is false."""
    templates = load(infra_dir)
    main = main_template(templates)
    if main is None:
        return ["infra/main.bicep does not parse"]
    found: list[str] = []
    cases = (
        (SECRET_SETTING, SECRET_URI_PARAM, SCENARIO_BASE[SECRET_URI_PARAM], SECRET_RESOURCE_GROUP_PARAM, "rg-current-vault"),
        (PREVIOUS_SECRETS_SETTING, PREVIOUS_SECRETS_URI_PARAM, PREVIOUS_SECRETS_URI, PREVIOUS_SECRETS_RESOURCE_GROUP_PARAM, "rg-previous-vault"),
    )
    depends_on: set[str] = set()
    for _, resource, config, _ in main.resource_list():
        if resource.get("type") == SITE_CONFIG_TYPE and config.get("name") == "appsettings":
            depends_on |= {d for d in config.get("dependsOn") or [] if isinstance(d, str)}
    for setting, uri_param, uri, group_param, group in cases:
        if uri_param not in main.params or group_param not in main.params:
            found.append(f"main.bicep needs the parameters '{uri_param}' and '{group_param}' for {setting}")
            continue
        vault, secret = uri.split("/")[2].split(".")[0], uri.split("/")[4]
        env = {**SCENARIO_BASE, uri_param: uri, group_param: group, GRANT_KEY_VAULT_ACCESS_PARAM: True}
        where = f"with {uri_param}={uri} in resource group {group}"
        try:
            grants = _key_vault_grants(templates, env)
            denied = _key_vault_grants(templates, {**env, GRANT_KEY_VAULT_ACCESS_PARAM: False})
        except (_NotEvaluable, _DeploymentFails) as error:
            found.append(f"{where}: cannot evaluate the Key Vault role assignments ({error})")
            continue
        matching = [g for g in grants if g["scope"] == "secret" and (g["vault"], g["secret"], g["resource_group"]) == (vault, secret, group)]
        if not matching:
            made = "; ".join(f"module '{g['module']}' on {g['scope']} {g['vault']}/{g['secret']} in {g['resource_group']}" for g in grants) or "none"
            found.append(f"{where}: no 'Key Vault Secrets User' on the secret {vault}/{secret} in resource group {group}, so {setting} cannot be resolved (assignments made: {made})")
        for g in grants:
            if g["scope"] != "secret" and g["vault"] == vault:
                found.append(f"{where}: module '{g['module']}' grants 'Key Vault Secrets User' on the whole {g['scope']} {vault}; grant it on the secret {secret} only")
        for g in matching:
            if g["module"] not in depends_on:
                found.append(f"{where}: the app settings do not wait for module '{g['module']}' (dependsOn); {setting} would be resolved before the role exists")
        for g in denied:
            if (g["vault"], g["secret"]) == (vault, secret):
                found.append(f"{where} and {GRANT_KEY_VAULT_ACCESS_PARAM}=false: module '{g['module']}' still grants 'Key Vault Secrets User' on {vault}/{secret}")
    return found


def _parse_size(raw: str) -> int:
    """The handler's parse_size: bytes, or K/M/G (binary multiples)."""
    match = re.fullmatch(r"(\d+)\s*(B|K|KB|KiB|M|MB|MiB|G|GB|GiB)?", raw.strip())
    if not match:
        raise ValueError(f"not a size: {raw!r}")
    unit = (match.group(2) or "B")[0]
    return int(match.group(1)) * {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]


class _NotEvaluable(Exception):
    pass


def _evaluate(template: Template, expr: Any, env: dict[str, int], used: set[str], depth: int = 0) -> Any:
    """Evaluates the little arithmetic the size settings use, with parameters from `env`."""
    if depth > 30:
        raise _NotEvaluable("too deep")
    if isinstance(expr, bool):
        raise _NotEvaluable("bool")
    if isinstance(expr, int):
        return expr
    if isinstance(expr, str):
        if expr in template.params:
            if expr not in env:
                raise _NotEvaluable(f"parameter {expr} is not numeric")
            used.add(expr)
            return env[expr]
        if expr in template.vars:
            return _evaluate(template, template.resolve(expr), env, used, depth + 1)
        if template.is_symbol(expr):
            raise _NotEvaluable(f"{expr} is not a constant")
        return INTERPOLATION.sub(
            lambda m: str(_evaluate(template, m.group(1).strip(), env, used, depth + 1)), expr
        )
    operator = operator_of(expr)
    if operator is not None:
        operands = operator.get("operands") or {}
        kind = operator.get("type")
        if kind in ("multiply", "add", "substract", "divide") and set(operands) == {"operand_1", "operand_2"}:
            a = _evaluate(template, operands["operand_1"], env, used, depth + 1)
            b = _evaluate(template, operands["operand_2"], env, used, depth + 1)
            if not isinstance(a, int) or not isinstance(b, int):
                raise _NotEvaluable("arithmetic on a string")
            return {"multiply": a * b, "add": a + b, "substract": a - b, "divide": a // b if b else 0}[kind]
    function = function_of(expr)
    if function is not None:
        arguments = list((function.get("parameters") or {}).values())
        if function.get("type") == "string" and len(arguments) == 1:
            return str(_evaluate(template, arguments[0], env, used, depth + 1))
        if function.get("type") == "int" and len(arguments) == 1:
            return int(_evaluate(template, arguments[0], env, used, depth + 1))
    raise _NotEvaluable(json.dumps(expr)[:80])


def size_limit_problems(infra_dir: Path) -> list[str]:
    """FUNCTIONS_REQUEST_BODY_SIZE_LIMIT and NX_CACHE_MAX_ARTIFACT_SIZE come from the same single
    parameter, and the host's limit is never below the handler's, over the parameter's range."""
    templates = load(infra_dir)
    settings = all_app_settings(templates)
    names = ("NX_CACHE_MAX_ARTIFACT_SIZE", "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT")
    missing = [n for n in names if n not in settings]
    if missing:
        return [f"app setting {n} is not set" for n in missing]
    (template, artifact_expr, _), (_, body_expr, _) = settings[names[0]], settings[names[1]]
    numeric = [n for n, p in template.params.items() if p.get("type") == "int"]
    found: list[str] = []

    def candidates(param: str) -> list[int]:
        low = template.param_decorator(param, "min_value")
        high = template.param_decorator(param, "max_value")
        default = template.params[param].get("default")
        values = {v for v in (low, high, default, 1, 1024) if isinstance(v, int) and not isinstance(v, bool)}
        return sorted(v for v in values if (low is None or v >= low) and (high is None or v <= high))

    base_env = {
        n: template.params[n].get("default") if isinstance(template.params[n].get("default"), int) else 1
        for n in numeric
    }
    try:
        used_artifact: set[str] = set()
        used_body: set[str] = set()
        _evaluate(template, artifact_expr, base_env, used_artifact)
        _evaluate(template, body_expr, base_env, used_body)
    except (_NotEvaluable, ValueError) as error:
        return [f"cannot evaluate the size settings from parameters: {error}"]
    if len(used_artifact) != 1 or used_artifact != used_body:
        found.append(
            "NX_CACHE_MAX_ARTIFACT_SIZE and FUNCTIONS_REQUEST_BODY_SIZE_LIMIT must both derive from one "
            f"parameter (they use {sorted(used_artifact) or 'none'} and {sorted(used_body) or 'none'})"
        )
        return found
    (param,) = used_artifact
    for value in candidates(param):
        env = dict(base_env, **{param: value})
        try:
            artifact = _parse_size(str(_evaluate(template, artifact_expr, env, set())))
            body = int(str(_evaluate(template, body_expr, env, set())))
        except (_NotEvaluable, ValueError) as error:
            found.append(f"with {param}={value}: {error}")
            continue
        if body < artifact:
            found.append(
                f"with {param}={value}: FUNCTIONS_REQUEST_BODY_SIZE_LIMIT ({body}) is below NX_CACHE_MAX_ARTIFACT_SIZE ({artifact} bytes)"
            )
    return found


def container_problems(infra_dir: Path) -> list[str]:
    """The cache container is referenced, never created: the only containers the template creates
    are in storage accounts it creates. The lifecycle policy (one per account, replaces any
    existing one) is opt-in."""
    found = []
    for template in load(infra_dir):
        for symbol, resource, config, condition in template.resource_list():
            if resource.get("type") == CONTAINER_TYPE and not resource.get("existing"):
                account = template.parent_symbol(template.parent_symbol(symbol) or "")
                account_resource = template.resources.get(account or "")
                if account_resource is None or account_resource.get("existing"):
                    found.append(f"{template.rel}: creates container '{symbol}' in an existing storage account; the cache container must only be referenced")
            if resource.get("type") == POLICY_TYPE and not resource.get("existing") and condition is None:
                found.append(f"{template.rel}: management policy '{symbol}' is unconditional; it replaces the account's policy and must be opt-in")
    return found


def parameters_file_problems(infra_dir: Path) -> list[str]:
    """main.parameters.json names only main.bicep's parameters, gives every required one, keeps
    to @allowed/@minValue/@maxValue, and holds no secret value."""
    infra_dir = Path(infra_dir)
    path = infra_dir / "main.parameters.json"
    if not path.is_file():
        return ["infra/main.parameters.json is missing"]
    main = main_template(load(infra_dir))
    if main is None:
        return ["infra/main.bicep does not parse"]
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        return [f"main.parameters.json: not JSON: {error}"]
    given = document.get("parameters") or {}
    found = []
    for name, entry in given.items():
        if name not in main.params:
            found.append(f"main.parameters.json: '{name}' is not a parameter of main.bicep")
            continue
        if main.param_is_secure(name) and "value" in entry:
            found.append(f"main.parameters.json: secure parameter '{name}' has a value in the file; pass it on the command line or as a Key Vault reference")
        if "value" not in entry:
            continue
        value = entry["value"]
        allowed = main.param_decorator(name, "allowed")
        if isinstance(allowed, list) and value not in allowed:
            found.append(f"main.parameters.json: '{name}' = {value!r} is not one of {allowed}")
        low = main.param_decorator(name, "min_value")
        high = main.param_decorator(name, "max_value")
        if isinstance(value, int) and isinstance(low, int) and value < low:
            found.append(f"main.parameters.json: '{name}' = {value} is below {low}")
        if isinstance(value, int) and isinstance(high, int) and value > high:
            found.append(f"main.parameters.json: '{name}' = {value} is above {high}")
    for name, param in main.params.items():
        if param.get("default") is None and name not in given:
            found.append(f"main.parameters.json: required parameter '{name}' is missing")
    return found


# ---------------------------------------------------------------------------------------------
# Flex Consumption's per-instance concurrency, and the cache account's lifecycle policy
# ---------------------------------------------------------------------------------------------


def _site_concurrency(templates: list[Template], env: dict[str, Any]) -> tuple[str, Any]:
    """functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency of main.bicep's
    function app with the parameters in `env` (on top of SCENARIO_BASE), as setting_under answers."""
    main = main_template(templates)
    env = {**SCENARIO_BASE, **env}
    for _, resource, config, _ in (main.resource_list() if main else []):
        if resource.get("type") != SITE_TYPE or resource.get("existing"):
            continue
        expr = get_path(config, "properties", "functionAppConfig", "scaleAndConcurrency", "triggers", "http", "perInstanceConcurrency")
        if expr is None:
            return "absent", None
        try:
            return "value", _value(main, expr, env)
        except _DeploymentFails as failure:
            return "fails", failure.args[0] if failure.args else ""
        except _NotEvaluable as error:
            return "unknown", str(error)
    return "absent", None


def concurrency_problems(infra_dir: Path) -> list[str]:
    """Flex Consumption scales the handler by the HTTP requests in flight per instance: the function
    app sets triggers.http.perInstanceConcurrency from main.bicep's perInstanceConcurrency parameter
    (0 to 1000). Left at its default, the value is derived from instanceMemoryMB (it grows with each
    larger instance size) and stays between 1 and 1000; a value given is used as given. The handler's
    NX_CACHE_MAX_CONNECTIONS is always a little above it (CONNECTION_HEADROOM), so that probes still
    get a connection when every request slot is taken."""
    templates = load(infra_dir)
    main = main_template(templates)
    if main is None:
        return ["infra/main.bicep does not parse"]
    found: list[str] = []
    param = main.params.get(CONCURRENCY_PARAM)
    if param is None:
        return [f"main.bicep has no parameter '{CONCURRENCY_PARAM}' for the per-instance HTTP concurrency"]
    low, high = main.param_decorator(CONCURRENCY_PARAM, "min_value"), main.param_decorator(CONCURRENCY_PARAM, "max_value")
    if param.get("type") != "int" or low is None or high is None or low < 0 or high > CONCURRENCY_LIMIT:
        found.append(f"parameter '{CONCURRENCY_PARAM}' must be an int with @minValue(0) and @maxValue at most {CONCURRENCY_LIMIT}")
    if _site_concurrency(templates, {})[0] == "absent":
        return found + [
            "functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency is not set: Flex Consumption "
            "then uses its own defaults (4 at 512 MB), sized for language workers, not for this handler"
        ]
    scenarios = [({MEMORY_PARAM: memory}, None) for memory in FLEX_INSTANCE_MEMORY_MB]
    scenarios += [({MEMORY_PARAM: memory, CONCURRENCY_PARAM: 50}, 50) for memory in FLEX_INSTANCE_MEMORY_MB]
    derived: list[int] = []
    for params, given in scenarios:
        where = f"with {_scenario(params)}"
        outcome = _site_concurrency(templates, params)
        if outcome[0] != "value" or not isinstance(outcome[1], int) or isinstance(outcome[1], bool):
            found.append(f"{where}, perInstanceConcurrency: {_describe(outcome)}")
            continue
        concurrency = outcome[1]
        if given is not None and concurrency != given:
            found.append(f"{where}, perInstanceConcurrency is {concurrency}; a value given in '{CONCURRENCY_PARAM}' must be used as given")
        if given is None:
            derived.append(concurrency)
            if not 1 <= concurrency <= CONCURRENCY_LIMIT:
                found.append(f"{where}, the derived perInstanceConcurrency is {concurrency}; it must be between 1 and {CONCURRENCY_LIMIT}")
        connections = setting_under(templates, params, MAX_CONNECTIONS_SETTING)
        if connections[0] == "absent":
            found.append(f"{where}, app setting {MAX_CONNECTIONS_SETTING} is not set; it must be a little above perInstanceConcurrency ({concurrency})")
            continue
        if connections[0] != "value" or not str(connections[1]).isdigit():
            found.append(f"{where}, {MAX_CONNECTIONS_SETTING}: {_describe(connections)}")
            continue
        headroom = int(connections[1]) - concurrency
        if not CONNECTION_HEADROOM[0] <= headroom <= CONNECTION_HEADROOM[1]:
            found.append(
                f"{where}, {MAX_CONNECTIONS_SETTING} is {connections[1]} and perInstanceConcurrency {concurrency}: it must be "
                f"{CONNECTION_HEADROOM[0]} to {CONNECTION_HEADROOM[1]} above it (probes get a connection, and the handler holds no more than the instance was sized for)"
            )
    if len(derived) == len(FLEX_INSTANCE_MEMORY_MB) and any(a >= b for a, b in zip(derived, derived[1:])):
        sizes = ", ".join(f"{m} MB: {c}" for m, c in zip(FLEX_INSTANCE_MEMORY_MB, derived))
        found.append(
            f"the default perInstanceConcurrency does not follow {MEMORY_PARAM} ({sizes}); it must be derived from the "
            "instance's memory and the handler's memory per request, so that a larger instance takes more requests"
        )
    return found


class _ModuleEnv(dict):
    """A module's parameters as main.bicep's call sets them, evaluated only when asked for (some are
    resource properties, which cannot be evaluated here); the others take their defaults."""

    def __init__(self, main: Template, call: dict[str, Any], env: dict[str, Any]):
        super().__init__()
        self.main, self.given, self.env = main, call.get("params") or {}, env

    def __contains__(self, name: object) -> bool:
        return name in self.given

    def __getitem__(self, name: str) -> Any:
        return _value(self.main, self.given[name], self.env)


def lifecycle_policies(templates: list[Template], env: dict[str, Any]) -> list[dict[str, Any]]:
    """Every lifecycle management policy the deployment writes with the parameters in `env` (on top
    of SCENARIO_BASE): its template and symbol, its name, its account's name and its rules."""
    main = main_template(templates)
    env = {**SCENARIO_BASE, **env}
    deployed = []
    places: list[tuple[Template, Any]] = [(main, env)] if main else []
    for module in templates:
        if main is None or module is main:
            continue
        for _, call, condition in _module_calls(main, module):
            if _holds(main, condition, env):
                places.append((module, _ModuleEnv(main, call, env)))
    for template, scope in places:
        for symbol, resource, config, condition in template.resource_list():
            if resource.get("type") != POLICY_TYPE or resource.get("existing") or not _holds(template, condition, scope):
                continue
            account = template.parent_symbol(symbol)
            account_config = unwrap(template.resources[account].get("config"))[0] if account in template.resources else {}
            deployed.append(
                {
                    "where": f"{template.rel}: management policy '{symbol}'",
                    "name": _value(template, config.get("name"), scope),
                    "account": _value(template, account_config.get("name"), scope) if account_config else None,
                    "rules": _value(template, get_path(config, "properties", "policy", "rules"), scope) or [],
                }
            )
    return deployed


def _rule_days(rule: dict[str, Any]) -> Any:
    """The days after the last modification after which a lifecycle rule deletes a blob."""
    return get_path(rule, "definition", "actions", "baseBlob", "delete", "daysAfterModificationGreaterThan")


def lifecycle_problems(infra_dir: Path) -> list[str]:
    """The cache account's one lifecycle policy (named 'default'; an account has one, written in
    full) holds, each only when asked for: the retention rule (retentionDays > 0: this cache's
    CONTAINER/org/, CONTAINER/teams/ and CONTAINER/turbo/ after that many days) and the legacy rule
    (legacyEntriesRetentionDays > 0, off by default: the ten prefixes CONTAINER/0 ... CONTAINER/9,
    which match every root blob named by an Nx hash and never one of this cache's blobs, deleted
    that many days after their last modification). Both asked for: both rules in the one policy."""
    templates = load(infra_dir)
    main = main_template(templates)
    if main is None:
        return ["infra/main.bicep does not parse"]
    found: list[str] = []
    param = main.params.get(LEGACY_RETENTION_PARAM)
    if param is None:
        return [f"main.bicep has no parameter '{LEGACY_RETENTION_PARAM}' for the legacy @nx/azure-cache entries"]
    if param.get("type") != "int" or param.get("default") != 0 or main.param_decorator(LEGACY_RETENTION_PARAM, "min_value") != 0:
        found.append(f"parameter '{LEGACY_RETENTION_PARAM}' must be an int with @minValue(0) that defaults to 0 (the legacy rule off)")
    account, container = SCENARIO_BASE[CACHE_ACCOUNT_PARAM], SCENARIO_BASE[CACHE_CONTAINER_PARAM]
    # (parameters given, retention days expected, legacy days expected); None: no such rule.
    scenarios: list[tuple[dict[str, Any], Any, Any]] = [
        ({}, None, None),
        ({RETENTION_PARAM: 0, LEGACY_RETENTION_PARAM: 0}, None, None),
        ({RETENTION_PARAM: 30}, 30, None),
        ({LEGACY_RETENTION_PARAM: 7}, None, 7),
        ({RETENTION_PARAM: 30, LEGACY_RETENTION_PARAM: 7}, 30, 7),
    ]
    for params, retention, legacy in scenarios:
        where = f"with {_scenario(params)}"
        try:
            policies = lifecycle_policies(templates, params)
            blob_prefix = setting_under(templates, params, BLOB_PREFIX_SETTING)
        except (_NotEvaluable, _DeploymentFails) as error:
            found.append(f"{where}: cannot evaluate the lifecycle policies ({error})")
            continue
        own = tuple((blob_prefix[1] if blob_prefix[0] == "value" else "") + namespace for namespace in CACHE_NAMESPACES)
        on_cache = [p for p in policies if p["account"] == account]
        for policy in policies:
            if policy["account"] != account:
                found.append(f"{where}: {policy['where']} is on account {policy['account']!r}, not the cache account")
        if retention is None and legacy is None:
            if on_cache:
                found.append(f"{where}: {', '.join(p['where'] for p in on_cache)} is written; no policy may replace the account's own unless asked for")
            continue
        if len(on_cache) != 1:
            found.append(f"{where}: {len(on_cache)} lifecycle policies are written on the cache account; it has exactly one, so the rules must share one")
            continue
        policy = on_cache[0]
        if policy["name"] != "default":
            found.append(f"{where}: {policy['where']} is named {policy['name']!r}; an account's policy is always named 'default'")
        legacy_rules, retention_rules = [], []
        for rule in (r for r in policy["rules"] if isinstance(r, dict)):
            name = rule.get("name")
            prefixes = get_path(rule, "definition", "filters", "prefixMatch") or []
            if rule.get("enabled") is not True or rule.get("type") != "Lifecycle" or get_path(rule, "definition", "filters", "blobTypes") != ["blockBlob"]:
                found.append(f"{where}: rule {name!r} must be enabled, of type 'Lifecycle', for blockBlob")
            if len(prefixes) > MAX_PREFIXES_PER_RULE:
                found.append(f"{where}: rule {name!r} has {len(prefixes)} prefixes; a rule may have at most {MAX_PREFIXES_PER_RULE}")
            # Blob names relative to the container; no prefix at all is the whole account.
            names = []
            for prefix in prefixes:
                if not isinstance(prefix, str) or not prefix.startswith(f"{container}/"):
                    found.append(f"{where}: rule {name!r} has the prefix {prefix!r}, which is not under the container ({container}/)")
                else:
                    names.append(prefix[len(container) + 1 :])
            shown = ", ".join(f"{container}/{n}" for n in names) or "none: every blob of the account"
            # No rule but the retention rule may match this cache's own blobs.
            touched = sorted({o for o in own for n in (names or [""]) if o.startswith(n) or n.startswith(o)})
            if sorted(names) == sorted(own):
                retention_rules.append(rule)
            elif names and all(n[:1] in DIGITS for n in names):
                legacy_rules.append((rule, names))
            else:
                found.append(f"{where}: rule {name!r} (prefixes {shown}) is neither the retention rule nor the legacy-entries rule")
            if touched and sorted(names) != sorted(own):
                found.append(f"{where}: rule {name!r} matches this cache's own entries under {', '.join(container + '/' + o for o in touched)}")
        # The legacy rule: the ten single digits (every hash, nothing else), after the legacy days.
        if legacy is None and legacy_rules:
            found.append(f"{where}: the legacy-entries rule {legacy_rules[0][0].get('name')!r} is written; it must be off unless {LEGACY_RETENTION_PARAM} > 0")
        if legacy is not None and len(legacy_rules) != 1:
            found.append(f"{where}: {len(legacy_rules)} legacy-entries rules (prefixes {container}/0 ... {container}/9 only); expected one")
        for rule, names in legacy_rules if legacy is not None else []:
            missing = [d for d in DIGITS if d not in names]
            extra = [n for n in names if n not in DIGITS]
            if missing:
                found.append(f"{where}: rule {rule.get('name')!r} does not cover the hashes that start with {', '.join(missing)}; it needs the prefixes {container}/0 ... {container}/9")
            if extra:
                found.append(f"{where}: rule {rule.get('name')!r} has the prefixes {', '.join(container + '/' + n for n in extra)}; it needs the single digits {container}/0 ... {container}/9")
            if _rule_days(rule) != legacy:
                found.append(f"{where}: rule {rule.get('name')!r} deletes {_rule_days(rule)!r} days after the last modification; expected {legacy} ({LEGACY_RETENTION_PARAM})")
        # The retention rule: exactly this cache's namespaces, after the retention days.
        if retention is None and retention_rules:
            found.append(f"{where}: the retention rule {retention_rules[0].get('name')!r} is written; it must be off unless {RETENTION_PARAM} > 0")
        if retention is not None and len(retention_rules) != 1:
            found.append(f"{where}: {len(retention_rules)} retention rules (prefixes {', '.join(container + '/' + o for o in own)}); expected one")
        for rule in retention_rules if retention is not None else []:
            if _rule_days(rule) != retention:
                found.append(f"{where}: the retention rule deletes {_rule_days(rule)!r} days after the last modification; expected {retention} ({RETENTION_PARAM})")
    return sorted(set(found), key=found.index)


# ---------------------------------------------------------------------------------------------
# The workbook
# ---------------------------------------------------------------------------------------------


def _is_app_insights_id(templates: list[Template], template: Template, expr: Any, depth: int = 0) -> bool:
    """Whether an expression is the id of main.bicep's Application Insights resource (`x.id` of a
    Microsoft.Insights/components resource), through variables, toLower() and module parameters."""
    if depth > 20:
        return False
    expr = template.resolve(expr)
    function = function_of(expr)
    if function is not None:
        arguments = list((function.get("parameters") or {}).values())
        return function.get("type") == "to_lower" and len(arguments) == 1 and _is_app_insights_id(templates, template, arguments[0], depth + 1)
    main = main_template(templates)
    if isinstance(expr, str) and expr in template.params:
        owner, traced = trace(templates, template, expr)
        return owner is not template and _is_app_insights_id(templates, owner, traced, depth + 1)
    chain = property_chain(expr)
    if template is main and len(chain) == 2 and chain[1] == "id" and isinstance(chain[0], str):
        resource = template.resources.get(chain[0])
        return resource is not None and resource.get("type") == COMPONENT_TYPE
    return False


def _workbook_sources(template: Template, expr: Any) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """What a serializedData expression is made of: (the JSON file it loads, objects union()ed
    onto it, a problem). Accepted: loadTextContent(FILE), string(loadJsonContent(FILE)) and
    string(union(loadJsonContent(FILE), {...}))."""
    expr = template.resolve(expr)
    function = function_of(expr)
    if function is not None and function.get("type") == "load_text_content":
        return (function.get("parameters") or {}).get("file_path"), [], None
    if function is not None and function.get("type") == "string":
        inner = function_of(template.resolve((function.get("parameters") or {}).get("value_to_convert")))
        extras: list[dict[str, Any]] = []
        if inner is not None and inner.get("type") == "union":
            arguments = [template.resolve(a) for a in (inner.get("parameters") or {}).values()]
            inner = function_of(arguments[0]) if arguments else None
            for argument in arguments[1:]:
                if not isinstance(argument, dict) or function_of(argument) is not None or operator_of(argument) is not None:
                    return None, [], f"union()s {json.dumps(argument)[:60]} onto the workbook; only an object literal may be"
                extras.append(argument)
        if inner is not None and inner.get("type") == "load_json_content" and (inner.get("parameters") or {}).get("json_path") is None:
            return (inner.get("parameters") or {}).get("file_path"), extras, None
    return None, [], f"is {json.dumps(expr)[:80]}; it must be loadTextContent('{WORKBOOK_FILE}') or string(loadJsonContent('{WORKBOOK_FILE}')) (optionally union()ed with fallbackResourceIds)"


def workbook_deployment_problems(infra_dir: Path) -> list[str]:
    """The Azure Monitor workbook: main.bicep's bool parameter deployWorkbook (default true)
    deploys it, with Application Insights and only then (evaluated for every bool parameter of
    main.bicep either way); it is one Microsoft.Insights/workbooks resource, in a module, of a
    checked API version, kind 'shared', category 'workbook', version 'Notebook/1.0', named by
    guid() (the same workbook on every deployment), linked (sourceId) to the Application Insights
    resource; its serializedData is infra/workbook.json, to which only fallbackResourceIds (that
    same resource) may be added."""
    infra_dir = Path(infra_dir)
    templates = load(infra_dir)
    main = main_template(templates)
    if main is None:
        return ["infra/main.bicep does not parse"]
    found: list[str] = []
    param = main.params.get(WORKBOOK_PARAM)
    if param is None:
        found.append(f"main.bicep has no parameter '{WORKBOOK_PARAM}' for the workbook")
    elif param.get("type") != "bool" or param.get("default") is not True:
        found.append(f"parameter '{WORKBOOK_PARAM}' must be a bool that defaults to true")
    insights = [(s, c) for s, r, _, c in main.resource_list() if r.get("type") == COMPONENT_TYPE and not r.get("existing")]
    workbooks = [(t, s, r, c, cond) for t in templates for s, r, c, cond in t.resource_list() if r.get("type") == WORKBOOK_TYPE and not r.get("existing")]
    if not insights:
        found.append("main.bicep creates no Application Insights (Microsoft.Insights/components) for the workbook to read")
    if len(workbooks) != 1:
        return found + [f"the templates create {len(workbooks)} {WORKBOOK_TYPE} resources; expected one"]
    template, symbol, resource, config, condition = workbooks[0]
    where = f"{template.rel}: workbook '{symbol}'"
    calls = list(_module_calls(main, template)) if template is not main else []
    if len(calls) != 1:
        return found + [f"{where} must be in a module that main.bicep deploys once (found {len(calls)} deployments)"]
    module_symbol, _, module_condition = calls[0]
    if condition is not None:
        found.append(f"{where} is conditional inside its module; main.bicep's module condition alone decides")
    if param is not None and insights:
        insights_condition = insights[0][1]
        booleans = [n for n, p in main.params.items() if p.get("type") == "bool"]
        for name in booleans:
            for value in (True, False):
                env = {**SCENARIO_BASE, name: value}
                try:
                    expected = _as_bool(_value(main, WORKBOOK_PARAM, env)) and _holds(main, insights_condition, env)
                    deployed = _holds(main, module_condition, env)
                except (_NotEvaluable, _DeploymentFails) as error:
                    found.append(f"with {name}={json.dumps(value)}: cannot evaluate whether module '{module_symbol}' is deployed ({error})")
                    continue
                if deployed != expected:
                    what = "deployed" if deployed else "not deployed"
                    why = "deployWorkbook and Application Insights" if expected else ("deployWorkbook=false" if not _value(main, WORKBOOK_PARAM, env) else "no Application Insights")
                    found.append(f"with {name}={json.dumps(value)}: module '{module_symbol}' (the workbook) is {what}, with {why}")
    version = resource.get("api_version")
    if version not in WORKBOOK_API_VERSIONS:
        found.append(f"{where} uses {WORKBOOK_TYPE}@{version}, an API version not checked against the published type definitions ({', '.join(WORKBOOK_API_VERSIONS)})")
    name = function_of(template.resolve(config.get("name")))
    if name is None or name.get("type") != "guid":
        found.append(f"{where}: its name must be guid(...) of stable values (a workbook's name is a GUID; the same one on every deployment updates the workbook instead of adding one)")
    if config.get("kind") != "shared":
        found.append(f"{where}: kind must be 'shared'")
    if config.get("location") is None:
        found.append(f"{where}: location is required")
    properties = config.get("properties") or {}
    for key in WORKBOOK_REQUIRED_PROPERTIES:
        if properties.get(key) is None:
            found.append(f"{where}: properties.{key} is required")
    if properties.get("category") not in (None, WORKBOOK_CATEGORY):
        found.append(f"{where}: properties.category must be '{WORKBOOK_CATEGORY}' (the Workbooks gallery of Application Insights)")
    if properties.get("version") != WORKBOOK_SCHEMA:
        found.append(f"{where}: properties.version must be '{WORKBOOK_SCHEMA}', the schema of workbook.json")
    if not _is_app_insights_id(templates, template, properties.get("sourceId")):
        found.append(f"{where}: properties.sourceId must be the id of main.bicep's Application Insights (the workbook's queries read its traces)")
    if properties.get("serializedData") is not None:
        path, extras, problem = _workbook_sources(template, properties.get("serializedData"))
        if problem:
            found.append(f"{where}: properties.serializedData {problem}")
        elif not isinstance(path, str) or (template.path.parent / path).resolve() != (infra_dir / WORKBOOK_FILE).resolve():
            found.append(f"{where}: properties.serializedData loads {path!r}, not infra/{WORKBOOK_FILE}")
        for extra in extras:
            for key, value in extra.items():
                if key != "fallbackResourceIds":
                    found.append(f"{where}: properties.serializedData adds '{key}' to {WORKBOOK_FILE}; only fallbackResourceIds may be added")
                elif not isinstance(value, list) or not value or not all(_is_app_insights_id(templates, template, item) for item in value):
                    found.append(f"{where}: fallbackResourceIds must name the Application Insights resource only")
    return found


def _walk_queries(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, holder) of every object with a string "query": query items' content and query
    parameters."""
    if isinstance(node, dict):
        if isinstance(node.get("query"), str):
            yield path or "/", node
        for key, value in node.items():
            if key != "query":
                yield from _walk_queries(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            label = value.get("name") if isinstance(value, dict) and isinstance(value.get("name"), str) else index
            yield from _walk_queries(value, f"{path}/{label}")


E_DEFINITION = re.compile(r"\|\s*extend\s+e\s*=\s*parse_json\(\s*message\s*\)")
E_TOKEN = re.compile(r"(?<![A-Za-z0-9_.])e(?![A-Za-z0-9_])")
E_FIELD = re.compile(r"e\.([a-z0-9_]+)(?![A-Za-z0-9_])")
E_MISUSE = re.compile(r"e(?:\s*\.\s*[A-Za-z0-9_]*|\s*\[[^\]]*\]?)?")
REQUEST_FILTER = re.compile(r'tostring\(\s*e\.message\s*\)\s*==\s*"request"')
TRACES_SOURCE = re.compile(r"(?m)^\s*traces\s*(\||$)")
COMPARED = re.compile(r'e\.(outcome|level)\s*\)?\s*(?:==|!=|=~|!~)\s*"([^"]*)"')
COMPARED_IN = re.compile(r"e\.(outcome|level)\s*\)?\s*!?in~?\s*\(([^)]*)\)")


def workbook_query_fields(query: str) -> tuple[set[str], list[str]]:
    """The log fields a query uses (every `e.FIELD`) and its departures from the convention: `e`
    appears only as `e.FIELD` (lowercase letters, digits, underscore) or in its one definition
    `| extend e = parse_json(message)`; the line is parsed nowhere else."""
    fields: set[str] = set()
    problems: list[str] = []
    definitions = list(E_DEFINITION.finditer(query))
    if len(definitions) != 1:
        problems.append(f"parses the line into e {len(definitions)} times; exactly once: `| extend e = parse_json(message)`")
    defined_at = {m.start() + m.group(0).index("e =") for m in definitions}
    for pattern in ("parse_json(", "todynamic(", "bag_unpack", "mv-expand", "mvexpand"):
        count = query.count(pattern)
        if count > (1 if pattern == "parse_json(" else 0):
            problems.append(f"uses {pattern.rstrip('(')}() beyond `extend e = parse_json(message)`: the line's fields are read only as e.FIELD")
    for match in E_TOKEN.finditer(query):
        if match.start() in defined_at:
            continue
        field = E_FIELD.match(query, match.start())
        if field is None:
            snippet = E_MISUSE.match(query, match.start()).group(0)
            problems.append(f"reads the line as `{snippet}`; only as e.FIELD (lowercase name), never e[...] nor e under another name")
            continue
        fields.add(field.group(1))
    return fields, problems


def workbook_content_problems(infra_dir: Path) -> list[str]:
    """infra/workbook.json: JSON of the 'Notebook/1.0' schema, with no resource id of its own (the
    module links it); every query (query items and query parameters) is a Logs query of the
    Application Insights resource (queryType 0, resourceType microsoft.insights/components, no
    other resources) over `traces`, parses the line into `e` once, keeps the request lines
    (`tostring(e.message) == "request"`), reads fields only as `e.FIELD`, and only fields of the
    handler's request line, comparing outcome and level with values the handler writes; every
    query item takes the workbook's time range parameter; the charts cover outcome, namespace,
    bytes and subject; the workbook's first item (markdown) and the header comment of the module
    that loads it name every field the queries use."""
    infra_dir = Path(infra_dir)
    path = infra_dir / WORKBOOK_FILE
    if not path.is_file():
        return [f"infra/{WORKBOOK_FILE} is missing"]
    text = path.read_text(encoding="utf-8")
    try:
        workbook = json.loads(text)
    except json.JSONDecodeError as error:
        return [f"{WORKBOOK_FILE}: not JSON: {error}"]
    if not isinstance(workbook, dict):
        return [f"{WORKBOOK_FILE}: not a JSON object"]
    found: list[str] = []
    if workbook.get("version") != WORKBOOK_SCHEMA:
        found.append(f"{WORKBOOK_FILE}: version is {workbook.get('version')!r}; the schema is '{WORKBOOK_SCHEMA}'")
    items = workbook.get("items")
    if not isinstance(items, list) or not items:
        return found + [f"{WORKBOOK_FILE}: no items"]
    if "/subscriptions/" in text.lower() or "fallbackResourceIds" in workbook:
        found.append(f"{WORKBOOK_FILE}: names a resource itself (a resource id, fallbackResourceIds); modules/workbook.bicep links it to the app's Application Insights")
    time_parameters = {
        p.get("name")
        for node in walk(workbook)
        if isinstance(node, dict) and isinstance(node.get("parameters"), list)
        for p in node["parameters"]
        if isinstance(p, dict) and p.get("type") == 4
    }
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == 3:
            content = item.get("content") or {}
            label = item.get("name") or index
            if content.get("version") != "KqlItem/1.0" or not isinstance(content.get("query"), str):
                found.append(f"{WORKBOOK_FILE}: query item {label} is not a KqlItem/1.0 with a query")
            if content.get("timeContextFromParameter") not in time_parameters:
                found.append(f"{WORKBOOK_FILE}: query item {label} does not take the workbook's time range parameter ({', '.join(sorted(map(str, time_parameters))) or 'none defined'})")
    used: set[str] = set()
    queries = list(_walk_queries(workbook))
    for where, holder in queries:
        at = f"{WORKBOOK_FILE}: query {where}"
        query = holder["query"]
        if holder.get("queryType") != WORKBOOK_QUERY_TYPE_LOGS or str(holder.get("resourceType", "")).lower() != APP_INSIGHTS_RESOURCE_TYPE:
            found.append(f"{at}: its data source must be Application Insights (queryType {WORKBOOK_QUERY_TYPE_LOGS}, resourceType {APP_INSIGHTS_RESOURCE_TYPE}), not queryType {holder.get('queryType')!r} on {holder.get('resourceType')!r}")
        if holder.get("crossComponentResources"):
            found.append(f"{at}: queries other resources (crossComponentResources); only the app's Application Insights")
        if not TRACES_SOURCE.search(query):
            found.append(f"{at}: does not read `traces`, where the host puts the handler's log lines")
        if not REQUEST_FILTER.search(query):
            found.append(f'{at}: does not keep the request lines (`tostring(e.message) == "request"`)')
        fields, problems = workbook_query_fields(query)
        found.extend(f"{at}: {problem}" for problem in problems)
        for field in sorted(fields - REQUEST_LOG_FIELDS):
            found.append(f"{at}: e.{field} is not a field of the handler's request line ({', '.join(sorted(REQUEST_LOG_FIELDS))})")
        used |= fields
        compared = [(m.group(1), m.group(2)) for m in COMPARED.finditer(query)]
        compared += [(m.group(1), v) for m in COMPARED_IN.finditer(query) for v in re.findall(r'"([^"]*)"', m.group(2))]
        for field, value in compared:
            known = LOG_OUTCOMES if field == "outcome" else LOG_LEVELS
            if value not in known:
                found.append(f"{at}: compares e.{field} with {value!r}, which the handler never writes ({', '.join(sorted(known))})")
    for field in WORKBOOK_FIELDS_NEEDED:
        if field not in used:
            found.append(f"{WORKBOOK_FILE}: no query uses e.{field}; the workbook must chart it")
    first = items[0] if isinstance(items[0], dict) else {}
    intro = (first.get("content") or {}).get("json") if first.get("type") == 1 else None
    if not isinstance(intro, str):
        found.append(f"{WORKBOOK_FILE}: the first item must be a markdown text that names the log fields the queries use")
    else:
        for field in sorted(f for f in used if f"e.{f}" not in intro):
            found.append(f"{WORKBOOK_FILE}: the first item does not name e.{field}, which a query uses")
    loads = re.compile(r"load(?:Text|Json)Content\(\s*'[^']*" + re.escape(WORKBOOK_FILE) + "'")
    loaders = [p for p in bicep_files(infra_dir) if loads.search(p.read_text(encoding="utf-8"))]
    for loader in loaders:
        header = "\n".join(line for line in itertools.takewhile(lambda l: l.startswith("//"), loader.read_text(encoding="utf-8").splitlines()))
        for field in sorted(f for f in used if f"e.{f}" not in header):
            found.append(f"{loader.relative_to(infra_dir).as_posix()}: the comment at its top does not name e.{field}, which a query of {WORKBOOK_FILE} uses")
    return found


CHECKS: tuple[Callable[[Path], list[str]], ...] = (
    syntax_problems,
    app_setting_problems,
    role_problems,
    function_app_problems,
    scale_problems,
    name_length_problems,
    web_api_version_problems,
    storage_account_problems,
    key_material_problems,
    jwt_secret_problems,
    trust_policy_problems,
    previous_secrets_problems,
    key_vault_access_problems,
    size_limit_problems,
    container_problems,
    concurrency_problems,
    lifecycle_problems,
    parameters_file_problems,
    workbook_deployment_problems,
    workbook_content_problems,
)


def problems(infra_dir: Path) -> list[str]:
    """Every check's findings."""
    return [problem for check in CHECKS for problem in check(Path(infra_dir))]
