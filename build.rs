//! Embeds the git commit the binary is built from as `SLOTGATE_GIT_COMMIT`, for the
//! `software_id` record (requirements R21). A source tarball without `.git`, or a machine
//! without git, builds too: the commit is then "unknown" (the binary's SHA-256 still identifies
//! it). A build from a tree with uncommitted changes says so with a "-dirty" suffix.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SLOTGATE_GIT_COMMIT");
    let commit = std::env::var("SLOTGATE_GIT_COMMIT").ok().or_else(|| {
        let commit = git(&["rev-parse", "HEAD"])?;
        // HEAD moves with each commit and the index with each `git add`.
        if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
            println!("cargo:rerun-if-changed={dir}/HEAD");
            println!("cargo:rerun-if-changed={dir}/index");
        }
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        Some(if dirty { format!("{commit}-dirty") } else { commit })
    });
    let commit = commit.unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SLOTGATE_GIT_COMMIT={commit}");
}
