//! End to end with the real Nx CLI (version pinned in `tests/e2e/package-lock.json`) against the
//! `handler` binary on its embedded store.
//!
//! The workspace template in `tests/e2e/workspace` has three cacheable projects whose build
//! writes random bytes, so a remote hit is proved by restored outputs equal byte for byte to the
//! first run's, after `nx reset` wiped the local cache. One project's artifact is ~6 MB, so the
//! early answers to refused uploads are exercised with a body that does not fit in one packet.

mod common;

use std::time::Duration;

use common::nx::{PROJECTS, Workspace, remote_hits};
use common::{Handler, issue_token};

/// Runs the workspace once to fill the cache, forgets everything local, runs again, and checks
/// that every task was a remote hit with outputs restored byte for byte.
fn assert_round_trip(server_url: &str, token: &str, handler: &Handler, prefix: &str) {
    let workspace = Workspace::new();
    let (ok, first) = workspace.build(server_url, Some(token));
    assert!(ok, "first build failed:\n{first}");
    assert_eq!(
        remote_hits(&first),
        0,
        "nothing can be cached yet:\n{first}"
    );
    assert_eq!(
        handler.entries(prefix),
        PROJECTS.len(),
        "every task's artifact is stored under {prefix}"
    );
    let built = workspace.outputs();
    assert_eq!(built.len(), 2 * PROJECTS.len());

    workspace.forget_local_results(server_url);
    assert!(workspace.outputs().is_empty());
    let (ok, second) = workspace.build(server_url, Some(token));
    assert!(ok, "second build failed:\n{second}");
    assert_eq!(
        remote_hits(&second),
        PROJECTS.len(),
        "every task must be a remote hit:\n{second}"
    );
    assert!(
        workspace.outputs() == built,
        "restored outputs must equal the first run's byte for byte"
    );
}

#[test]
fn org_cache_every_task_is_a_remote_hit_after_reset() {
    let handler = Handler::start(&[]);
    let token = issue_token(&["--org"]);
    assert_round_trip(&handler.base_url, &token, &handler, "org");
}

#[test]
fn team_cache_hits_for_its_team_and_is_invisible_to_another() {
    let handler = Handler::start(&[]);
    let web_url = format!("{}/teams/web", handler.base_url);
    let web = issue_token(&["--team", "web"]);
    assert_round_trip(&web_url, &web, &handler, "teams/web");
    assert_eq!(handler.entries("org"), 0);

    // A read-write token of team `api` on `web`'s endpoint: no hit, nothing stored, build succeeds.
    let api = issue_token(&["--team", "api"]);
    let workspace = Workspace::new();
    let (ok, output) = workspace.build(&web_url, Some(&api));
    assert!(
        ok,
        "another team's token must not break the build:\n{output}"
    );
    assert_eq!(
        remote_hits(&output),
        0,
        "another team's entries must not be served:\n{output}"
    );
    assert_eq!(
        handler.entries("teams/web"),
        PROJECTS.len(),
        "nothing new stored for web"
    );
    assert_eq!(
        handler.entries("teams/api"),
        0,
        "nothing stored for api either"
    );
}

#[test]
fn read_only_token_stores_nothing_and_the_build_succeeds() {
    let handler = Handler::start(&[]);
    let reader = issue_token(&["--org", "--read-only"]);
    let workspace = Workspace::new();
    let (ok, output) = workspace.build(&handler.base_url, Some(&reader));
    assert!(ok, "a read-only token must not fail the build:\n{output}");
    assert_eq!(handler.entries("org"), 0);
    let refused = handler
        .logs()
        .iter()
        .filter(|l| l.contains("\"status\":403"))
        .count();
    assert_eq!(refused, PROJECTS.len(), "each upload answered 403");

    // The same token reads what a read-write token stored.
    let writer = issue_token(&["--org"]);
    workspace.touch_sources("v2");
    let (ok, output) = workspace.build(&handler.base_url, Some(&writer));
    assert!(ok, "{output}");
    workspace.forget_local_results(&handler.base_url);
    let (ok, output) = workspace.build(&handler.base_url, Some(&reader));
    assert!(ok, "{output}");
    assert_eq!(remote_hits(&output), PROJECTS.len(), "{output}");
}

#[test]
fn missing_token_gets_the_unauthorized_message() {
    let handler = Handler::start(&[]);
    let workspace = Workspace::new();
    let (ok, output) = workspace.build(&handler.base_url, None);
    assert!(!ok, "Nx aborts on 401");
    assert!(output.contains("Unauthorized"), "{output}");
    assert!(
        output.contains("NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN"),
        "the message says what to fix:\n{output}"
    );
    assert_eq!(handler.entries("org"), 0);
}

mod azure {
    //! The same round trip with the Azure Blob backend on Azurite: small entries are answered
    //! with their bytes by the handler, the large one is a redirect that the Nx client follows
    //! to storage, and storage going away never fails the build.

    use super::*;
    use common::azurite::{Azurite, IdentityEndpoint, Tls};

    const CONTAINER: &str = "nx-cache";
    const METRICS_TOKEN: &str = "metrics-token-0123456789";

    fn blob_count(
        runtime: &tokio::runtime::Runtime,
        azurite: &Azurite,
        tls: Option<&Tls>,
    ) -> usize {
        runtime.block_on(azurite.list_blobs(CONTAINER, tls)).len()
    }

    /// Builds, forgets local results, builds again: every task a remote hit, the small entries
    /// answered inline, the large one (gamma's, 6 MB) by redirect.
    fn round_trip(
        runtime: &tokio::runtime::Runtime,
        azurite: &Azurite,
        tls: Option<&Tls>,
        handler: &Handler,
        workspace: &Workspace,
    ) {
        let token = issue_token(&["--org"]);
        let (ok, first) = workspace.build(&handler.base_url, Some(&token));
        assert!(ok, "first build failed:\n{first}");
        assert_eq!(
            blob_count(runtime, azurite, tls),
            PROJECTS.len(),
            "one blob per task"
        );
        let built = workspace.outputs();

        workspace.forget_local_results(&handler.base_url);
        let (ok, second) = workspace.build(&handler.base_url, Some(&token));
        assert!(ok, "second build failed:\n{second}");
        assert_eq!(
            remote_hits(&second),
            PROJECTS.len(),
            "every task a remote hit:\n{second}"
        );
        assert!(
            workspace.outputs() == built,
            "outputs restored byte for byte"
        );

        // Hits and misses are counted exactly (exact hit checks, the default): the handler's
        // log agrees with what nx printed. The first run's GETs were misses, answered by the
        // handler itself; the second run's were hits, inline or redirected. Every blob download
        // Azurite served was either the handler reading a small entry (once each: repeated
        // GETs are answered from its memory copy) or the Nx client following a redirect.
        let gets: Vec<serde_json::Value> = handler
            .logs()
            .iter()
            .filter(|l| l.contains("\"method\":\"GET\"") && l.contains("/v1/cache/"))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect();
        let outcomes: Vec<&str> = gets
            .iter()
            .map(|v| v["outcome"].as_str().unwrap_or(""))
            .collect();
        let count = |name: &str| outcomes.iter().filter(|o| **o == name).count();
        assert_eq!(
            count("miss"),
            PROJECTS.len() - remote_hits(&first),
            "{outcomes:?}"
        );
        assert_eq!(count("hit"), remote_hits(&second), "{outcomes:?}");
        assert_eq!(count("hit") + count("miss"), outcomes.len(), "{outcomes:?}");
        let redirected = gets
            .iter()
            .filter(|v| v["outcome"] == "hit" && v["redirected"] == true)
            .count();
        assert!(
            (1..count("hit")).contains(&redirected),
            "the large entry redirected, the small ones inline: {gets:?}"
        );
        let metrics = runtime.block_on(common::metrics_text(&handler.base_url, METRICS_TOKEN));
        let read_inline =
            common::metric_value(&metrics, "nx_cache_inline_hits_storage_total").unwrap();
        assert_eq!(read_inline, 2, "alpha's and beta's entries, read once each");
        runtime.block_on(azurite.settle(tls));
        let blob_gets =
            azurite.requests_matching(&format!("\"GET /devstoreaccount1/{CONTAINER}/org/"));
        assert_eq!(
            blob_gets as u64,
            redirected as u64 + read_inline,
            "blob reads are the handler's inline reads and the followed redirects"
        );
        // So does /metrics, per namespace.
        for line in [
            format!(
                "nx_cache_namespace_hits_total{{namespace=\"org\"}} {}",
                remote_hits(&second)
            ),
            format!(
                "nx_cache_namespace_misses_total{{namespace=\"org\"}} {}",
                PROJECTS.len()
            ),
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
        }
    }

    #[test]
    fn connection_string_every_task_is_a_hit_and_a_dead_store_never_fails_the_build() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut azurite = Azurite::start();
        runtime.block_on(azurite.create_container(CONTAINER, None));
        let handler = Handler::start(&[
            (
                "AZURE_STORAGE_CONNECTION_STRING",
                &azurite.connection_string(),
            ),
            ("AZURE_STORAGE_CONTAINER", CONTAINER),
            ("NX_CACHE_STORAGE_TIMEOUT", "3s"),
            ("NX_CACHE_METRICS_TOKEN", METRICS_TOKEN),
        ]);
        let workspace = Workspace::new();
        round_trip(&runtime, &azurite, None, &handler, &workspace);

        // Storage stops between runs: misses, uploads not stored, and the build succeeds.
        azurite.kill();
        let noticed = handler.wait_for_log(Duration::from_secs(60), |l| {
            l.contains("storage unavailable")
        });
        assert!(noticed.is_some(), "the health watch notices the outage");
        workspace.forget_local_results(&handler.base_url);
        workspace.touch_sources("after the outage");
        let token = issue_token(&["--org"]);
        let (ok, output) = workspace.build(&handler.base_url, Some(&token));
        assert!(ok, "a dead store must not fail the build:\n{output}");
        assert_eq!(remote_hits(&output), 0);
        assert!(handler.logs().iter().any(|l| l.contains("storage-error")));
    }

    #[test]
    fn a_missing_container_still_lets_the_build_run() {
        let azurite = Azurite::start();
        let handler = Handler::start(&[
            (
                "AZURE_STORAGE_CONNECTION_STRING",
                &azurite.connection_string(),
            ),
            ("AZURE_STORAGE_CONTAINER", CONTAINER),
        ]);
        assert!(
            handler
                .logs()
                .iter()
                .any(|l| l.contains("storage not ready") && l.contains("does not exist"))
        );
        let token = issue_token(&["--org"]);
        let (ok, output) = Workspace::new().build(&handler.base_url, Some(&token));
        assert!(ok, "{output}");
        assert_eq!(remote_hits(&output), 0);
    }

    #[test]
    fn managed_identity_every_task_is_a_hit_by_user_delegation_sas() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let tls = Tls::generate();
        let azurite = Azurite::start_oauth(&tls);
        runtime.block_on(azurite.create_container(CONTAINER, Some(&tls)));
        let identity = runtime.block_on(IdentityEndpoint::start());
        let ca = tls.ca_file().display().to_string();
        let handler = Handler::start_with(
            &identity.handler_env(azurite.endpoint(), CONTAINER, &tls),
            &[("NX_CACHE_METRICS_TOKEN", METRICS_TOKEN)],
        );
        let workspace = Workspace::new();
        workspace.trust_ca(&ca);
        round_trip(&runtime, &azurite, Some(&tls), &handler, &workspace);
        assert!(
            azurite.requests_matching("comp=userdelegationkey") <= 2,
            "the delegation key is cached"
        );
    }
}

mod faults {
    //! The issue's table, run again: the real Nx CLI against Azurite behind a front that fails
    //! blob reads the way Azure documents them (`common::faulty_storage`), on handlers started
    //! with default settings (and in proxy mode). Every run exits 0 with complete outputs.

    use super::*;
    use common::azurite::Azurite;
    use common::faulty_storage::{Fault, FaultyStorage};

    /// Azurite behind the fault-injecting front, and a handler's settings to reach it there.
    /// Fields drop in order: the front before Azurite, the runtime the front runs on last.
    struct FaultyAzurite {
        settings: [(&'static str, String); 2],
        front: FaultyStorage,
        _azurite: Azurite,
        _runtime: tokio::runtime::Runtime,
    }

    impl FaultyAzurite {
        fn start() -> Self {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let azurite = Azurite::start();
            runtime.block_on(azurite.create_container("nx-cache", None));
            let front = runtime.block_on(FaultyStorage::start(azurite.port));
            let settings = [
                ("AZURE_STORAGE_CONNECTION_STRING", front.connection_string()),
                ("AZURE_STORAGE_CONTAINER", "nx-cache".to_string()),
            ];
            Self {
                settings,
                front,
                _azurite: azurite,
                _runtime: runtime,
            }
        }
    }

    #[test]
    fn storage_faults_and_an_outage_never_fail_a_build() {
        let storage = FaultyAzurite::start();
        let (front, settings) = (&storage.front, &storage.settings);
        let writer = Handler::start_with(settings, &[]);
        let workspace = Workspace::new();
        // Every entry of this workspace is answered inline (gamma's output shrunk below the
        // inline limit): a large entry is redirected, the Nx client reads it from storage
        // itself, and a failure of that read still aborts its run (docs/security.md).
        workspace.set_output_size("gamma", 300_000);
        let token = issue_token(&["--org"]);
        let (ok, first) = workspace.build(&writer.base_url, Some(&token));
        assert!(ok, "first build failed:\n{first}");
        let built = workspace.outputs();
        assert_eq!(built.len(), 2 * PROJECTS.len());

        // Default settings, and proxy mode (for clients that cannot reach storage), which reads
        // small entries whole in the same way.
        for mode in [&[][..], &[("NX_CACHE_DOWNLOAD", "proxy")]] {
            each_fault_leaves_the_build_green(front, settings, mode, &workspace, &token);
        }

        // An outage that starts a second before the run, on the instance that stored the
        // entries (it knows them all, so no existence check stands between a GET and the
        // failing read). The second is the scenario's timing, not a synchronisation.
        front.heal();
        workspace.forget_local_results(&writer.base_url);
        front.outage(true);
        std::thread::sleep(Duration::from_secs(1));
        let (ok, output) = workspace.build(&writer.base_url, Some(&token));
        assert!(ok, "an outage must not fail the build:\n{output}");
        assert_eq!(remote_hits(&output), 0, "{output}");
        assert!(
            workspace.outputs().keys().eq(built.keys()),
            "every output is there, built again"
        );
        let gets: Vec<String> = writer
            .logs()
            .into_iter()
            .filter(|l| l.contains("\"method\":\"GET\"") && l.contains("/v1/cache/"))
            .collect();
        assert!(
            gets.iter()
                .all(|l| l.contains("\"status\":200") || l.contains("\"status\":404")),
            "{gets:#?}"
        );
        assert!(
            gets.iter().any(|l| l.contains("storage-error")),
            "{gets:#?}"
        );
    }

    /// In proxy mode a large entry (gamma's, 6 MB) is streamed through the handler: a failure
    /// before its body is retried, and a body that breaks off is resumed where it stopped.
    #[test]
    fn in_proxy_mode_large_entries_survive_storage_faults_too() {
        let storage = FaultyAzurite::start();
        let (front, settings) = (&storage.front, &storage.settings);
        let proxy = [("NX_CACHE_DOWNLOAD", "proxy")];
        let writer = Handler::start_with(settings, &proxy);
        let workspace = Workspace::new();
        let token = issue_token(&["--org"]);
        let (ok, first) = workspace.build(&writer.base_url, Some(&token));
        assert!(ok, "first build failed:\n{first}");
        each_fault_leaves_the_build_green(front, settings, &proxy, &workspace, &token);
    }

    /// For each fault of the issue's table: the first two reads of each blob fail so, on a new
    /// handler (`settings` and `mode`), which remembers nothing and holds nothing in memory, so
    /// every hit is read from storage through the front. The build is green, every task a
    /// remote hit with its outputs restored byte for byte.
    fn each_fault_leaves_the_build_green(
        front: &FaultyStorage,
        settings: &[(&str, String)],
        mode: &[(&str, &str)],
        workspace: &Workspace,
        token: &str,
    ) {
        let built = workspace.outputs();
        for fault in [
            Fault::ServerBusy,
            Fault::OperationTimedOut,
            Fault::Closed,
            Fault::HalfBody,
        ] {
            front.fail_reads(fault, 2);
            let injected = front.injected();
            let handler = Handler::start_with(settings, mode);
            workspace.forget_local_results(&handler.base_url);
            let (ok, output) = workspace.build(&handler.base_url, Some(token));
            assert!(ok, "{fault:?} {mode:?}: the build must not fail:\n{output}");
            assert_eq!(
                remote_hits(&output),
                PROJECTS.len(),
                "{fault:?} {mode:?}:\n{output}"
            );
            assert!(
                workspace.outputs() == built,
                "{fault:?} {mode:?}: outputs restored byte for byte"
            );
            assert_eq!(
                front.injected() - injected,
                2 * PROJECTS.len(),
                "{fault:?} {mode:?}: two failed reads of each entry"
            );
        }
    }
}

mod revocation {
    //! `az storage account revoke-delegation-keys` after a leak: the handler notices within one
    //! health-watch interval, gets a new key, and the next build gets every task from the cache.

    use super::*;
    use common::azurite::{Azurite, IdentityEndpoint, Tls};
    use common::revoking_proxy::RevokingProxy;

    #[test]
    fn a_revoked_delegation_key_never_aborts_the_next_build() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let tls = Tls::generate();
        let azurite = Azurite::start_oauth(&tls);
        runtime.block_on(azurite.create_container("nx-cache", Some(&tls)));
        let identity = runtime.block_on(IdentityEndpoint::start());
        let upstream = format!("https://127.0.0.1:{}", azurite.port);
        let proxy = runtime.block_on(RevokingProxy::start(&tls, &upstream));
        let ca = tls.ca_file().display().to_string();
        let handler = Handler::start_with(
            &identity.handler_env(proxy.endpoint(), "nx-cache", &tls),
            &[("NX_CACHE_HEALTH_INTERVAL", "2s")],
        );
        let workspace = Workspace::new();
        workspace.trust_ca(&ca);
        let token = issue_token(&["--org"]);
        let (ok, first) = workspace.build(&handler.base_url, Some(&token));
        assert!(ok, "first build failed:\n{first}");

        proxy.revoke_all_keys();
        handler
            .wait_for_log(Duration::from_secs(30), |l| {
                l.contains("new user delegation key are accepted")
            })
            .unwrap_or_else(|| panic!("no new key:\n{}", handler.logs().join("\n")));

        workspace.forget_local_results(&handler.base_url);
        let (ok, second) = workspace.build(&handler.base_url, Some(&token));
        assert!(
            ok,
            "the build after the revocation must not abort:\n{second}"
        );
        assert_eq!(
            remote_hits(&second),
            PROJECTS.len(),
            "every task a remote hit with the new key:\n{second}"
        );
        assert_eq!(
            proxy.refused.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "only the health probe ever met the revoked key"
        );
    }
}

mod token_lifecycle {
    //! Tokens that end while a build runs: an expiry, and a rotation of the signing secret. In
    //! both the build finishes; neither may cost a 401, which aborts an Nx run.

    use super::*;
    use common::front::Front;

    /// Each task's build takes this long, so a build of the three projects one at a time
    /// outlasts a short token or leaves time to rotate the secret.
    const SLOW_TASK_MS: &str = "6000";

    fn slow_build_env(server: &str, token: &str) -> Vec<(String, String)> {
        vec![
            ("NX_SELF_HOSTED_REMOTE_CACHE_SERVER".into(), server.into()),
            (
                "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN".into(),
                token.into(),
            ),
            ("E2E_BUILD_DELAY_MS".into(), SLOW_TASK_MS.into()),
        ]
    }

    fn one_at_a_time(workspace: &Workspace, env: &[(String, String)]) -> (bool, String) {
        workspace.nx_env(
            &[
                "run-many",
                "-t",
                "build",
                "--parallel=1",
                "--outputStyle=static",
            ],
            env,
        )
    }

    fn outcomes(handler: &Handler) -> Vec<String> {
        handler
            .logs()
            .iter()
            .filter(|l| l.contains("\"path\":\"/v1/cache/"))
            .filter_map(|l| {
                let value: serde_json::Value = serde_json::from_str(l).ok()?;
                Some(format!(
                    "{} {}",
                    value["status"],
                    value["outcome"].as_str()?
                ))
            })
            .collect()
    }

    #[test]
    fn a_build_whose_token_expires_while_it_runs_finishes() {
        // No leeway, so the token's end is exact; the grace period is the default (12h).
        let handler = Handler::start(&[("NX_CACHE_TOKEN_LEEWAY", "0s")]);
        let workspace = Workspace::new();
        // Valid for the first task's requests (even if nx is slow to start on a busy machine),
        // expired before the last task's upload (three tasks of 6 s, one at a time).
        let token = issue_token(&["--org", "--expires-in", "15s", "--subject", "short-lived"]);
        let (ok, output) = one_at_a_time(&workspace, &slow_build_env(&handler.base_url, &token));
        assert!(
            ok,
            "the build must finish although its token expired:\n{output}"
        );
        let seen = outcomes(&handler);
        assert!(
            seen.iter().any(|o| o == "404 miss"),
            "some requests came while the token was valid: {seen:?}"
        );
        assert!(
            seen.iter().any(|o| o.ends_with(" expired")),
            "some came after it expired: {seen:?}"
        );
        assert!(
            !seen.iter().any(|o| o.starts_with("401")),
            "no 401: {seen:?}"
        );
        assert!(
            handler
                .logs()
                .iter()
                .any(|l| l.contains("WARN") && l.contains("short-lived") && l.contains("expired")),
            "a warning names the subject"
        );
    }

    #[test]
    fn rotating_the_secret_under_a_running_build_costs_no_401() {
        const NEW_SECRET: &str = "the-new-secret-after-rotation-0123456789abcdefghijklmnop";
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let data = tempfile::tempdir().unwrap();
        // Before: the test secret signs and verifies; clients hold tokens signed with it.
        let old = Handler::start_in(data.path(), &[]);
        let front = runtime.block_on(Front::start(&old.base_url));
        let token = issue_token(&["--org"]);
        let workspace = Workspace::new();
        let env = slow_build_env(&front.base_url, &token);
        let build = std::thread::spawn(move || {
            let result = one_at_a_time(&workspace, &env);
            (workspace, result)
        });
        old.wait_for_log(Duration::from_secs(60), |l| {
            l.contains("\"path\":\"/v1/cache/")
        })
        .expect("the build reaches the cache");

        // The rotation: the new secret signs, the old one still verifies. The front end sends
        // the rest of the build to the new process, as Functions does after a settings change.
        let new = Handler::start_in(
            data.path(),
            &[
                ("NX_CACHE_JWT_SECRET", NEW_SECRET),
                ("NX_CACHE_JWT_PREVIOUS_SECRETS", common::TEST_SECRET),
            ],
        );
        front.switch_to(&new.base_url);
        // The old process finishes what it has in flight (SIGTERM drains), then exits.
        let mut old = old;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &old.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(old.wait_exit(Duration::from_secs(60)).is_some());

        let (workspace, (ok, output)) = build.join().unwrap();
        assert!(ok, "the build must finish across the rotation:\n{output}");
        let after = outcomes(&new);
        assert!(
            !after.is_empty(),
            "the new process served part of the build"
        );
        assert!(
            after.iter().all(|o| !o.starts_with("401")),
            "no 401 after the rotation: {after:?}"
        );
        assert_eq!(new.entries("org"), PROJECTS.len(), "every task stored once");

        // The next build hits with the old token, through the new process.
        workspace.forget_local_results(&front.base_url);
        let (ok, second) = workspace.build(&front.base_url, Some(&token));
        assert!(ok, "{second}");
        assert_eq!(remote_hits(&second), PROJECTS.len(), "{second}");

        // Without the previous secret, the same token would be a 401 (the cliff this avoids).
        let forgot = Handler::start(&[("NX_CACHE_JWT_SECRET", NEW_SECRET)]);
        let status = runtime.block_on(async {
            reqwest::Client::new()
                .get(format!("{}/v1/cache/1", forgot.base_url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status()
        });
        assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    }
}
