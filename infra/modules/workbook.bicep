// An Azure Monitor workbook over the handler's request log lines, linked to the app's Application
// Insights (it appears under Application Insights > Workbooks). Deployed by main.bicep when
// deployWorkbook is true (the default).
//
// Where its data comes from: under Azure Functions the handler writes one JSON object per line,
// request lines to stdout and warnings and errors to stderr (NX_CACHE_LOG_FORMAT=json; since
// 0.2.0); the Functions host forwards each line to Application Insights
// as a row of `traces` whose `message` is the line itself (category Host.Function.Console). Every
// query parses `message` into a dynamic named `e` (`extend e = parse_json(message)`) and keeps the
// request lines (`tostring(e.message) == "request"`); the storage-error items also keep the WARN
// and ERROR lines about storage.
//
// Fields of the log line the queries use, always as e.FIELD (never e["..."], never through another
// name; tests/infra and tests/workbook.rs check this): e.message, e.level, e.target, e.client,
// e.namespace, e.outcome, e.bytes, e.time_saved_ms, e.subject, e.rule. e.client is nx or turbo;
// e.time_saved_ms is, on a Turborepo hit, the task's duration turbo stored with the artifact.
//
// The workbook itself is ../workbook.json (the "Notebook/1.0" serializedData); this module adds only
// fallbackResourceIds (the Application Insights resource), so its queries have their data source
// wherever the workbook is opened from.

@description('Name of the function app; the workbook\'s name (a GUID) and display name derive from it.')
param appName string

@description('Resource id of the app\'s Application Insights: the workbook\'s source and the data source of its queries.')
param appInsightsId string

@description('Region of the workbook resource.')
param location string = resourceGroup().location

@description('Tags put on the workbook.')
param tags object = {}

// The workbook service keeps sourceId in lowercase: the same value here keeps redeployments quiet.
var sourceId = toLower(appInsightsId)

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID. A deterministic one: redeploying updates this workbook
  // instead of adding another (newGuid() would make a new one every time).
  name: guid(resourceGroup().id, appName, 'nx-cache-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'Nx cache (${appName})'
    category: 'workbook'
    sourceId: sourceId
    version: 'Notebook/1.0'
    serializedData: string(union(loadJsonContent('../workbook.json'), {
      fallbackResourceIds: [
        sourceId
      ]
    }))
  }
}

@description('Resource id of the workbook.')
output workbookId string = workbook.id
