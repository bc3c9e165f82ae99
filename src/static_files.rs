//! Maps a request path to a file under the `www/` folder, and to nothing else.
//!
//! # Security
//!
//! A static file server's classic hole is path traversal: `/../../etc/passwd`,
//! its percent-encoded forms (`%2e%2e`, `%2f`), Windows separators (`..\`), or a
//! symlink inside the folder that points outside it. This resolver works from an
//! allow-list rather than a list of known-bad inputs:
//!
//! 1. The raw path must start with `/`. An encoded slash (`%2f`) or backslash
//!    (`%5c`) is refused before decoding, so decoding cannot create a separator.
//! 2. After percent-decoding (malformed escapes are a 400), every segment must be
//!    non-empty, must not start with `.` (no `..`, no dotfiles) and may contain only
//!    ASCII letters, digits, `-`, `_`, `.` and `~`. That alone rules out `..`,
//!    `\`, NUL, `:` and absolute paths.
//! 3. The candidate is joined onto the canonical root and canonicalised, which
//!    resolves symlinks; it must still be inside the root and be a regular file.
//!
//! Anything that fails is "not found": a client learns nothing about what exists
//! outside the folder.

use std::path::{Path, PathBuf};

/// Why a path was not resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed percent-encoding: answer 400.
    BadRequest,
    /// Not an allowed path, not a file, or not under the root: answer 404.
    NotFound,
}

/// Resolves the path part of a request target (no query) to a file under `root`.
/// `root` must be canonical (see [`std::fs::canonicalize`]). `/` and paths ending in
/// `/` mean the folder's `index.html`.
pub fn resolve(root: &Path, raw_path: &str) -> Result<PathBuf, Refusal> {
    let relative = relative_path(raw_path)?;
    let candidate = root.join(relative);
    let real = candidate.canonicalize().map_err(|_| Refusal::NotFound)?;
    if !real.starts_with(root) || !real.is_file() {
        return Err(Refusal::NotFound);
    }
    Ok(real)
}

/// Steps 1 and 2 of the module docs: the checked relative path, without touching
/// the file system.
pub fn relative_path(raw_path: &str) -> Result<PathBuf, Refusal> {
    let rest = raw_path.strip_prefix('/').ok_or(Refusal::NotFound)?;
    let lower = rest.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(Refusal::NotFound);
    }
    let decoded = percent_decode(rest)?;
    let mut path = PathBuf::new();
    if !decoded.is_empty() {
        let without_slash = decoded.strip_suffix('/').unwrap_or(&decoded);
        for segment in without_slash.split('/') {
            check_segment(segment)?;
            path.push(segment);
        }
    }
    if decoded.is_empty() || decoded.ends_with('/') {
        // "/" or "/docs/": the folder's index page.
        path.push("index.html");
    }
    Ok(path)
}

fn check_segment(segment: &str) -> Result<(), Refusal> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~');
    if segment.is_empty() || segment.starts_with('.') || !segment.chars().all(allowed) {
        return Err(Refusal::NotFound);
    }
    Ok(())
}

/// Decodes `%XX` escapes. Invalid escapes and results that are not UTF-8 are a 400.
pub(crate) fn percent_decode(s: &str) -> Result<String, Refusal> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(Refusal::BadRequest)?;
            let hex = std::str::from_utf8(hex).map_err(|_| Refusal::BadRequest)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| Refusal::BadRequest)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Refusal::BadRequest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_resolve_relative_to_the_root() {
        assert_eq!(relative_path("/"), Ok(PathBuf::from("index.html")));
        assert_eq!(relative_path("/app.js"), Ok(PathBuf::from("app.js")));
        assert_eq!(
            relative_path("/img/logo.svg"),
            Ok(PathBuf::from("img/logo.svg"))
        );
        assert_eq!(relative_path("/img/"), Ok(PathBuf::from("img/index.html")));
        assert_eq!(relative_path("/a%2Djs"), Ok(PathBuf::from("a-js")));
    }

    #[test]
    fn every_traversal_form_is_refused() {
        for bad in [
            "/..",
            "/../Cargo.toml",
            "/img/../../etc/passwd",
            "/%2e%2e/Cargo.toml",
            "/%2E%2E/Cargo.toml",
            "/..%2fCargo.toml",
            "/%2e%2e%2fCargo.toml",
            "/..%2FCargo.toml",
            "/..\\Cargo.toml",
            "/%5c..%5cCargo.toml",
            "/img\\..\\..\\x",
            "//etc/passwd",
            "/etc//passwd",
            "etc/passwd",
            "http://host/etc/passwd",
            "/C:/Windows/win.ini",
            "/.env",
            "/.git/config",
            "/a%00b",
            "/%00",
        ] {
            assert_eq!(relative_path(bad), Err(Refusal::NotFound), "{bad}");
        }
    }

    #[test]
    fn malformed_escapes_are_a_bad_request() {
        for bad in ["/%", "/%2", "/%zz", "/%ff%fe"] {
            assert_eq!(relative_path(bad), Err(Refusal::BadRequest), "{bad}");
        }
    }

    #[test]
    fn symlinks_leaving_the_root_are_not_found() {
        let base = std::env::temp_dir().join(format!("threadchat-static-{}", std::process::id()));
        let root = base.join("www");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(base.join("secret.txt"), "secret").unwrap();
        std::fs::write(root.join("index.html"), "hello").unwrap();
        let _ = std::fs::remove_file(root.join("leak.txt"));
        std::os::unix::fs::symlink(base.join("secret.txt"), root.join("leak.txt")).unwrap();
        let root = root.canonicalize().unwrap();

        assert_eq!(resolve(&root, "/"), Ok(root.join("index.html")));
        assert_eq!(resolve(&root, "/leak.txt"), Err(Refusal::NotFound));
        assert_eq!(resolve(&root, "/missing.txt"), Err(Refusal::NotFound));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
