// What the handler's identity may do on the EXISTING cache storage, and nothing more.
//
// Deployed by main.bicep into the cache account's resource group (scope: cacheStorageResourceGroup),
// which may differ from the function app's. The account and the container are referenced, never
// created: a missing container fails the role assignment below, loudly, at deployment time.
//
//   Storage Blob Data Contributor, on the CONTAINER: read, write and delete blobs, needed for
//     GET (download or SAS redirect), PUT (staged blocks, conditional commit) and the health
//     probe. Scoped to the one container, so the app cannot touch any other data in the account.
//   Storage Blob Delegator, on the ACCOUNT: the "Get User Delegation Key" operation, with which
//     the handler signs the short-lived read-only SAS URLs of NX_CACHE_DOWNLOAD=redirect. That
//     operation exists only at account level, so this role cannot be scoped lower. It grants no
//     data access by itself: a user-delegation SAS never grants more than the signer's own data
//     roles, here the one container. It is the only kind of SAS that works on an account with
//     shared keys disabled.
//
// Optionally (retentionDays > 0, legacyEntriesRetentionDays > 0) the account's lifecycle management
// policy deletes old entries of this cache, and the entries the deprecated @nx/azure-cache plugin
// left at the container root.

@description('Name of the existing cache storage account (in this module\'s resource group).')
param storageAccountName string

@description('Name of the existing blob container that holds the cache.')
param containerName string

@description('Object id of the identity the function app runs as.')
param principalId string

@description('Delete entries this many days after retentionBasis; 0 = no policy is written.')
@minValue(0)
param retentionDays int = 0

@description('modification (days since upload) or lastAccess (days since the last read; needs last-access time tracking on the account).')
@allowed([
  'modification'
  'lastAccess'
])
param retentionBasis string = 'modification'

@description('Delete the legacy @nx/azure-cache entries (blobs at the container root named by an Nx hash) this many days after their last modification; 0 = no such rule.')
@minValue(0)
param legacyEntriesRetentionDays int = 0

// Built-in role definition ids (the same in every tenant).
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageBlobDelegatorRoleId = 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: containerName
}

resource containerDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  // Named from scope + principal + role: redeploying is idempotent, and a new identity (the app
  // was recreated) gets a new assignment instead of a conflict.
  name: guid(container.id, principalId, storageBlobDataContributorRoleId)
  scope: container
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: principalId
    // A managed identity: saying so lets ARM assign the role before the new principal has
    // replicated through Entra ID.
    principalType: 'ServicePrincipal'
    description: 'nx-azure-cache: read and write cache entries in this container'
  }
}

resource accountDelegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, storageBlobDelegatorRoleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDelegatorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'nx-azure-cache: get user delegation keys to sign read-only download URLs'
  }
}

// The lifecycle management policy, opt-in. An account has ONE policy (always named 'default'), read
// and written in full: deploying it replaces whatever policy the account had. If the account already
// has rules, add these rules to them by hand instead (see docs/deploy.md) and leave both parameters
// at 0. The two rules below share that one policy, each only when asked for.
//
// Retention (retentionDays > 0). Entries are immutable: an entry deleted by this rule is simply a
// miss next time, and the next build that produces it uploads it again. Blob names are org/{hash}
// and teams/{team}/{hash} for Nx, the same under turbo/ for Turborepo (src/key.rs), so the rule
// matches those three prefixes of this container and nothing else in the account.
var retentionRules = (retentionDays > 0) ? [
  {
    name: 'nxCacheRetention'
    enabled: true
    type: 'Lifecycle'
    definition: {
      filters: {
        blobTypes: [
          'blockBlob'
        ]
        prefixMatch: [
          '${containerName}/org/'
          '${containerName}/teams/'
          '${containerName}/turbo/'
        ]
      }
      actions: {
        // daysAfterLastAccessTimeGreaterThan is rejected unless last-access time tracking is enabled
        // on the account (az storage account blob-service-properties update
        // --enable-last-access-tracking true), which this template does not own.
        baseBlob: (retentionBasis == 'lastAccess') ? {
          delete: {
            daysAfterLastAccessTimeGreaterThan: retentionDays
          }
        } : {
          delete: {
            daysAfterModificationGreaterThan: retentionDays
          }
        }
      }
    }
  }
] : []

// Legacy @nx/azure-cache entries (legacyEntriesRetentionDays > 0): blobs at the container root named
// by an Nx hash, a decimal number. A prefixMatch is a plain prefix that starts with the container
// name (no wildcards, at most 10 per rule; Learn: lifecycle-management-policy-structure), so the ten
// prefixes CONTAINER/0 ... CONTAINER/9 match exactly the root blobs whose name starts with a digit.
// This cache's own blobs start with 'org/' or 'teams/' (src/key.rs; the template sets no
// NX_CACHE_BLOB_PREFIX), a letter: the rule never matches them. tests/infra checks both.
var legacyRules = (legacyEntriesRetentionDays > 0) ? [
  {
    name: 'nxAzureCacheLegacyEntries'
    enabled: true
    type: 'Lifecycle'
    definition: {
      filters: {
        blobTypes: [
          'blockBlob'
        ]
        prefixMatch: [
          '${containerName}/0'
          '${containerName}/1'
          '${containerName}/2'
          '${containerName}/3'
          '${containerName}/4'
          '${containerName}/5'
          '${containerName}/6'
          '${containerName}/7'
          '${containerName}/8'
          '${containerName}/9'
        ]
      }
      actions: {
        baseBlob: {
          delete: {
            daysAfterModificationGreaterThan: legacyEntriesRetentionDays
          }
        }
      }
    }
  }
] : []

var lifecycleRules = concat(retentionRules, legacyRules)

resource lifecyclePolicy 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = if (!empty(lifecycleRules)) {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: lifecycleRules
    }
  }
}

@description('The cache account\'s blob endpoint (https://ACCOUNT.blob.core.windows.net/ in the public cloud).')
output blobEndpoint string = account.properties.primaryEndpoints.blob
