//! `make cert`: a self-signed certificate and its key for https and wss on a LAN.
//!
//! Writes `cert.pem` and `key.pem` (readable by their owner only) into the folder
//! given with `--out` (default `tls/`, which git ignores), for these names:
//! `localhost`, 127.0.0.1 and ::1, this machine's host name and `<it>.local`, its
//! address on the LAN (the one a default route leaves from), and every extra name
//! or address given as an argument (the Makefile passes `hostname -I`).
//!
//! Made with rcgen, the crate the tests make their certificates with: one less
//! program to install (no `openssl`), and the same key type (ECDSA P-256) every
//! browser takes. Valid for 825 days, the most Apple's platforms accept for a
//! certificate they are told to trust.
//!
//! It refuses to replace existing files: browsers that were told to trust the
//! old certificate would stop trusting the server.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

fn main() -> ExitCode {
    let mut out = PathBuf::from("tls");
    let mut extra = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => match args.next() {
                Some(dir) => out = PathBuf::from(dir),
                None => return fail("--out needs a folder"),
            },
            "-h" | "--help" => {
                println!("usage: cert [--out FOLDER] [NAME-OR-ADDRESS...]");
                return ExitCode::SUCCESS;
            }
            _ => extra.push(arg),
        }
    }
    let (cert_path, key_path) = (out.join("cert.pem"), out.join("key.pem"));
    if cert_path.exists() || key_path.exists() {
        return fail(&format!(
            "{} already has a certificate; remove it first to make a new one (browsers that \
             trust the old one will then warn again)",
            out.display()
        ));
    }

    let names = names(extra);
    let mut params = match rcgen::CertificateParams::new(names.clone()) {
        Ok(params) => params,
        Err(e) => return fail(&format!("cannot use these names ({names:?}): {e}")),
    };
    let now = SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + Duration::from_secs(825 * 24 * 3600)).into();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "threadchat on this machine");
    let made = rcgen::KeyPair::generate().and_then(|key| Ok((params.self_signed(&key)?, key)));
    let (cert, key) = match made {
        Ok(made) => made,
        Err(e) => return fail(&format!("cannot make the certificate: {e}")),
    };
    if let Err(e) = fs::create_dir_all(&out) {
        return fail(&format!("{}: {e}", out.display()));
    }
    let written = fs::write(&cert_path, cert.pem()).and_then(|()| {
        // The key is a secret: its owner alone may read it.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)?
            .write_all(key.serialize_pem().as_bytes())
    });
    if let Err(e) = written {
        return fail(&format!("cannot write into {}: {e}", out.display()));
    }
    println!("wrote {} and {}", cert_path.display(), key_path.display());
    println!("valid for 825 days, for: {}", names.join(", "));
    println!(
        "run: threadchat --tls-cert {} --tls-key {}",
        cert_path.display(),
        key_path.display()
    );
    ExitCode::SUCCESS
}

/// Every name and address the certificate is for, without repeats.
fn names(extra: Vec<String>) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if !host.is_empty() && host != "localhost" {
        names.push(format!("{host}.local"));
        names.push(host);
    }
    // The address a default route leaves from. A UDP `connect` sends nothing; on a
    // box with no route at all it fails, and there is no such address.
    if let Some(addr) = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").and(s.local_addr()))
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
    {
        names.push(addr.to_string());
    }
    for name in extra {
        // `hostname -I` lists link-local IPv6 addresses too, which are no use in a
        // URL without their interface.
        if let Ok(IpAddr::V6(v6)) = name.parse::<IpAddr>()
            && (v6.segments()[0] & 0xffc0) == 0xfe80
        {
            continue;
        }
        names.push(name);
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn fail(message: &str) -> ExitCode {
    eprintln!("cert: {message}");
    ExitCode::FAILURE
}
