//! The real Nx CLI (version pinned in `tests/e2e/package-lock.json`) on a copy of the workspace
//! template in `tests/e2e/workspace`: three cacheable projects whose build writes random bytes,
//! so a remote hit is proved by restored outputs equal byte for byte to the first run's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use super::{e2e_dir, ensure_npm_tools};

pub const PROJECTS: [&str; 3] = ["alpha", "beta", "gamma"];
/// Upper bound for one `nx` invocation; Nx 24 has no client timeout of its own.
pub const NX_LIMIT: Duration = Duration::from_secs(300);

/// A fresh copy of the workspace template in a temporary directory.
pub struct Workspace {
    dir: tempfile::TempDir,
    /// A CA bundle for Nx to trust (`SSL_CERT_FILE`), for https Azurite.
    ca_file: std::cell::RefCell<Option<String>>,
}

impl Workspace {
    pub fn new() -> Workspace {
        ensure_npm_tools();
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&e2e_dir().join("workspace"), dir.path());
        std::os::unix::fs::symlink(
            e2e_dir().join("node_modules"),
            dir.path().join("node_modules"),
        )
        .unwrap();
        Workspace {
            dir,
            ca_file: Default::default(),
        }
    }

    /// A fresh copy whose `node_modules` also holds `packages`: (name, the text of its
    /// `index.js`, or `None` for a `package.json` whose main file is missing). The pinned
    /// packages are linked in one by one (not the whole folder), so that nothing is added to the
    /// shared `tests/e2e/node_modules`; Nx resolves these packages from the workspace as it
    /// resolves any installed one.
    pub fn with_packages(packages: &[(&str, Option<&str>)]) -> Workspace {
        ensure_npm_tools();
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&e2e_dir().join("workspace"), dir.path());
        let pinned = e2e_dir().join("node_modules");
        let modules = dir.path().join("node_modules");
        link_entries(&pinned, &modules);
        for (name, main) in packages {
            write_package(&modules.join(name), name, *main);
        }
        Workspace {
            dir,
            ca_file: Default::default(),
        }
    }

    pub fn trust_ca(&self, ca_file: &str) {
        *self.ca_file.borrow_mut() = Some(ca_file.to_owned());
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `nx` with the remote cache at `server` and the given token; returns (success, output).
    pub fn nx(&self, args: &[&str], server: &str, token: Option<&str>) -> (bool, String) {
        let mut env = vec![(
            "NX_SELF_HOSTED_REMOTE_CACHE_SERVER".to_string(),
            server.to_string(),
        )];
        if let Some(token) = token {
            env.push((
                "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN".to_string(),
                token.to_string(),
            ));
        }
        self.nx_env(args, &env)
    }

    /// Runs `nx` with exactly `env`'s remote-cache variables (`NX_SELF_HOSTED_REMOTE_CACHE_*`,
    /// `NX_SKIP_REMOTE_CACHE`, ...): whatever a CI snippet exported. Returns (success, output).
    pub fn nx_env(&self, args: &[&str], env: &[(String, String)]) -> (bool, String) {
        let mut command = Command::new(self.root().join("node_modules/.bin/nx"));
        command
            .args(args)
            .current_dir(self.root())
            .env_remove("NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN")
            .env_remove("NX_SELF_HOSTED_REMOTE_CACHE_SERVER")
            .env_remove("NX_SKIP_REMOTE_CACHE")
            .env("NX_DAEMON", "false")
            .env("NX_NO_CLOUD", "true")
            .env("NX_TUI", "false")
            .env("NX_SKIP_NX_CACHE", "false")
            .env("CI", "true")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(ca_file) = self.ca_file.borrow().as_deref() {
            command.env("SSL_CERT_FILE", ca_file);
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

    /// `nx run-many -t build` with `env` as [`Workspace::nx_env`] takes it.
    pub fn build_env(&self, env: &[(String, String)]) -> (bool, String) {
        self.nx_env(&["run-many", "-t", "build", "--outputStyle=static"], env)
    }

    pub fn build(&self, server: &str, token: Option<&str>) -> (bool, String) {
        self.nx(
            &["run-many", "-t", "build", "--outputStyle=static"],
            server,
            token,
        )
    }

    /// `nx reset` (local cache gone) and every project's `dist/` deleted.
    pub fn forget_local_results(&self, server: &str) {
        let (ok, output) = self.nx(&["reset"], server, None);
        assert!(ok, "nx reset failed:\n{output}");
        for project in PROJECTS {
            let dist = self.root().join("packages").join(project).join("dist");
            let _ = std::fs::remove_dir_all(dist);
        }
    }

    /// Makes `project`'s build write `bytes` random bytes, instead of the template's size.
    pub fn set_output_size(&self, project: &str, bytes: usize) {
        let path = self
            .root()
            .join("packages")
            .join(project)
            .join("project.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let command = format!("node tools/build.js packages/{project} ");
        let start = text.find(&command).expect("the template's build command") + command.len();
        let end = start + text[start..].find('"').unwrap();
        std::fs::write(&path, format!("{}{bytes}{}", &text[..start], &text[end..])).unwrap();
    }

    /// Changes every project's sources, so the next run computes new hashes.
    pub fn touch_sources(&self, marker: &str) {
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
    pub fn outputs(&self) -> BTreeMap<PathBuf, Vec<u8>> {
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

pub fn copy_dir(from: &Path, to: &Path) {
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

/// `to` as a directory of links to each entry of `from`, and scope folders (`@nx`) as directories
/// of links too, so that packages can be added to them.
fn link_entries(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let is_scope = name.to_string_lossy().starts_with('@') && entry.path().is_dir();
        if is_scope {
            link_entries(&entry.path(), &to.join(&name));
        } else {
            std::os::unix::fs::symlink(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// A package folder: `package.json` named `name` with `"main": "index.js"`, and that file when
/// `main` holds its text.
pub fn write_package(dir: &Path, name: &str, main: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    let manifest =
        format!(r#"{{"name": "{name}", "version": "0.0.0-stand-in", "main": "index.js"}}"#);
    std::fs::write(dir.join("package.json"), manifest).unwrap();
    if let Some(text) = main {
        std::fs::write(dir.join("index.js"), text).unwrap();
    }
}

pub fn collect_files(dir: &Path, root: &Path, into: &mut BTreeMap<PathBuf, Vec<u8>>) {
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

pub fn remote_hits(output: &str) -> usize {
    output
        .lines()
        .filter(|l| l.contains("[remote cache]"))
        .count()
}
