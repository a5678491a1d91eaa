//! A real etcd member (Debian's `etcd-server`) on loopback, on free ports, with a temporary data
//! dir; driven with Debian's `etcdctl` (`etcd-client`). Both come from `scripts/install.sh`.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, scratch_dir};

pub struct Etcd {
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    name: String,
    /// `--initial-cluster`; None: this member alone.
    cluster: Option<String>,
}

fn need(binary: &str, version_arg: &str, package: &str) {
    let found = Command::new(binary)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{binary}` is not installed: run scripts/install.sh --test (Debian package {package})"
    );
}

impl Etcd {
    /// Starts one member and waits until it answers (bounded).
    pub fn start() -> Etcd {
        need("etcd", "--version", "etcd-server");
        need("etcdctl", "version", "etcd-client");
        let mut e = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            dir: scratch_dir("etcd"),
            name: "test".to_owned(),
            cluster: None,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_healthy();
    }

    /// Starts the process without waiting: a cluster member answers only once a quorum is up.
    fn launch(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log");
        let child = Command::new("etcd")
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!(
                "--initial-cluster={}",
                self.cluster
                    .clone()
                    .unwrap_or_else(|| format!("{}={peer}", self.name))
            ))
            .arg("--initial-cluster-token=shardgate-test")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("etcd exited early ({status}):\n{}", self.log());
            }
            if self.ctl(&["endpoint", "health"]).status.success() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd did not become healthy within 20 s:\n{}", self.log());
    }

    /// `http://127.0.0.1:PORT`, for `gateway.etcd.host`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// Runs `etcdctl` against this member.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=5s")
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn put(&self, key: &str, value: &str) {
        self.ctl_ok(&["put", key, value]);
    }

    pub fn delete(&self, key: &str) {
        self.ctl_ok(&["del", key]);
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl_ok(&["get", key, "--print-value-only"]);
        let v = out.trim_end_matches('\n');
        (!v.is_empty()).then(|| v.to_owned())
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl_ok(&[
            "get",
            "/",
            "--prefix",
            "--keys-only",
            "--limit=1",
            "-w",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        v["header"]["revision"].as_i64().expect("revision")
    }

    /// Compacts history up to the current revision.
    pub fn compact(&self) -> i64 {
        let rev = self.revision();
        self.ctl_ok(&["compact", &rev.to_string(), "--physical"]);
        rev
    }

    /// Kills the member (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Takes the member off its client port: `f` runs against the same data on another port
    /// (clients of the usual one see etcd down), then the member comes back on the usual port.
    pub fn offline(&mut self, f: impl FnOnce(&Etcd)) {
        self.kill();
        let usual = self.client_port;
        self.client_port = free_port();
        self.spawn();
        f(self);
        self.kill();
        self.client_port = usual;
        self.spawn();
    }

    /// Starts the member again on the same ports and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A cluster of three members on loopback (Raft quorum: two), for failover.
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    pub fn start() -> EtcdCluster {
        need("etcd", "--version", "etcd-server");
        need("etcdctl", "version", "etcd-client");
        let mut members: Vec<Etcd> = (0..3)
            .map(|i| Etcd {
                child: None,
                client_port: free_port(),
                peer_port: free_port(),
                dir: scratch_dir("etcd-cluster"),
                name: format!("m{i}"),
                cluster: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.cluster = Some(initial.clone());
            m.launch();
        }
        for m in &mut members {
            m.wait_healthy();
        }
        EtcdCluster { members }
    }

    /// Every member's client URL, for `gateway.etcd.host`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    /// A member still running, to write through.
    pub fn live(&self) -> &Etcd {
        self.members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a live member")
    }

    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Writes through the live members, again while a new leader is being elected after a kill
    /// (bounded): the write must land, however long the election takes on a loaded host.
    pub fn put(&self, key: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut last = String::new();
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                let out = m.ctl(&["put", key, value]);
                if out.status.success() {
                    return;
                }
                last = String::from_utf8_lossy(&out.stderr).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "etcdctl put {key} failed on every live member for 60 s: {last}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn delete(&self, key: &str) {
        let m = self.live();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !m.ctl(&["del", key]).status.success() {
            assert!(Instant::now() < deadline, "etcdctl del {key} kept failing");
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts member `i` again; it rejoins with its data dir.
    pub fn restart(&mut self, i: usize) {
        self.members[i].spawn();
    }
}
