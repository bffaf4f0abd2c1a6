//! Which project a job belongs to (`JobSpec.project`): the name the coordinator keys test
//! history by, so every clone of one repository (a laptop, CI, a second checkout) shares what
//! the planner learned about its tests, whoever submits and wherever it is checked out.
//!
//! In order of preference:
//! 1. the repository's `origin` URL, normalized so that the ways of writing one remote agree
//!    (`git@host:a/b.git`, `https://user:token@host/a/b`, `ssh://git@host:22/a/b/`, all
//!    `host/a/b`): no scheme, credentials, port, `.git` or trailing slash; the host in lower
//!    case;
//! 2. else the repository's first (root) commit, `root:<id>`, which every clone has;
//! 3. else the project directory's name, `dir:<name>`.
//!
//! Git is asked through the `git` command with a short deadline: a missing git, a broken
//! repository or a hung command only moves to the next choice. Not here: where the project
//! root is (`paths::project_root`), how the coordinator builds the history key.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one git command may take.
const GIT_DEADLINE: Duration = Duration::from_secs(2);

/// The project name of the checkout at `root` (see the module docs).
pub fn identify(root: &Path) -> String {
    if let Some(url) = git(root, &["remote", "get-url", "origin"])
        .as_deref()
        .and_then(normalize_remote)
    {
        return url;
    }
    // Root commits, newest first: the last is the first commit of the history.
    if let Some(first) = git(root, &["rev-list", "--max-parents=0", "HEAD"])
        .and_then(|out| out.lines().last().map(str::to_owned))
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return format!("root:{first}");
    }
    let name = root
        .file_name()
        .map_or_else(|| "root".to_owned(), |n| n.to_string_lossy().into_owned());
    format!("dir:{name}")
}

/// A remote URL without what differs between two ways of writing it; `None` if it is empty.
pub fn normalize_remote(url: &str) -> Option<String> {
    let url = url.trim();
    let (rest, scp_like) = match url.split_once("://") {
        Some((_, rest)) => (rest, false),
        // `user@host:path` (scp-like) unless it is a local path.
        None if !url.starts_with('/') && url.split('/').next()?.contains(':') => (url, true),
        None => return Some(trim_path(url)).filter(|p| !p.is_empty()),
    };
    let (authority, path) = if scp_like {
        rest.split_once(':')?
    } else {
        rest.split_once('/').unwrap_or((rest, ""))
    };
    // Credentials, then the port.
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let path = trim_path(path);
    let host = host.to_ascii_lowercase();
    match (host.is_empty(), path.is_empty()) {
        (true, true) => None,
        (true, false) => Some(path),
        (false, true) => Some(host),
        (false, false) => Some(format!("{host}/{path}")),
    }
}

/// `path` without leading and trailing slashes and without a `.git` suffix.
fn trim_path(path: &str) -> String {
    let path = path.trim_matches('/');
    path.strip_suffix(".git")
        .unwrap_or(path)
        .trim_end_matches('/')
        .to_owned()
}

/// What `git args` printed in `dir` (trimmed), if it succeeded within [`GIT_DEADLINE`].
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let mut child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < GIT_DEADLINE => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    if !status.success() {
        return None;
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    let out = out.trim().to_owned();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_remote_written_several_ways_is_one_project() {
        for url in [
            "git@github.com:acme/widget.git",
            "https://github.com/acme/widget",
            "https://ann:ghp_secret@github.com/acme/widget.git",
            "ssh://git@GitHub.com:22/acme/widget.git/",
            "git://github.com/acme/widget/",
            "http://github.com/acme/widget.git\n",
        ] {
            assert_eq!(
                normalize_remote(url).as_deref(),
                Some("github.com/acme/widget"),
                "{url}"
            );
        }
        // The path keeps its case; local remotes stay paths.
        assert_eq!(
            normalize_remote("git@gitlab.example.org:Group/Sub/Tool.git").as_deref(),
            Some("gitlab.example.org/Group/Sub/Tool")
        );
        assert_eq!(
            normalize_remote("/srv/git/widget.git").as_deref(),
            Some("srv/git/widget")
        );
        assert_eq!(
            normalize_remote("file:///srv/git/widget.git").as_deref(),
            Some("srv/git/widget")
        );
        assert_eq!(normalize_remote("  "), None);
    }

    fn run_git(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn a_checkout_is_named_by_its_origin_else_its_first_commit_else_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("widget");
        std::fs::create_dir(&root).unwrap();
        assert_eq!(identify(&root), "dir:widget");

        run_git(&root, &["init", "-q"]);
        assert_eq!(identify(&root), "dir:widget", "no commit yet");
        run_git(&root, &["commit", "-q", "--allow-empty", "-m", "first"]);
        let first = git(&root, &["rev-parse", "HEAD"]).unwrap();
        run_git(&root, &["commit", "-q", "--allow-empty", "-m", "second"]);
        assert_eq!(identify(&root), format!("root:{first}"));

        // A clone elsewhere, under another name, is the same project.
        let clone = tmp.path().join("widget-ci");
        run_git(
            tmp.path(),
            &[
                "clone",
                "-q",
                root.to_str().unwrap(),
                clone.to_str().unwrap(),
            ],
        );
        run_git(&clone, &["remote", "remove", "origin"]);
        assert_eq!(identify(&clone), identify(&root));

        run_git(
            &root,
            &[
                "remote",
                "add",
                "origin",
                "https://ci:token@github.com/acme/widget.git",
            ],
        );
        run_git(
            &clone,
            &["remote", "add", "origin", "git@github.com:acme/widget"],
        );
        assert_eq!(identify(&root), "github.com/acme/widget");
        assert_eq!(identify(&clone), "github.com/acme/widget");
    }
}
