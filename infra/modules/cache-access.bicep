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
// Optionally (retentionDays > 0) the account's lifecycle management policy deletes old entries.

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

// Opt-in retention. An account has ONE management policy (always named 'default'): deploying this
// replaces whatever policy the account had. If the account already has rules, add this rule to
// them by hand instead (see docs/deploy.md) and leave retentionDays at 0.
//
// Entries are immutable: an entry deleted by this rule is simply a miss next time, and the next
// build that produces it uploads it again. Blob names are org/{hash} and teams/{team}/{hash}, so
// the rule matches those two prefixes of this container and nothing else in the account.
resource retentionPolicy 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = if (retentionDays > 0) {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: [
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
              ]
            }
            actions: {
              // daysAfterLastAccessTimeGreaterThan is rejected unless last-access time tracking is
              // enabled on the account (az storage account blob-service-properties update
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
      ]
    }
  }
}

@description('The cache account\'s blob endpoint (https://ACCOUNT.blob.core.windows.net/ in the public cloud).')
output blobEndpoint string = account.properties.primaryEndpoints.blob
