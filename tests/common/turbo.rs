//! The real turbo CLI (version pinned in `tests/e2e/package-lock.json`) on a copy of the
//! workspace template in `tests/e2e/turbo-workspace`: two packages whose `build` writes
//! `BUILD_BYTES` random bytes (in turbo.json's `env`, so it reaches the task under turbo 2's
//! strict environment mode and is part of the hash), in a git repository (turbo sends the
//! commit as `x-artifact-sha`). A remote hit is proved by turbo's run summary (`--summarize`:
//! source `REMOTE`) and by restored outputs equal byte for byte to the first run's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use super::nx::{collect_files, copy_dir};
use super::{e2e_dir, ensure_npm_tools};

pub const PACKAGES: [&str; 2] = ["alpha", "beta"];
/// Upper bound for one `turbo` invocation (its own timeouts are 30 s for reads, 60 s for
/// uploads).
pub const TURBO_LIMIT: Duration = Duration::from_secs(300);
/// The signing key of signature mode (`TURBO_REMOTE_CACHE_SIGNATURE_KEY`, at least 32 bytes).
pub const SIGNATURE_KEY: &str = "e2e-signature-key-0123456789abcdef0123456789";

/// A fresh copy of the template in a temporary directory, committed to a new git repository.
pub struct Workspace {
    dir: tempfile::TempDir,
    /// turbo's own configuration folder (`XDG_CONFIG_HOME`), empty: no saved login is sent.
    config: tempfile::TempDir,
}

/// What a `turbo run` did.
pub struct Run {
    pub ok: bool,
    pub output: String,
    /// The run summary (`--summarize`), when turbo wrote one.
    pub summary: Option<serde_json::Value>,
}

impl Run {
    /// Each task's cache status from the summary: (task id, status, source, time saved).
    pub fn tasks(&self) -> Vec<(String, String, String, u64)> {
        let summary = self.summary.as_ref().expect("a run summary (--summarize)");
        summary["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|task| {
                let cache = &task["cache"];
                (
                    task["taskId"].as_str().unwrap().to_owned(),
                    cache["status"].as_str().unwrap_or("").to_owned(),
                    cache["source"].as_str().unwrap_or("").to_owned(),
                    cache["timeSaved"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// The tasks restored from the remote cache.
    pub fn remote_hits(&self) -> usize {
        self.tasks()
            .iter()
            .filter(|(_, status, source, _)| status == "HIT" && source == "REMOTE")
            .count()
    }

    /// Lines of turbo's output that warn about the remote cache.
    pub fn cache_warnings(&self) -> Vec<&str> {
        self.output
            .lines()
            .filter(|l| l.contains("WARNING") && !l.contains("package-lock"))
            .collect()
    }
}

impl Workspace {
    /// The template, with signature mode on when `signed` (turbo.json's `remoteCache`).
    pub fn new(signed: bool) -> Workspace {
        ensure_npm_tools();
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&e2e_dir().join("turbo-workspace"), dir.path());
        if signed {
            let path = dir.path().join("turbo.json");
            let mut config: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            config["remoteCache"] = serde_json::json!({ "signature": true });
            std::fs::write(&path, config.to_string()).unwrap();
        }
        let workspace = Workspace {
            dir,
            config: tempfile::tempdir().unwrap(),
        };
        workspace.git(&["init", "-q"]);
        workspace.git(&["add", "-A"]);
        workspace.git(&["commit", "-q", "-m", "template"]);
        std::os::unix::fs::symlink(
            e2e_dir().join("node_modules"),
            workspace.root().join("node_modules"),
        )
        .unwrap();
        workspace
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The commit the workspace is at (what turbo sends as `x-artifact-sha`).
    pub fn head(&self) -> String {
        let output = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(self.root())
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    fn git(&self, args: &[&str]) {
        let status = Command::new("git")
            .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.com"])
            .args(args)
            .current_dir(self.root())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", self.config.path())
            .status()
            .expect("git must be installed to run the turbo end-to-end tests");
        assert!(status.success(), "git {args:?}");
    }

    /// `turbo run build --summarize ARGS` with exactly `env`'s remote cache variables
    /// (`TURBO_API`, `TURBO_TOKEN`, `TURBO_TEAM`, ...), as a CI job that exported them.
    pub fn build<K: AsRef<str>, V: AsRef<str>>(&self, args: &[&str], env: &[(K, V)]) -> Run {
        let runs = self.root().join(".turbo/runs");
        let _ = std::fs::remove_dir_all(&runs);
        let mut command = Command::new(self.root().join("node_modules/.bin/turbo"));
        command
            .args(["run", "build", "--summarize", "--ui=stream"])
            .args(args)
            .current_dir(self.root())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.config.path())
            .env("XDG_CONFIG_HOME", self.config.path())
            .env("TURBO_TELEMETRY_DISABLED", "1")
            .env("DO_NOT_TRACK", "1")
            .env("TURBO_NO_UPDATE_NOTIFIER", "1")
            .env("CI", "true")
            .envs(env.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(command.output());
        });
        let output = rx
            .recv_timeout(TURBO_LIMIT)
            .expect("turbo did not finish: the server must never hang a build")
            .expect("start turbo");
        let summary = std::fs::read_dir(&runs).ok().and_then(|mut files| {
            let file = files.next()?.ok()?;
            serde_json::from_slice(&std::fs::read(file.path()).ok()?).ok()
        });
        Run {
            ok: output.status.success(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
            summary,
        }
    }

    /// `turbo run build --dry=json`: what turbo's query (or its HEADs) found, per task.
    pub fn dry(&self, env: &[(&str, String)]) -> serde_json::Value {
        let run = self.build(&["--dry=json"], env);
        assert!(run.ok, "turbo --dry failed:\n{}", run.output);
        let start = run.output.find('{').expect("the dry run's JSON");
        let end = run.output.rfind('}').unwrap();
        serde_json::from_str(&run.output[start..=end]).unwrap()
    }

    /// Every package's outputs and turbo's local cache deleted: the next run starts clean.
    pub fn clean(&self) {
        let _ = std::fs::remove_dir_all(self.root().join(".turbo"));
        for package in PACKAGES {
            let dir = self.root().join("packages").join(package);
            let _ = std::fs::remove_dir_all(dir.join("dist"));
            let _ = std::fs::remove_dir_all(dir.join(".turbo"));
        }
    }

    /// Every file under the packages' `dist/` folders, with its bytes.
    pub fn outputs(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        for package in PACKAGES {
            collect_files(
                &self.root().join("packages").join(package).join("dist"),
                self.root(),
                &mut files,
            );
        }
        files
    }
}

/// The environment a CI job exports for turbo to use this cache: its URL, a token, a team.
pub fn remote(api: &str, token: &str, team: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TURBO_API", api.to_owned()),
        ("TURBO_TOKEN", token.to_owned()),
        ("TURBO_TEAM", team.to_owned()),
    ]
}
