// Lets the function app's identity read one token secret, and only that secret.
//
//   Key Vault Secrets User, on the SECRET (not the vault): the platform resolves the app setting
//     NX_CACHE_JWT_SECRET = @Microsoft.KeyVault(SecretUri=...) (and NX_CACHE_JWT_PREVIOUS_SECRETS,
//     the earlier secrets) with the app's identity. Needs a vault with Azure RBAC authorization; a
//     vault on access policies needs an access policy (get on secrets) instead, and main.bicep's
//     grantKeyVaultSecretAccess set to false.
//
// Deployed by main.bicep into the vault's resource group, once per secret.

@description('Name of the existing Key Vault.')
param keyVaultName string

@description('Name of the secret: the token signing secret, or the earlier ones.')
param secretName string

@description('Object id of the identity the function app runs as.')
param principalId string

@description('What the access is for, in the role assignment\'s description.')
param purpose string = 'read the token signing secret'

// Built-in role definition id.
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: secretName
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(secret.id, principalId, keyVaultSecretsUserRoleId)
  scope: secret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'nx-azure-cache: ${purpose}'
  }
}
