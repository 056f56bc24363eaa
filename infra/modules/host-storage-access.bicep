// What the Functions host needs on the storage account main.bicep creates for it (not the cache).
//
//   Storage Blob Data Owner, on that ACCOUNT: Flex Consumption reads the deployment package from
//     its container with the app's identity, and the same account is the host's
//     AzureWebJobsStorage (host locks and keys, in containers the host creates itself). The
//     account is dedicated to this app and holds no cache data, so account scope gives the app
//     nothing beyond its own host state.

@description('Name of the deployment storage account created by main.bicep (same resource group).')
param storageAccountName string

@description('Object id of the identity the function app runs as.')
param principalId string

// Built-in role definition id.
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource hostBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, storageBlobDataOwnerRoleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'nx-azure-cache: Functions host state and Flex Consumption deployment package'
  }
}
