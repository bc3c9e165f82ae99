//! The page's files: the copy compiled into the binary, or a folder (`--www DIR`);
//! and either way, socket.io's browser client for `/socket.io/socket.io.js`.
//!
//! The binary alone serves the whole page, so deploying threadchat is copying one
//! file. `--www DIR` serves a folder instead, for people editing the page: it is
//! read on every request, so a reload shows the change.
//!
//! Both ways give a file the same three things: its bytes, its Content-Type, and an
//! ETag computed from its bytes. So the headers a browser sees are identical both
//! ways, and a revalidation (`If-None-Match`, answered `304 Not Modified` in
//! [`crate::http`]) works the same. There is no `Last-Modified`: a compiled-in
//! file has no meaningful modification time, and the ETag already says exactly
//! whether the browser's copy is current.
//!
//! # Why a table of `include_bytes!`, not a crate
//!
//! The page is four files. `include_bytes!` makes the compiler track each one, so
//! editing a file under `www/` rebuilds the binary with the new page. The
//! `include_dir` crate, the usual alternative, reads the folder from a procedural
//! macro that stable Rust cannot make track files: an edited page would be served
//! stale until something else forced a rebuild. `rust-embed` tracks them but reads
//! from disk in debug builds and brings a hashing crate and a directory walker.
//! The price of the table is one line per file; a unit test compares it with the
//! folder, so a file added to `www/` and forgotten here fails `make test`.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::logging::{Noisy, Untrusted, limited};
use crate::static_files::{self, Refusal};

/// The files of `www/`, as they were when the binary was built.
const COMPILED_IN: &[(&str, &[u8])] = &[
    ("index.html", include_bytes!("../www/index.html")),
    ("app.js", include_bytes!("../www/app.js")),
    ("style.css", include_bytes!("../www/style.css")),
    ("favicon.svg", include_bytes!("../www/favicon.svg")),
];

/// socket.io's browser client (`vendor/socket.io-client/socket.io.min.js`, MIT),
/// then the lines that make `io()` connect over WebSocket
/// (`src/socketio/websocket-first.js`), compressed with `gzip -9n` as one file:
/// what `/socket.io/socket.io.js` serves, as socket.io's own server does, whichever
/// page is served. Kept and sent compressed: 15,000 bytes in the binary and on the
/// wire instead of 47,884 (a unit test checks it against the two files).
pub const SOCKET_IO_CLIENT_GZ: &[u8] = include_bytes!("../vendor/socket.io-client/socket.io.js.gz");

/// The paths socket.io's pages load the client from.
pub const SOCKET_IO_CLIENT_PATHS: [&str; 2] =
    ["/socket.io/socket.io.js", "/socket.io/socket.io.min.js"];

/// The client as an asset (its bytes gzip-compressed).
pub fn socket_io_client() -> Asset {
    Asset::new(
        Path::new("socket.io.js"),
        Cow::Borrowed(SOCKET_IO_CLIENT_GZ),
    )
}

/// Files in a folder larger than this are not served: each is read whole to hash
/// it, and every page connection may hold one in memory while it is sent, so this
/// times `--max-http` is part of the capacity plan. `www/` holds a page, not a
/// media library.
pub const MAX_FOLDER_FILE: u64 = 1024 * 1024;

/// One file ready to send.
#[derive(Debug, Clone)]
pub struct Asset {
    /// The file's bytes: borrowed from the binary, or read from the folder.
    pub bytes: Cow<'static, [u8]>,
    /// Its Content-Type header.
    pub content_type: String,
    /// Its ETag header, quotes included: the same bytes always give the same tag.
    pub etag: String,
}

impl Asset {
    fn new(relative: &Path, bytes: Cow<'static, [u8]>) -> Asset {
        Asset {
            content_type: content_type(relative),
            etag: etag(&bytes),
            bytes,
        }
    }
}

/// Why a file could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Malformed percent-encoding in the path: 400.
    BadRequest,
    /// Not an allowed path, or no such file: 404.
    NotFound,
    /// A file in the folder over [`MAX_FOLDER_FILE`]: 500, and a warning.
    TooLarge,
}

impl From<Refusal> for Unavailable {
    fn from(refusal: Refusal) -> Unavailable {
        match refusal {
            Refusal::BadRequest => Unavailable::BadRequest,
            Refusal::NotFound => Unavailable::NotFound,
        }
    }
}

/// Where the page comes from.
pub enum Page {
    /// The copy compiled into the binary, hashed once at start.
    CompiledIn(Vec<(&'static str, Asset)>),
    /// A folder, canonical, read on every request.
    Folder(PathBuf),
}

impl Page {
    /// The page compiled into the binary.
    pub fn compiled_in() -> Page {
        let files = COMPILED_IN
            .iter()
            .map(|&(name, bytes)| (name, Asset::new(Path::new(name), Cow::Borrowed(bytes))))
            .collect();
        Page::CompiledIn(files)
    }

    /// The folder given with `--www`, or else the compiled-in page.
    pub fn chosen_by(www: Option<&Path>) -> Result<Page, String> {
        www.map_or_else(|| Ok(Page::compiled_in()), Page::folder)
    }

    /// A folder to serve instead. It must exist and hold an `index.html`, or the
    /// server would start and answer every visitor with 404.
    pub fn folder(dir: &Path) -> Result<Page, String> {
        let root = dir
            .canonicalize()
            .map_err(|e| format!("--www {}: {e}", dir.display()))?;
        if !root.is_dir() {
            return Err(format!("--www {}: not a folder", dir.display()));
        }
        if !root.join("index.html").is_file() {
            return Err(format!(
                "--www {}: no index.html in it, so / would be 404",
                dir.display()
            ));
        }
        Ok(Page::Folder(root))
    }

    /// The file for the path part of a request (`/`, `/app.js`), with every rule
    /// of [`static_files`] applied either way.
    pub fn get(&self, raw_path: &str) -> Result<Asset, Unavailable> {
        match self {
            Page::CompiledIn(files) => {
                let relative = static_files::relative_path(raw_path)?;
                let name = relative.to_str().ok_or(Unavailable::NotFound)?;
                files
                    .iter()
                    .find(|(file, _)| *file == name)
                    .map(|(_, asset)| asset.clone())
                    .ok_or(Unavailable::NotFound)
            }
            Page::Folder(root) => {
                let path = static_files::resolve(root, raw_path)?;
                // One open: its size and its bytes come from the same file.
                let file = File::open(&path).map_err(|_| Unavailable::NotFound)?;
                let size = file.metadata().map_err(|_| Unavailable::NotFound)?.len();
                if size > MAX_FOLDER_FILE {
                    // Asked for by a client, as often as it likes.
                    limited!(
                        Noisy::FileTooLarge,
                        "http: {} is {size} bytes, over the {MAX_FOLDER_FILE}-byte limit for --www files",
                        Untrusted(path.display())
                    );
                    return Err(Unavailable::TooLarge);
                }
                // The file may grow between the size and the read: read no more than
                // the cap allows, and refuse it if there was more.
                let mut bytes = Vec::with_capacity(size as usize);
                file.take(MAX_FOLDER_FILE + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|_| Unavailable::NotFound)?;
                if bytes.len() as u64 > MAX_FOLDER_FILE {
                    return Err(Unavailable::TooLarge);
                }
                Ok(Asset::new(&path, Cow::Owned(bytes)))
            }
        }
    }
}

impl Page {
    /// The most bytes one answer can hold in memory: the largest compiled-in file
    /// (socket.io's client among them), or [`MAX_FOLDER_FILE`] for a folder (whose
    /// files may change).
    pub fn largest_answer(&self) -> u64 {
        let client = SOCKET_IO_CLIENT_GZ.len() as u64;
        match self {
            Page::CompiledIn(files) => files
                .iter()
                .map(|(_, asset)| asset.bytes.len() as u64)
                .fold(client, u64::max),
            Page::Folder(_) => MAX_FOLDER_FILE.max(client),
        }
    }
}

impl fmt::Display for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Page::CompiledIn(files) => write!(f, "compiled in ({} files)", files.len()),
            Page::Folder(root) => write!(f, "folder {}", root.display()),
        }
    }
}

/// The Content-Type for a file, with a charset for text so Korean and emoji arrive
/// intact whatever the browser's default.
pub fn content_type(path: &Path) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let textual = mime.type_() == mime_guess::mime::TEXT
        || matches!(mime.subtype().as_str(), "javascript" | "json");
    if textual {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

/// A strong ETag from the bytes alone: length and a 64-bit hash. The hash only has
/// to tell versions of one file apart, not resist an attacker. std's hasher may
/// change between Rust releases; then an upgraded binary's tags differ and
/// browsers fetch each file once more, which is harmless.
pub fn etag(bytes: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("\"{:x}-{:016x}\"", bytes.len(), hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compressed_client_is_the_vendored_one_and_the_websocket_default() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut gunzip = Command::new("gzip")
            .arg("-dc")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("gzip is installed");
        gunzip
            .stdin
            .take()
            .unwrap()
            .write_all(SOCKET_IO_CLIENT_GZ)
            .unwrap();
        let plain = gunzip.wait_with_output().unwrap().stdout;
        let expected = [
            include_bytes!("../vendor/socket.io-client/socket.io.min.js").as_slice(),
            include_bytes!("socketio/websocket-first.js"),
        ]
        .concat();
        assert!(
            plain == expected,
            "vendor/socket.io-client/socket.io.js.gz is stale: make it again (see its README)"
        );
    }

    #[test]
    fn the_compiled_in_table_lists_exactly_the_files_of_www() {
        let www = Path::new(env!("CARGO_MANIFEST_DIR")).join("www");
        let mut on_disk: Vec<String> = std::fs::read_dir(&www)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut compiled: Vec<String> = COMPILED_IN.iter().map(|(n, _)| n.to_string()).collect();
        compiled.sort();
        assert_eq!(
            compiled, on_disk,
            "www/ and COMPILED_IN in src/assets.rs differ"
        );
        for (name, bytes) in COMPILED_IN {
            assert_eq!(*bytes, std::fs::read(www.join(name)).unwrap(), "{name}");
        }
    }

    #[test]
    fn both_ways_give_the_same_asset() {
        let folder = Page::folder(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/www"))).unwrap();
        let compiled = Page::compiled_in();
        for path in ["/", "/index.html", "/app.js", "/style.css", "/favicon.svg"] {
            let a = compiled.get(path).unwrap();
            let b = folder.get(path).unwrap();
            assert_eq!(a.bytes, b.bytes, "{path}");
            assert_eq!(a.content_type, b.content_type, "{path}");
            assert_eq!(a.etag, b.etag, "{path}");
        }
        for path in ["/missing.js", "/../Cargo.toml", "/.git/config", "/%2e%2e/x"] {
            assert_eq!(
                compiled.get(path).unwrap_err(),
                Unavailable::NotFound,
                "{path}"
            );
            assert_eq!(
                folder.get(path).unwrap_err(),
                Unavailable::NotFound,
                "{path}"
            );
        }
        assert_eq!(compiled.get("/%zz").unwrap_err(), Unavailable::BadRequest);
    }

    #[test]
    fn etags_change_with_the_bytes() {
        assert_eq!(etag(b"hello"), etag(b"hello"));
        assert_ne!(etag(b"hello"), etag(b"hellp"));
        assert_ne!(etag(b""), etag(b"\0"));
        let tag = etag(b"hello");
        assert!(tag.starts_with("\"5-") && tag.ends_with('"'), "{tag}");
    }

    #[test]
    fn a_folder_without_an_index_is_refused() {
        let dir = std::env::temp_dir().join(format!("threadchat-noindex-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = Page::folder(&dir).err().unwrap();
        assert!(err.contains("no index.html"), "{err}");
        let err = Page::folder(&dir.join("missing")).err().unwrap();
        assert!(err.contains("--www"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn content_types_for_the_page_assets() {
        for (file, expected) in [
            ("index.html", "text/html; charset=utf-8"),
            ("app.js", "text/javascript; charset=utf-8"),
            ("style.css", "text/css; charset=utf-8"),
            ("icon.svg", "image/svg+xml"),
            ("icon.png", "image/png"),
            ("data.json", "application/json; charset=utf-8"),
            ("noext", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(file)), expected, "{file}");
        }
        assert!(content_type(Path::new("favicon.ico")).starts_with("image/"));
    }
}
