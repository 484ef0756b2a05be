//! Separate hosts for tests, made of Linux network namespaces: each host has its own
//! loopback and its own ports (so every node can listen on the same port, as on
//! separate machines), joined by a switch (a bridge in a namespace of its own, so the
//! test machine's own network and firewall are not touched), optionally behind a NAT
//! router (a namespace that masquerades its hosts' traffic). Interfaces are created
//! inside their namespaces, and namespaces carry the test's process id and a counter,
//! so tests run in parallel. Everything is removed on drop. Needs root, iproute2 and,
//! for NAT, nftables; [`Net::new`] says what is missing and the test skips.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static NETS: AtomicUsize = AtomicUsize::new(0);

/// Hosts on one switch; dropping it kills their processes and removes them.
pub struct Net {
    tag: String,
    switch: String,
    /// Namespaces made, the switch first.
    namespaces: Vec<String>,
    ports: usize,
    children: Vec<Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl Net {
    /// A switch for `label`'s hosts; `None`, after printing why the test skips, where
    /// namespaces cannot be made (not root, no iproute2).
    pub fn new(label: &str) -> Option<Net> {
        if !root() || !ok(Command::new("ip").args(["netns", "list"])) {
            eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
            return None;
        }
        let tag = format!(
            "rm{}-{}-{label}",
            std::process::id(),
            NETS.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            switch: format!("{tag}-sw"),
            tag,
            namespaces: Vec::new(),
            ports: 0,
            children: Vec::new(),
        };
        let switch = net.switch.clone();
        net.namespace(&switch);
        net.must(&["-n", &switch, "link", "add", "sw", "type", "bridge"]);
        net.must(&["-n", &switch, "link", "set", "sw", "up"]);
        Some(net)
    }

    /// Whether hosts behind NAT can be made here (nftables); prints why not.
    pub fn nat_available() -> bool {
        let found = ok(Command::new("nft").arg("--version"));
        if !found {
            eprintln!("SKIPPED: needs nftables (nft) to make a NAT router");
        }
        found
    }

    fn must(&self, args: &[&str]) {
        if let Err(e) = ip(args) {
            panic!("setting up the test network: {e}");
        }
    }

    fn namespace(&mut self, name: &str) {
        self.must(&["netns", "add", name]);
        self.namespaces.push(name.to_owned());
        self.must(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// A veth pair: `a_if` in namespace `a`, `b_if` in `b`, both up.
    fn wire(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        self.must(&[
            "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ]);
        self.must(&["-n", a, "link", "set", a_if, "up"]);
        self.must(&["-n", b, "link", "set", b_if, "up"]);
    }

    /// Plugs namespace `ns` into the switch as `eth0` with `addr` (`10.77.0.2/24`).
    fn plug(&mut self, ns: &str, addr: &str) {
        self.ports += 1;
        let port = format!("p{}", self.ports);
        self.wire(ns, "eth0", &self.switch.clone(), &port);
        self.must(&["-n", &self.switch, "link", "set", &port, "master", "sw"]);
        self.must(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
    }

    /// A host on the switch with address `addr` (CIDR); returns its namespace.
    pub fn host(&mut self, name: &str, addr: &str) -> String {
        let ns = format!("{}-{name}", self.tag);
        self.namespace(&ns);
        self.plug(&ns, addr);
        ns
    }

    /// A host behind a NAT router: the router is on the switch at `public` (CIDR) and
    /// masquerades the host's traffic; the host is `10.88.0.2/24` inside, its default
    /// route through the router. Returns the host's namespace.
    pub fn host_behind_nat(&mut self, name: &str, public: &str) -> String {
        let router = format!("{}-{name}-nat", self.tag);
        self.namespace(&router);
        self.plug(&router, public);
        let ns = format!("{}-{name}", self.tag);
        self.namespace(&ns);
        self.wire(&router, "inside", &ns, "eth0");
        self.must(&[
            "-n",
            &router,
            "addr",
            "add",
            "10.88.0.1/24",
            "dev",
            "inside",
        ]);
        self.must(&["-n", &ns, "addr", "add", "10.88.0.2/24", "dev", "eth0"]);
        self.must(&["-n", &ns, "route", "add", "default", "via", "10.88.0.1"]);
        let in_router = |script: &str| {
            let out = Command::new("ip")
                .args(["netns", "exec", &router, "sh", "-c", script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "setting up the NAT router ({script}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        in_router("echo 1 > /proc/sys/net/ipv4/ip_forward");
        in_router(
            "nft add table ip nat && \
             nft 'add chain ip nat post { type nat hook postrouting priority 100 ; }' && \
             nft add rule ip nat post oifname eth0 masquerade",
        );
        ns
    }

    /// Starts `program` with `args` in namespace `ns`, its stderr to `log` (or
    /// nowhere); the process is killed when the net is dropped.
    pub fn spawn(&mut self, ns: &str, program: &Path, args: &[&str], log: Option<&Path>) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => Stdio::null(),
            });
        // `ip netns exec` execs the program: the child is the program itself.
        self.children.push(cmd.spawn().unwrap());
    }

    /// Runs `f` on a thread inside namespace `ns` (sockets it opens live there, as on
    /// that host), with a tokio runtime of its own on that thread.
    pub fn within<T, F, Fut>(ns: &str, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with a valid namespace descriptor.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
        .join()
        .unwrap()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Hosts first, the switch last: deleting a namespace removes its interfaces.
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// An HTTP exchange with a node's API inside namespace `ns`: `GET` without a body,
/// `POST` with one; the status, the response's headers and its body. A request that
/// gets no answer within `timeout` is status 0.
pub fn http(
    ns: &str,
    url: &str,
    body: Option<serde_json::Value>,
    timeout: Duration,
) -> (u16, reqwest::header::HeaderMap, String) {
    let url = url.to_owned();
    Net::within(ns, move || async move {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .unwrap();
        let request = match body {
            Some(body) => client.post(&url).json(&body),
            None => client.get(&url),
        };
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                (status, headers, response.text().await.unwrap_or_default())
            }
            Err(_) => (0, Default::default(), String::new()),
        }
    })
}

/// Processes that keep every CPU busy (two per core, as a serving supplier's load
/// and more), until dropped.
pub struct Spinners(Vec<Child>);

impl Spinners {
    /// Starts them.
    pub fn start() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Spinners(
            (0..2 * cores)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .stdin(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
