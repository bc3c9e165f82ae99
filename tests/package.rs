//! The Debian package, for real: install it into this machine with `dpkg -i`, start
//! the server exactly as its systemd unit would (systemd itself may not run here),
//! load the page, chat, stop it with SIGTERM, purge the package, and check that
//! nothing is left behind.
//!
//! It changes the machine (a package, a system user) and needs root and the free
//! ports 8000 and 8001, so plain `cargo test` does not run it: `make deb-test`
//! does, and CI runs that.

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use support::{Client, PATIENCE, WWW, http_get};

const UNIT: &str = "/usr/lib/systemd/system/threadchat.service";
const SETTINGS: &str = "/etc/default/threadchat";
const BINARY: &str = "/usr/bin/threadchat";
const ENABLED: &str = "/etc/systemd/system/multi-user.target.wants/threadchat.service";

/// The unit's `ProtectSystem=strict` (everything read-only but the API file
/// systems), `PrivateTmp=yes` (an empty /tmp of its own) and `ProtectHome=yes`
/// (home folders inaccessible), copied in a private mount namespace; then `$@`.
/// The remount changes this namespace's copy of `/` only.
const SANDBOX: &str = r#"set -e
mount -o remount,bind,ro /
mount -t tmpfs -o mode=1777 tmpfs /tmp
for home in /home /root /run/user; do
    if [ -d "$home" ]; then mount -t tmpfs -o ro,mode=000 tmpfs "$home"; fi
done
exec "$@""#;

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn succeeds(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `Name=value` from the `[Service]` section of a unit file.
fn unit_setting<'a>(unit: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}=");
    unit.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name}= in the unit"))
}

/// The variables of an `EnvironmentFile`, as systemd reads it: `NAME=value`
/// lines; `#` starts a comment line.
fn environment_file(path: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).is_ok()
}

fn processes_of(user: &str) -> String {
    String::from_utf8_lossy(&run("pgrep", &["-a", "-u", user]).stdout).into_owned()
}

#[test]
#[ignore = "installs a package into this machine: run by `make deb-test`, as root"]
fn the_package_installs_runs_as_its_unit_and_leaves_nothing_behind() {
    let deb = std::env::var("THREADCHAT_DEB").expect("THREADCHAT_DEB=path of the .deb");
    assert!(Path::new(&deb).is_file(), "no package at {deb}");
    assert!(
        rustix::process::geteuid().is_root(),
        "dpkg -i needs root: run `make deb-test` as root"
    );
    assert!(
        port_is_free(8000) && port_is_free(8001),
        "ports 8000 and 8001 must be free"
    );
    // A leftover from an interrupted run would make this a test of an upgrade.
    let _ = run("dpkg", &["--purge", "threadchat"]);
    let cleanup = Cleanup;

    // Install: files in place, a system user, the unit enabled but not started.
    succeeds("dpkg", &["-i", &deb]);
    for path in [BINARY, UNIT, SETTINGS] {
        assert!(Path::new(path).is_file(), "{path} not installed");
    }
    let user = succeeds("getent", &["passwd", "threadchat"]);
    let fields: Vec<&str> = user.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "a system user: {user}");
    assert!(
        fields[6].ends_with("nologin") || fields[6].ends_with("false"),
        "{user}"
    );
    assert!(
        Path::new(ENABLED).exists(),
        "the unit is enabled (multi-user.target.wants)"
    );
    assert_eq!(processes_of("threadchat"), "", "installed, not started");
    // systemd's own reading of the unit: unknown keys and a missing binary are
    // only warnings on stderr, so stderr must be empty too.
    let verify = run("systemd-analyze", &["verify", UNIT]);
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.is_empty(),
        "{complaints}"
    );
    assert!(
        port_is_free(8000) && port_is_free(8001),
        "nothing listens yet"
    );

    // Start it as the unit says: its user, its descriptor limit, no new
    // privileges, its environment file, working directory /, ExecStartPre first,
    // and its file system sandbox as far as a mount namespace can copy it.
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert_eq!(unit_setting(&unit, "User"), "threadchat");
    let nofile = unit_setting(&unit, "LimitNOFILE");
    let settings_file = unit_setting(&unit, "EnvironmentFile").trim_start_matches('-');
    assert_eq!(settings_file, SETTINGS);
    assert_eq!(unit_setting(&unit, "ProtectSystem"), "strict");
    assert_eq!(unit_setting(&unit, "PrivateTmp"), "yes");
    assert_eq!(unit_setting(&unit, "ProtectHome"), "yes");
    let as_the_unit = |command_line: &str| {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(SANDBOX)
            .arg("sandbox")
            .arg("prlimit")
            .arg(format!("--nofile={nofile}:{nofile}"))
            .args([
                "setpriv",
                "--reuid=threadchat",
                "--regid=threadchat",
                "--init-groups",
                "--no-new-privs",
                "--",
            ])
            .args(command_line.split_whitespace())
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(environment_file(settings_file))
            .stdin(Stdio::null());
        command
    };
    let check = as_the_unit(unit_setting(&unit, "ExecStartPre"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "ExecStartPre: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("configuration ok"));

    let server = as_the_unit(unit_setting(&unit, "ExecStart"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(server);
    let (lines_tx, lines) = mpsc::channel();
    let stderr = server.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = String::new();
    while !log.contains("listening: chat ws://") {
        let line = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("the server did not start:\n{log}"));
        log += &line;
        log += "\n";
    }
    assert!(log.contains("page: compiled in"), "{log}");

    // It runs as the unit's user with no new privileges, and serves the page
    // from inside the binary: nothing but /usr/bin/threadchat was installed.
    // unshare, sh, prlimit and setpriv exec in place: the child's pid is the server's.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.id())).unwrap();
    assert!(status.contains("Name:\tthreadchat"), "{status}");
    assert!(status.contains(&format!("Uid:\t{uid}\t{uid}")), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", server.id())).unwrap();
    let mount_options = |point: &str| -> Vec<String> {
        mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 5 && f[4] == point)
            .map(|f| f[5].to_string())
            .collect()
    };
    let root = mount_options("/");
    assert!(
        root.len() == 1 && root[0].split(',').any(|x| x == "ro"),
        "/ is read-only for the server: {root:?}"
    );
    assert!(!mount_options("/tmp").is_empty(), "a private /tmp");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.id())).unwrap();
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace().filter(|w| *w == nofile).count() == 2),
        "LimitNOFILE={nofile}:\n{limits}"
    );

    let page_addr: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    let page = http_get(page_addr, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.body,
        std::fs::read(format!("{WWW}/index.html")).unwrap()
    );
    assert_eq!(http_get(page_addr, "/app.js").status, 200);
    let config: serde_json::Value =
        serde_json::from_slice(&http_get(page_addr, "/config.json").body).unwrap();
    assert_eq!(config["wsPort"], 8001);

    let mut ann = Client::connect("ws://127.0.0.1:8001/");
    ann.recv_type("welcome");
    let mut bob = Client::connect("ws://127.0.0.1:8001/");
    bob.recv_type("welcome");
    ann.send_chat("ann", "hello from the package");
    let heard = bob.recv_type("message");
    assert_eq!(heard["msg"], "hello from the package");
    assert_eq!(heard["name"], "ann");

    // Stop it as systemd would: SIGTERM, then at most TimeoutStopSec.
    let stop_within: u64 = unit_setting(&unit, "TimeoutStopSec").parse().unwrap();
    let pid = rustix::process::Pid::from_raw(server.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert_eq!(ann.recv_close(), 1001);
    let exited = support::wait_for_exit(&mut server, Duration::from_secs(stop_within))
        .expect("exits within TimeoutStopSec");
    assert!(exited.success(), "{exited:?}");

    // Remove it: no files, no process, no port.
    succeeds("dpkg", &["--purge", "threadchat"]);
    for path in [BINARY, UNIT, SETTINGS, ENABLED] {
        assert!(!Path::new(path).exists(), "{path} left behind");
    }
    assert_eq!(processes_of("threadchat"), "", "nothing left running");
    assert!(port_is_free(8000) && port_is_free(8001), "ports closed");
    std::mem::forget(cleanup);
}

/// On a failed assertion: stop the server and remove the package, so that the
/// machine is as before and the next run starts clean.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = run("pkill", &["-KILL", "-u", "threadchat"]);
        let _ = run("dpkg", &["--purge", "threadchat"]);
    }
}

/// The server process, killed if the test ends early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
