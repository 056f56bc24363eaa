//! End to end with the real Nx CLI (version pinned in `tests/e2e/package-lock.json`) against the
//! `handler` binary on its embedded store.
//!
//! The workspace template in `tests/e2e/workspace` has three cacheable projects whose build
//! writes random bytes, so a remote hit is proved by restored outputs equal byte for byte to the
//! first run's, after `nx reset` wiped the local cache. One project's artifact is ~6 MB, so the
//! early answers to refused uploads are exercised with a body that does not fit in one packet.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use common::{Handler, issue_token};

const PROJECTS: [&str; 3] = ["alpha", "beta", "gamma"];
/// Upper bound for one `nx` invocation; Nx 24 has no client timeout of its own.
const NX_LIMIT: Duration = Duration::from_secs(300);

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

/// Installs the pinned npm packages once (`npm ci`), unless already installed.
fn ensure_nx_installed() {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let nx = e2e_dir().join("node_modules/.bin/nx");
    if nx.exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(e2e_dir())
        .status()
        .expect("npm must be installed to run the Nx end-to-end tests");
    assert!(status.success(), "npm ci failed in tests/e2e");
    assert!(nx.exists(), "npm ci did not install the nx CLI");
}

/// A fresh copy of the workspace template in a temporary directory.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        ensure_nx_installed();
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&e2e_dir().join("workspace"), dir.path());
        std::os::unix::fs::symlink(
            e2e_dir().join("node_modules"),
            dir.path().join("node_modules"),
        )
        .unwrap();
        Workspace { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `nx` with the remote cache at `server` and the given token; returns (success, output).
    fn nx(&self, args: &[&str], server: &str, token: Option<&str>) -> (bool, String) {
        let mut command = Command::new(self.root().join("node_modules/.bin/nx"));
        command
            .args(args)
            .current_dir(self.root())
            .env_remove("NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN")
            .env("NX_SELF_HOSTED_REMOTE_CACHE_SERVER", server)
            .env("NX_DAEMON", "false")
            .env("NX_NO_CLOUD", "true")
            .env("NX_TUI", "false")
            .env("NX_SKIP_NX_CACHE", "false")
            .env("CI", "true");
        if let Some(token) = token {
            command.env("NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN", token);
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(command.output());
        });
        let output = rx
            .recv_timeout(NX_LIMIT)
            .expect("nx did not finish: the server must never hang a build")
            .expect("start nx");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    fn build(&self, server: &str, token: Option<&str>) -> (bool, String) {
        self.nx(
            &["run-many", "-t", "build", "--outputStyle=static"],
            server,
            token,
        )
    }

    /// `nx reset` (local cache gone) and every project's `dist/` deleted.
    fn forget_local_results(&self, server: &str) {
        let (ok, output) = self.nx(&["reset"], server, None);
        assert!(ok, "nx reset failed:\n{output}");
        for project in PROJECTS {
            let dist = self.root().join("packages").join(project).join("dist");
            let _ = std::fs::remove_dir_all(dist);
        }
    }

    /// Changes every project's sources, so the next run computes new hashes.
    fn touch_sources(&self, marker: &str) {
        for project in PROJECTS {
            let input = self
                .root()
                .join("packages")
                .join(project)
                .join("src/input.txt");
            let mut text = std::fs::read_to_string(&input).unwrap();
            text.push_str(marker);
            std::fs::write(input, text).unwrap();
        }
    }

    /// Every file under the projects' `dist/` folders, with its bytes.
    fn outputs(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        for project in PROJECTS {
            collect_files(
                &self.root().join("packages").join(project).join("dist"),
                self.root(),
                &mut files,
            );
        }
        files
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn collect_files(dir: &Path, root: &Path, into: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(&path, root, into);
        } else {
            into.insert(
                path.strip_prefix(root).unwrap().to_owned(),
                std::fs::read(&path).unwrap(),
            );
        }
    }
}

fn remote_hits(output: &str) -> usize {
    output
        .lines()
        .filter(|l| l.contains("[remote cache]"))
        .count()
}

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
