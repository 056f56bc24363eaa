// nx-azure-cache: the Nx remote cache as an Azure Functions custom handler on Flex Consumption.
//
// Creates, in the resource group it is deployed to:
//   - a Flex Consumption plan (FC1) and a Linux function app that runs the `handler` executable
//     (runtime 'custom'; the code arrives later, with `az functionapp deployment source config-zip`)
//   - a small storage account of its own for the Functions host and the deployment package,
//     with shared keys disabled
//   - a Log Analytics workspace and a workspace-based Application Insights
//   - optionally (deployWorkbook, on by default) an Azure Monitor workbook over the handler's
//     request logs, linked to that Application Insights (modules/workbook.bicep)
//   - optionally a user-assigned managed identity
//
// Only references, never creates: the cache storage account and its blob container, which hold
// the cache entries (`org/{hash}`, `teams/{team}/{hash}`, Turborepo's under `turbo/`). They may live in another resource group
// of the same subscription (cacheStorageResourceGroup); modules/cache-access.bicep is deployed
// into that group to grant the app's identity its two roles there, and (only when asked) to write
// the cache account's lifecycle management policy: retention of this cache's entries
// (retentionDays) and deletion of the legacy @nx/azure-cache entries (legacyEntriesRetentionDays).
//
// Storage is reached by managed identity only: this template holds no storage key and no
// connection string, and the storage account it creates refuses shared-key requests.
//
// Offline checks: tests/infra (run scripts/check-infra). Keep ternary conditions parenthesized
// unless they are a bare name: the parser the checks use gets `!a ? b : c` and `a > b ? c : d`
// wrong without the parentheses. It refuses a spread (`...x`) and a ternary whose `?` or `:`
// starts a new line, and the checks cannot evaluate lambdas: use none of them.

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

@description('Region of every resource this template creates. Defaults to the resource group\'s region.')
param location string = resourceGroup().location

// Every other name is derived from appName, so its length bounds theirs. The longest derived name
// with the tightest limit is the plan's: '${appName}-plan' may have 60 characters (serverfarms:
// 1-60), so appName may have 55. That also keeps '${appName}-logs' under the workspace limit (63),
// '${appName}-id' (128), '${appName}-insights' (260), and the module deployment names are cut to
// their limit (64) with take(). Constraining appName keeps every name predictable: truncating the
// derived names instead could make two apps' resources collide.
@description('Name of the function app, globally unique; the cache URL is the app\'s default host name (see the cacheUrl output). At most 55 characters, so that the names derived from it fit their limits.')
@minLength(2)
@maxLength(55)
param appName string

@description('Name of the EXISTING storage account that holds the cache. The template never creates it.')
@minLength(3)
@maxLength(24)
param cacheStorageAccountName string

@description('Name of the EXISTING blob container in that account. Neither the template nor the handler creates it.')
@minLength(3)
@maxLength(63)
param cacheContainerName string

@description('Resource group of the cache storage account, when it is not the group this template is deployed to (same subscription).')
param cacheStorageResourceGroup string = resourceGroup().name

@description('Token signing secret (at least 32 bytes, e.g. `openssl rand -base64 48`), as a secure parameter. Set this OR tokenSecretKeyVaultUri, not both.')
@secure()
param tokenSecret string = ''

@description('URI of a Key Vault secret holding the token signing secret, e.g. https://VAULT.vault.azure.net/secrets/nx-cache-jwt-secret (without a version, the app follows new versions). Set this OR tokenSecret, not both.')
param tokenSecretKeyVaultUri string = ''

@description('Resource group of that Key Vault (same subscription), for the role assignment below.')
param tokenSecretKeyVaultResourceGroup string = resourceGroup().name

@description('Grant the app\'s identity "Key Vault Secrets User" on that one secret (and on the tokenPreviousSecretsKeyVaultUri secret). Needs a vault that uses Azure RBAC; set false when the vault uses access policies or its access is managed elsewhere.')
param grantKeyVaultSecretAccess bool = true

// Rotation: earlier secrets keep verifying the tokens they signed, so a new secret does not cut
// off running builds (docs/deploy.md, "Rotating the token secret").
@description('Earlier token signing secrets, comma-separated, that still verify tokens but never sign new ones (NX_CACHE_JWT_PREVIOUS_SECRETS), as a secure parameter. Set this OR tokenPreviousSecretsKeyVaultUri, not both; empty: none.')
@secure()
param tokenPreviousSecrets string = ''

@description('URI of a Key Vault secret whose value is the earlier token signing secrets, comma-separated (NX_CACHE_JWT_PREVIOUS_SECRETS), e.g. https://VAULT.vault.azure.net/secrets/nx-cache-jwt-previous-secrets (without a version, the app follows new versions). The app gets "Key Vault Secrets User" on it as on tokenSecretKeyVaultUri. Set this OR tokenPreviousSecrets, not both.')
param tokenPreviousSecretsKeyVaultUri string = ''

@description('Resource group of the vault of tokenPreviousSecretsKeyVaultUri (same subscription), for its role assignment. Defaults to tokenSecretKeyVaultResourceGroup, as both secrets are usually in the same vault.')
param tokenPreviousSecretsKeyVaultResourceGroup string = tokenSecretKeyVaultResourceGroup

@description('NX_CACHE_MODE: read-write, read-only (every upload refused) or no-cache (every read a miss, every upload refused).')
@allowed([
  'read-write'
  'read-only'
  'no-cache'
])
param mode string = 'read-write'

@description('Largest artifact stored, in MiB. Sets both the handler\'s NX_CACHE_MAX_ARTIFACT_SIZE and the Functions host\'s FUNCTIONS_REQUEST_BODY_SIZE_LIMIT.')
@minValue(1)
@maxValue(10240)
param maxArtifactSizeMiB int = 1024

@description('NX_CACHE_DOWNLOAD: auto (entries up to 1 MiB answered by the handler with their bytes, read with retries; larger ones a 307 to a short-lived read-only SAS URL), redirect (every hit a 307; bytes go straight from storage) or proxy (every hit through the handler: entries up to 1 MiB read whole with retries, larger ones streamed).')
@allowed([
  'auto'
  'redirect'
  'proxy'
])
param downloadMode string = 'auto'

@description('NX_CACHE_SAS_TTL: lifetime of a download URL, between 30s and 1h (e.g. 5m).')
param sasTtl string = '5m'

@description('NX_CACHE_REVOKED_TOKENS: ids (jti) of tokens refused before they expire.')
param revokedTokenIds array = []

@description('NX_CACHE_TRUST_POLICY: the trust policy of POST /token (keyless access), as the JSON text of the policy, {"rules": [...]}; see docs/keyless.md. Empty: the setting is not set and POST /token is off. The handler checks the policy when it starts and refuses to start on a mistake; this template only checks that the text is a JSON object.')
param trustPolicy string = ''

@description('NX_CACHE_EXPIRED_GRACE: for how long after its expiry an authentic token still gets the no-access answers (GET a miss, PUT refused) instead of a 401 that aborts the build; at most 7d.')
param expiredGrace string = '12h'

@description('RUST_LOG: log level and filters of the handler.')
param logLevel string = 'info'

@description('Deploy the Azure Monitor workbook (Application Insights > Workbooks) that charts, from the handler\'s request logs, the hit rate per namespace, requests by outcome, bytes stored, storage errors and the top subjects.')
param deployWorkbook bool = true

@description('Delete cache entries this many days after they were written (or last read, see retentionBasis); 0 turns retention off. CAUTION: writes the cache account\'s lifecycle management policy, which REPLACES any policy that account already has.')
@minValue(0)
param retentionDays int = 0

@description('What retentionDays counts from: modification (the upload; always available) or lastAccess (the last read; needs last-access time tracking enabled on the cache account, which this template does not own).')
@allowed([
  'modification'
  'lastAccess'
])
param retentionBasis string = 'modification'

// The deprecated @nx/azure-cache plugin wrote each entry as a blob named by the bare Nx hash (decimal
// digits) at the container root. This cache never reads them (docs/migrate-from-nx-azure-cache.md).
@description('Delete the legacy @nx/azure-cache entries (blobs at the container root named by an Nx hash) this many days after their last modification; 0 (the default) writes no such rule. CAUTION: like retentionDays, writes the cache account\'s lifecycle management policy, which REPLACES any policy that account already has; both rules go into that one policy.')
@minValue(0)
param legacyEntriesRetentionDays int = 0

@description('Resource id of an EXISTING user-assigned managed identity for the app (any resource group of the subscription). Empty: the system-assigned identity, unless createUserAssignedIdentity.')
param userAssignedIdentityResourceId string = ''

@description('Create a user-assigned identity named APPNAME-id and run the app as it. Ignored when userAssignedIdentityResourceId is set.')
param createUserAssignedIdentity bool = false

@description('Memory of one instance, in MB (Flex Consumption sizes). The handler streams bodies, so the smallest size is enough.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 512

// Learn (flex-consumption-plan, Considerations): "The lowest maximum scale is currently 40. The
// highest currently supported value is 1000." (the stack data's lowestMaximumInstanceCount is 40
// too). What the platform answers outside that range is not documented: the template keeps to it.
@description('Upper bound on the number of instances the app scales out to (Flex Consumption: 40 to 1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

// Flex Consumption adds an instance when the HTTP requests in flight on every instance reach this
// number (functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency, an int;
// Azure/bicep-types-az, Microsoft.Web 2024-04-01). Microsoft documents no range for it; 1000 is this
// template's bound. Its defaults when unset (4 at 512 MB, 16 at 2,048 MB, 32 at 4,096 MB; Learn:
// functions-concurrency, "HTTP trigger concurrency") are general ones; this handler streams bodies
// in a few MiB per request, so the template derives its own from instanceMemoryMB (see the sizing
// variables).
@description('HTTP requests in flight on one instance before Flex Consumption scales out (functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency). 0 (the default): derived from instanceMemoryMB and the handler\'s memory per request, see docs/deploy.md. NX_CACHE_MAX_CONNECTIONS is set a few connections above it.')
@minValue(0)
@maxValue(1000)
param perInstanceConcurrency int = 0

@description('Name of the storage account created for the Functions host and the deployment package (3-24 lowercase letters and digits, globally unique).')
@minLength(3)
@maxLength(24)
param deploymentStorageAccountName string = 'stnx${uniqueString(resourceGroup().id, appName)}'

@description('Tags put on every resource this template creates.')
param tags object = {}

// ---------------------------------------------------------------------------------------------
// Derived values
// ---------------------------------------------------------------------------------------------

var useUserAssignedIdentity = createUserAssignedIdentity || (!empty(userAssignedIdentityResourceId))
var createIdentity = createUserAssignedIdentity && empty(userAssignedIdentityResourceId)
var useKeyVaultSecret = !empty(tokenSecretKeyVaultUri)
var useKeyVaultPreviousSecrets = !empty(tokenPreviousSecretsKeyVaultUri)
var usePreviousSecrets = useKeyVaultPreviousSecrets || (!empty(tokenPreviousSecrets))
// Whitespace alone is no policy (the handler ignores a blank setting): leave the setting out.
var useTrustPolicy = !empty(trim(trustPolicy))

// The user-assigned identity's resource id, client id and principal id, whichever way it came.
var identityResourceId = createIdentity ? createdIdentity.id : userAssignedIdentityResourceId
var identityClientId = createIdentity ? createdIdentity.properties.clientId : existingIdentity.properties.clientId
var identityPrincipalId = createIdentity ? createdIdentity.properties.principalId : existingIdentity.properties.principalId

// The principal that gets the role assignments: the user-assigned identity, or the app's own.
var appPrincipalId = useUserAssignedIdentity ? identityPrincipalId : functionApp.identity.principalId

// Exactly one source for the signing secret, and a parameter secret of at least 32 bytes (the
// handler refuses shorter ones at startup). ARM has no "fail" function; int() of a sentence stops
// the deployment with an error that quotes the sentence. ARM evaluates only the branch of a
// condition that is taken, so this fires only when the sentence is not empty.
var secretSourceProblem = (empty(tokenSecret) == empty(tokenSecretKeyVaultUri)) ? 'Set exactly one of the parameters tokenSecret and tokenSecretKeyVaultUri.' : (((length(tokenSecret) > 0) && (length(tokenSecret) < 32)) ? 'The parameter tokenSecret must be at least 32 bytes long.' : '')

// NX_CACHE_JWT_SECRET: a Key Vault reference (resolved by the platform with the app's identity; the
// secret never appears in the deployment) or the secure parameter. Never a literal.
var keyVaultSecretReference = '@Microsoft.KeyVault(SecretUri=${tokenSecretKeyVaultUri})'
var tokenSecretSetting = (!empty(secretSourceProblem)) ? string(int(secretSourceProblem)) : (useKeyVaultSecret ? keyVaultSecretReference : tokenSecret)

// https://VAULT.vault.azure.net/secrets/NAME[/VERSION] -> VAULT and NAME.
var keyVaultName = useKeyVaultSecret ? first(split(split(tokenSecretKeyVaultUri, '/')[2], '.')) : ''
var keyVaultSecretName = useKeyVaultSecret ? split(tokenSecretKeyVaultUri, '/')[4] : ''
var previousKeyVaultName = useKeyVaultPreviousSecrets ? first(split(split(tokenPreviousSecretsKeyVaultUri, '/')[2], '.')) : ''
var previousKeyVaultSecretName = useKeyVaultPreviousSecrets ? split(tokenPreviousSecretsKeyVaultUri, '/')[4] : ''

// NX_CACHE_JWT_PREVIOUS_SECRETS, only when given: at most one source, and never the current
// secret's own Key Vault secret (it holds one secret, not the list of earlier ones, and both role
// assignments would be the same one). The handler checks the length of each secret at startup;
// the template, which cannot split the list without lambdas (the checks' parser has none), only
// refuses a list shorter than one secret.
var previousSecretsProblem = ((!empty(tokenPreviousSecrets)) && useKeyVaultPreviousSecrets) ? 'Set at most one of the parameters tokenPreviousSecrets and tokenPreviousSecretsKeyVaultUri.' : (((length(tokenPreviousSecrets) > 0) && (length(tokenPreviousSecrets) < 32)) ? 'The parameter tokenPreviousSecrets is shorter than one secret (32 bytes).' : ((useKeyVaultSecret && useKeyVaultPreviousSecrets && (toLower(keyVaultName) == toLower(previousKeyVaultName)) && (toLower(keyVaultSecretName) == toLower(previousKeyVaultSecretName))) ? 'The parameter tokenPreviousSecretsKeyVaultUri must name another Key Vault secret than tokenSecretKeyVaultUri.' : ''))
var previousSecretsReference = '@Microsoft.KeyVault(SecretUri=${tokenPreviousSecretsKeyVaultUri})'
var previousSecretsSetting = (!empty(previousSecretsProblem)) ? string(int(previousSecretsProblem)) : (useKeyVaultPreviousSecrets ? previousSecretsReference : tokenPreviousSecrets)

// NX_CACHE_TRUST_POLICY, only when given. The handler parses and checks the policy at startup;
// here, a value that cannot be a policy (not a JSON object: a file name, a Key Vault reference, a
// pasted rule list) stops the deployment instead of an app that would not start.
var trustPolicyProblem = (useTrustPolicy && (!startsWith(trim(trustPolicy), '{'))) ? 'The parameter trustPolicy must be the JSON text of the trust policy, starting with {, or empty.' : ''
var trustPolicySetting = (!empty(trustPolicyProblem)) ? string(int(trustPolicyProblem)) : trustPolicy

// One number sets both size limits. The handler stores at most maxArtifactSizeMiB and answers a
// larger upload with 403 (Nx then skips it quietly). The host's request body limit is set to
// twice that, so the handler (not the host, with a bare 413) is the one that refuses the
// uploads just over the limit. The handler refuses on Content-Length before reading the body,
// so the larger host limit costs nothing.
var maxArtifactBytes = maxArtifactSizeMiB * 1048576
var requestBodyLimitBytes = maxArtifactBytes * 2

// Per-instance HTTP concurrency and the handler's connection limit, from the instance's memory.
// The handler's worst case is measured by scripts/bench-concurrency (docs/benchmarks.md, "Flex
// Consumption sizing"): every request an upload of a large artifact to Blob Storage, which holds
// two 4 MiB blocks; 27, 64 and 180 uploads at once peaked at 8.2 MiB each above an idle 10 MiB.
//   handlerMemoryPerRequestMiB: what one request in flight may hold in the handler (8.2 measured,
//     10 with a fifth of margin).
//   functionsHostReserveMiB: what is left for the Functions host process on the same instance.
//     Learn (flex-consumption-plan, "Instance sizes"): "Instance resources are shared between your
//     function code and the Functions host", and each instance also gets 272 MB, not billed, "as a
//     buffer for system and host processes". The host gets this reserve without counting on that.
// instanceMemoryMB is taken as MiB (Microsoft's 512, 2,048 and 4,096 MB are powers of two).
// maxArtifactSizeMiB does not enter the bound: an upload is streamed in blocks whatever its size
// (what bounds an artifact is the 230 s a request may take, docs/deploy.md).
// Downloads by size (downloadMode auto, and proxy) hold at most one small entry (1 MiB) per request, less than
// an upload, plus the memory copy of hot entries once per instance (NX_CACHE_MEMORY_COPY, 32 MiB):
// the copy fits in the margin the 10 MiB leaves over the measured 8.2 (1.8 MiB a connection, 56 MiB
// at 512 MB).
var handlerMemoryPerRequestMiB = 10
var functionsHostReserveMiB = 200
// Connections the handler accepts beyond the requests Flex Consumption sends it at once: the host's
// probe of GET / and connections its pool has not reused yet never wait behind the requests.
var handlerConnectionHeadroom = 4
// Every connection may hold a request's memory: the most connections the instance's memory holds.
var memoryBoundConnections = (instanceMemoryMB - functionsHostReserveMiB) / handlerMemoryPerRequestMiB
var httpPerInstanceConcurrency = (perInstanceConcurrency > 0) ? perInstanceConcurrency : (memoryBoundConnections - handlerConnectionHeadroom)
// NX_CACHE_MAX_CONNECTIONS.
var handlerMaxConnections = httpPerInstanceConcurrency + handlerConnectionHeadroom

// The deployment package lives in this container of the deployment storage account.
var deploymentContainerName = 'app-package'

// ---------------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------------

resource createdIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = if (createIdentity) {
  name: '${appName}-id'
  location: location
  tags: tags
}

// /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME,
// split on '/'. A placeholder id when none is given keeps the indexes valid: the resource below is
// then not used.
var existingIdentityIdSegments = split(empty(userAssignedIdentityResourceId) ? '/subscriptions/${subscription().subscriptionId}/resourceGroups/${resourceGroup().name}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/none' : userAssignedIdentityResourceId, '/')

resource existingIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = if (!empty(userAssignedIdentityResourceId)) {
  name: existingIdentityIdSegments[8]
  scope: resourceGroup(existingIdentityIdSegments[2], existingIdentityIdSegments[4])
}

// ---------------------------------------------------------------------------------------------
// Monitoring: the handler logs one JSON line per request to stdout (warnings and errors to
// stderr), and the host forwards each line to Application Insights.
// ---------------------------------------------------------------------------------------------

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${appName}-logs'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${appName}-insights'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
  }
}

// The workbook reads the request lines the host forwards to this Application Insights (traces). It
// is deployed with Application Insights, which this template always creates: were that ever made
// optional, this condition must require it too (tests/infra checks it).
module workbook 'modules/workbook.bicep' = if (deployWorkbook) {
  name: take('${appName}-workbook', 64)
  params: {
    appName: appName
    appInsightsId: appInsights.id
    location: location
    tags: tags
  }
}

// ---------------------------------------------------------------------------------------------
// Storage for the Functions host and the deployment package (not the cache).
// ---------------------------------------------------------------------------------------------

resource deploymentStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: deploymentStorageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    // Entra ID (managed identity) only: requests signed with an account key, and service or
    // account SAS, are refused.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    supportsHttpsTrafficOnly: true
    minimumTlsVersion: 'TLS1_2'
    accessTier: 'Hot'
  }

  resource blobServices 'blobServices' = {
    name: 'default'

    resource packageContainer 'containers' = {
      name: deploymentContainerName
      properties: {
        publicAccess: 'None'
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The function app
// ---------------------------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: '${appName}-plan'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    // Linux.
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: useUserAssignedIdentity ? {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityResourceId}': {}
    }
  } : {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    // Tokens travel in the Authorization header: never over plain http.
    httpsOnly: true
    clientAffinityEnabled: false
    // The identity that resolves the Key Vault references (NX_CACHE_JWT_SECRET and
    // NX_CACHE_JWT_PREVIOUS_SECRETS).
    keyVaultReferenceIdentity: useUserAssignedIdentity ? identityResourceId : 'SystemAssigned'
    // No ftpsState: Learn lists it among the Flex Consumption deprecations, the site properties
    // and settings that "shouldn't be used when creating function app resources" ("FTPS not
    // supported"; functions-app-settings, "Flex Consumption plan deprecations").
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${deploymentStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          // The platform fetches the package with the app's identity (no key, no SAS).
          authentication: useUserAssignedIdentity ? {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityResourceId
          } : {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      // A custom handler: host.json in the package names the `handler` executable. Flex
      // Consumption takes the runtime from here, so FUNCTIONS_WORKER_RUNTIME is not set.
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
  dependsOn: [
    // Flex Consumption expects the package container to exist when the app is created.
    deploymentStorage::blobServices::packageContainer
  ]
}

// No basic-auth (publishing profile) deployments: config-zip authenticates with Entra ID. Only the
// 'scm' policy: Flex Consumption does not support FTP(S) (its deprecations list ftpsState, "FTPS
// not supported"), and Microsoft documents nothing about the 'ftp' publishing-credentials policy
// there, so the template creates none rather than guess how the platform takes one.
resource scmPublishingCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// ---------------------------------------------------------------------------------------------
// Role assignments (in modules: their names are derived from the principal id, which is known
// only once the app exists, and the cache account may be in another resource group).
// ---------------------------------------------------------------------------------------------

// The cache: Storage Blob Data Contributor on the container, Storage Blob Delegator on the
// account; the optional lifecycle policy (retention, legacy entries). See the module for why each.
module cacheAccess 'modules/cache-access.bicep' = {
  name: take('${appName}-cache-access', 64)
  scope: resourceGroup(cacheStorageResourceGroup)
  params: {
    storageAccountName: cacheStorageAccountName
    containerName: cacheContainerName
    principalId: appPrincipalId
    retentionDays: retentionDays
    retentionBasis: retentionBasis
    legacyEntriesRetentionDays: legacyEntriesRetentionDays
  }
}

// The Functions host and Flex Consumption deployments: Storage Blob Data Owner on the
// deployment storage account.
module hostStorageAccess 'modules/host-storage-access.bicep' = {
  name: take('${appName}-host-storage-access', 64)
  params: {
    storageAccountName: deploymentStorage.name
    principalId: appPrincipalId
  }
}

// The signing secret: Key Vault Secrets User on that one secret.
module keyVaultAccess 'modules/keyvault-access.bicep' = if (useKeyVaultSecret && grantKeyVaultSecretAccess) {
  name: take('${appName}-keyvault-access', 64)
  scope: resourceGroup(tokenSecretKeyVaultResourceGroup)
  params: {
    keyVaultName: keyVaultName
    secretName: keyVaultSecretName
    principalId: appPrincipalId
  }
}

// The earlier signing secrets: the same role, on that one secret, in its vault's resource group
// (the same vault as the current secret, or another one).
module previousSecretsKeyVaultAccess 'modules/keyvault-access.bicep' = if (useKeyVaultPreviousSecrets && grantKeyVaultSecretAccess) {
  name: take('${appName}-keyvault-access-previous', 64)
  scope: resourceGroup(tokenPreviousSecretsKeyVaultResourceGroup)
  params: {
    keyVaultName: previousKeyVaultName
    secretName: previousKeyVaultSecretName
    principalId: appPrincipalId
    purpose: 'read the earlier token signing secrets'
  }
}

// ---------------------------------------------------------------------------------------------
// App settings: what the handler and the host read. Written after the role assignments (they
// depend on cacheAccess's output and on the Key Vault modules), so that the Key Vault references
// can be resolved when the settings are applied. This resource owns ALL the app's settings: a
// setting added by hand (portal, CLI) is removed by the next deployment.
// ---------------------------------------------------------------------------------------------

// Only when given: an absent setting, not an empty one, is what keeps keyless access (POST /token)
// off and the list of earlier secrets empty.
var trustPolicySettings = useTrustPolicy ? {
  NX_CACHE_TRUST_POLICY: trustPolicySetting
} : {}

var previousSecretsSettings = usePreviousSecrets ? {
  NX_CACHE_JWT_PREVIOUS_SECRETS: previousSecretsSetting
} : {}

// Only with a user-assigned identity: which identity the handler (AZURE_CLIENT_ID) and the
// host's storage client (AzureWebJobsStorage__clientId) use.
var userAssignedIdentitySettings = useUserAssignedIdentity ? {
  AZURE_CLIENT_ID: identityClientId
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
} : {}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: union({
    // The host's own storage, by identity: an account name, not a connection string.
    AzureWebJobsStorage__accountName: deploymentStorage.name
    // Not a storage credential: the ingestion endpoint and instrumentation key of App Insights.
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString

    // The cache: an existing account and container, reached with the app's managed identity.
    AZURE_STORAGE_ACCOUNT: cacheStorageAccountName
    AZURE_STORAGE_CONTAINER: cacheContainerName
    // The account's own blob endpoint (right in every cloud, and with DNS-zone endpoints).
    AZURE_STORAGE_BLOB_ENDPOINT: cacheAccess.outputs.blobEndpoint

    // Tokens: the signing secret (Key Vault reference or secure parameter), revocations, and how
    // long an expired token still gets no-access answers rather than a 401.
    NX_CACHE_JWT_SECRET: tokenSecretSetting
    NX_CACHE_REVOKED_TOKENS: join(revokedTokenIds, ',')
    NX_CACHE_EXPIRED_GRACE: expiredGrace

    // Behaviour.
    NX_CACHE_MODE: mode
    NX_CACHE_MAX_ARTIFACT_SIZE: '${maxArtifactSizeMiB}M'
    FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: string(requestBodyLimitBytes)
    NX_CACHE_DOWNLOAD: downloadMode
    NX_CACHE_SAS_TTL: sasTtl
    // A little above the requests Flex Consumption sends at once (perInstanceConcurrency).
    NX_CACHE_MAX_CONNECTIONS: string(handlerMaxConnections)

    // Logs: one JSON line per request, which Application Insights stores as traces.
    NX_CACHE_LOG_FORMAT: 'json'
    RUST_LOG: logLevel
  }, userAssignedIdentitySettings, trustPolicySettings, previousSecretsSettings)
  dependsOn: [
    hostStorageAccess
    keyVaultAccess
    previousSecretsKeyVaultAccess
  ]
}

// ---------------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------------

@description('Name of the function app (for `az functionapp deployment source config-zip -n`).')
output functionAppName string = functionApp.name

@description('The org-wide cache: NX_SELF_HOSTED_REMOTE_CACHE_SERVER.')
output cacheUrl string = 'https://${functionApp.properties.defaultHostName}'

@description('A team\'s private cache: replace <team> with the team name.')
output teamCacheUrl string = 'https://${functionApp.properties.defaultHostName}/teams/<team>'

@description('Object id of the identity that holds the role assignments.')
output principalId string = appPrincipalId

@description('Name of the storage account created for the host and the deployment package.')
output deploymentStorageAccountName string = deploymentStorage.name
