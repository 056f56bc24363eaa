//! The real turbo CLI (npm `turbo`, pinned in tests/e2e/package-lock.json) on a two-package
//! workspace against the `handler` binary: a clean run stores every task, a second clean run
//! with `--cache=remote:rw` restores every task from the remote cache with identical outputs,
//! on the embedded store and on Azurite with an artifact over the inline limit (redirected to a
//! SAS URL, which turbo follows), and the same in signature mode (the tag comes back unchanged,
//! or turbo would count a miss). Tokens that may not write, or not read the team, leave the build
//! green; `--force` over stored artifacts warns nothing; a dry run finds what is stored.

mod common;

use common::azurite::Azurite;
use common::turbo::{PACKAGES, Run, SIGNATURE_KEY, Workspace, remote};
use common::{Handler, issue_token};
use serde_json::Value;

const CONTAINER: &str = "turbo-e2e";

/// The settings of a handler on Azurite whose inline limit is the smallest allowed, so that an
/// artifact of `LARGE` random bytes is redirected.
fn azurite_env(azurite: &Azurite) -> Vec<(&'static str, String)> {
    let mut env = azurite.key_env(CONTAINER);
    env.push(("NX_CACHE_INLINE_MAX", "256K".to_string()));
    env
}

/// Random bytes each build writes on Azurite: over the 256 KiB inline limit once compressed
/// (random bytes do not compress).
const LARGE: &str = "400000";

/// The environment of a run: the remote cache, the build's size, and the signing key.
fn env_of(remote: Vec<(&'static str, String)>, bytes: &str) -> Vec<(&'static str, String)> {
    let mut env = remote;
    env.push(("BUILD_BYTES", bytes.to_owned()));
    env.push(("TURBO_REMOTE_CACHE_SIGNATURE_KEY", SIGNATURE_KEY.to_owned()));
    env
}

/// A clean run stores, a second clean run restores every task from the remote cache with the
/// first run's outputs, byte for byte. Returns the second run.
fn stores_then_restores(workspace: &Workspace, env: &[(&'static str, String)]) -> Run {
    let first = workspace.build(&[], env);
    assert!(first.ok, "the first run must succeed:\n{}", first.output);
    assert!(
        first
            .tasks()
            .iter()
            .all(|(_, status, _, _)| status == "MISS"),
        "{:?}",
        first.tasks()
    );
    assert!(first.cache_warnings().is_empty(), "{}", first.output);
    let built = workspace.outputs();
    assert_eq!(built.len(), PACKAGES.len(), "{built:?}");

    workspace.clean();
    let second = workspace.build(&["--cache=remote:rw"], env);
    assert!(second.ok, "the second run must succeed:\n{}", second.output);
    assert_eq!(
        second.remote_hits(),
        PACKAGES.len(),
        "every task restored from the remote cache: {:?}\n{}",
        second.tasks(),
        second.output
    );
    assert_eq!(workspace.outputs(), built, "identical outputs");
    assert!(second.cache_warnings().is_empty(), "{}", second.output);
    second
}

/// The request lines the handler logged for artifacts (`/v8/artifacts/{hash}`).
fn artifact_lines(handler: &Handler, method: &str) -> Vec<Value> {
    handler
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["message"] == "request"
                && v["method"] == method
                && v["path"].as_str().unwrap().starts_with("/v8/artifacts/")
                && v["path"] != "/v8/artifacts/status"
                && v["path"] != "/v8/artifacts/events"
        })
        .collect()
}

/// The artifacts `handler entries --turbo --json` lists in the embedded store of `handler`.
fn stored_artifacts(handler: &Handler) -> Vec<Value> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["entries", "--turbo", "--json"])
        .env_clear()
        .env("NX_CACHE_JWT_SECRET", common::TEST_SECRET)
        .env("NX_CACHE_DIR", &handler.data_dir)
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn statuses(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_restores_every_task_and_never_fails_a_build() {
    let handler = Handler::start(&[]);
    let api = handler.base_url.clone();
    let token = issue_token(&["--team", "web"]);
    let env = env_of(remote(&api, &token, "web"), "1024");
    let workspace = Workspace::new(false);
    let restored = stores_then_restores(&workspace, &env);
    for (task, _, _, saved) in restored.tasks() {
        assert!(saved > 0, "{task}: the duration came back as time saved");
    }
    // The artifacts were stored with turbo's fields: the commit is the workspace's.
    let stored = stored_artifacts(&handler);
    assert_eq!(stored.len(), PACKAGES.len());
    for artifact in &stored {
        assert_eq!(artifact["turbo"]["sha"], workspace.head(), "{artifact}");
        assert!(
            artifact["turbo"]["duration_ms"].as_u64().is_some(),
            "{artifact}"
        );
        assert!(artifact["turbo"]["tag"].is_null(), "{artifact}");
    }

    // A dry run asks the query and finds every task.
    let dry = workspace.dry(&env);
    for task in dry["tasks"].as_array().unwrap() {
        assert_eq!(task["cache"]["status"], "HIT", "{task}");
        assert_eq!(task["cache"]["remote"], true, "{task}");
    }

    // --force uploads every task again: never overwritten, and no warning.
    let forced = workspace.build(&["--force"], &env);
    assert!(forced.ok, "{}", forced.output);
    assert!(forced.cache_warnings().is_empty(), "{}", forced.output);
    let puts = artifact_lines(&handler, "PUT");
    let conflicts: Vec<&Value> = puts.iter().filter(|l| l["outcome"] == "conflict").collect();
    assert_eq!(conflicts.len(), PACKAGES.len(), "{puts:#?}");
    assert!(conflicts.iter().all(|l| l["status"] == 200));

    // A read-only token on new inputs: misses, uploads refused with the 403 turbo stops on.
    let read_only = issue_token(&["--team", "web", "--read-only"]);
    workspace.clean();
    let before = artifact_lines(&handler, "PUT").len();
    let run = workspace.build(&[], &env_of(remote(&api, &read_only, "web"), "2048"));
    assert!(
        run.ok,
        "a read-only token leaves the build green:\n{}",
        run.output
    );
    assert!(
        run.output.contains("skipping uploads for this run"),
        "{}",
        run.output
    );
    let refused = &artifact_lines(&handler, "PUT")[before..];
    assert!(
        !refused.is_empty() && statuses(refused).iter().all(|s| *s == 403),
        "{refused:#?}"
    );
    assert_eq!(
        handler.entries("turbo/teams/web"),
        PACKAGES.len(),
        "nothing stored"
    );

    // A token for another team: turbo's banner says so, reads miss, uploads refused, green.
    let stranger = issue_token(&["--team", "api"]);
    workspace.clean();
    let before_gets = artifact_lines(&handler, "GET").len();
    let run = workspace.build(&[], &env_of(remote(&api, &stranger, "web"), "1024"));
    assert!(
        run.ok,
        "a token for another team leaves the build green:\n{}",
        run.output
    );
    assert!(
        run.output.contains("Disabled for this team"),
        "{}",
        run.output
    );
    assert_eq!(run.remote_hits(), 0);
    let gets = &artifact_lines(&handler, "GET")[before_gets..];
    assert!(statuses(gets).iter().all(|s| *s == 404), "{gets:#?}");

    // No token valid for this cache: no cache, and a green build.
    workspace.clean();
    let run = workspace.build(&[], &env_of(remote(&api, "not-a-token", "web"), "1024"));
    assert!(run.ok, "{}", run.output);
    assert!(
        run.output.contains("Authentication failed"),
        "{}",
        run.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_in_signature_mode_returns_the_tag() {
    let handler = Handler::start(&[]);
    let token = issue_token(&["--org"]);
    let env = env_of(remote(&handler.base_url, &token, "_org"), "1024");
    let workspace = Workspace::new(true);
    stores_then_restores(&workspace, &env);
    let puts = artifact_lines(&handler, "PUT");
    assert_eq!(statuses(&puts), vec![200; PACKAGES.len()]);
    assert_eq!(
        handler.entries("turbo/org"),
        PACKAGES.len(),
        "_org is the org-wide cache"
    );

    // Without the key turbo refuses to sign, uploads nothing, and builds.
    workspace.clean();
    let mut unsigned = env_of(remote(&handler.base_url, &token, "_org"), "4096");
    unsigned.retain(|(name, _)| *name != "TURBO_REMOTE_CACHE_SIGNATURE_KEY");
    let run = workspace.build(&[], &unsigned);
    assert!(run.ok, "{}", run.output);
}

/// A handler on Azurite and a workspace whose builds write `LARGE` random bytes (signed when
/// `signed`), after [`stores_then_restores`]: the second run, and the hits' request lines.
struct OnAzurite {
    azurite: Azurite,
    handler: Handler,
    workspace: Workspace,
    env: Vec<(&'static str, String)>,
    restored: Run,
    hits: Vec<Value>,
}

async fn large_artifacts_on_azurite(signed: bool) -> OnAzurite {
    let azurite = Azurite::start();
    azurite.create_container(CONTAINER, None).await;
    let handler = Handler::start_with(&azurite_env(&azurite), &[]);
    let token = issue_token(&["--team", "web"]);
    let env = env_of(remote(&handler.base_url, &token, "web"), LARGE);
    let workspace = Workspace::new(signed);
    let restored = stores_then_restores(&workspace, &env);
    let hits: Vec<Value> = artifact_lines(&handler, "GET")
        .into_iter()
        .filter(|l| l["status"] != 404)
        .collect();
    assert_eq!(hits.len(), PACKAGES.len(), "{hits:#?}");
    OnAzurite {
        azurite,
        handler,
        workspace,
        env,
        restored,
        hits,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_redirects_large_artifacts_and_turbo_follows() {
    let OnAzurite {
        azurite,
        handler,
        workspace,
        env,
        restored,
        hits: gets,
    } = large_artifacts_on_azurite(false).await;
    for line in &gets {
        assert_eq!(line["status"], 307, "redirected to storage: {line}");
        assert_eq!(line["redirected"], true);
    }
    // Storage's answer cannot carry turbo's duration: a redirected hit saves time turbo does not
    // count (README says so).
    for (task, _, _, saved) in restored.tasks() {
        assert_eq!(saved, 0, "{task}");
    }
    assert_eq!(
        azurite.list_blobs(CONTAINER, None).await.len(),
        PACKAGES.len()
    );
    // Uploads of large artifacts that exist are answered before their bodies are read, which
    // are then read away: turbo sees the 200, warns nothing.
    let forced = workspace.build(&["--force"], &env);
    assert!(forced.ok, "{}", forced.output);
    assert!(forced.cache_warnings().is_empty(), "{}", forced.output);
    let conflicts = artifact_lines(&handler, "PUT")
        .into_iter()
        .filter(|l| l["outcome"] == "conflict" && l["status"] == 200)
        .count();
    assert_eq!(conflicts, PACKAGES.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_streams_large_tagged_artifacts_in_signature_mode() {
    let on_azurite = large_artifacts_on_azurite(true).await;
    let (restored, gets) = (&on_azurite.restored, &on_azurite.hits);
    for line in gets {
        assert_eq!(line["status"], 200, "a tagged artifact is streamed: {line}");
        assert!(line["bytes"].as_u64().unwrap() > 256 * 1024, "{line}");
    }
    for (task, _, _, saved) in restored.tasks() {
        assert!(saved > 0, "{task}: streamed with its duration");
    }
}
