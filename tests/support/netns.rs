//! Separate hosts for tests, made of Linux network namespaces: each host has its own
//! loopback and its own ports (so every node can listen on the same port, as on
//! separate machines), joined by a switch (a bridge in a namespace of its own, so the
//! test machine's own network and firewall are not touched), optionally behind a NAT
//! router (a namespace that masquerades its hosts' traffic, as one of the kinds of NAT
//! in [`Nat`]). Interfaces are created
//! inside their namespaces, and namespaces carry the test's process id and a counter,
//! so tests run in parallel. Everything is removed on drop. Needs root, iproute2 and,
//! for NAT, nftables; [`Net::new`] says what is missing and the test skips.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static NETS: AtomicUsize = AtomicUsize::new(0);

/// How a NAT router maps a host's connections to its own address, and whom it lets in
/// (RFC 4787's terms). All four masquerade with nftables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping and filtering ("full cone"): the host's port `p`
    /// is the router's port `p` towards everyone, and anyone may send to it there
    /// (masquerade, which keeps the port, and every new inbound connection forwarded
    /// to the host). Peers can dial the host at the router's address.
    FullCone,
    /// Endpoint-independent mapping, address- and port-dependent filtering ("port
    /// restricted cone", most home routers; Linux's plain masquerade): the same
    /// router port towards everyone, but only a peer the host has sent to may answer.
    /// Two such hosts reach each other by hole punching.
    PortRestricted,
    /// Endpoint-independent mapping, address-dependent filtering ("address-restricted
    /// cone"): the same router port towards everyone, and a host the inside host has
    /// sent to may answer from any of its ports. The router remembers whom its host
    /// sent to (a dynamic set, 5 minutes) and forwards what they send to the host. A
    /// dial-back from another port of a server the host talks to gets in; a stranger
    /// does not.
    AddressRestricted,
    /// Address- and port-dependent mapping ("symmetric"; masquerade `fully-random`):
    /// every new destination gets a new random port, so the port one peer sees is of
    /// no use to another, and hole punching fails. Only a relay gets through.
    Symmetric,
}

impl Nat {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Nat::FullCone => "full cone",
            Nat::PortRestricted => "port-restricted cone",
            Nat::AddressRestricted => "address-restricted cone",
            Nat::Symmetric => "symmetric",
        }
    }

    /// The nftables commands that make a router of this kind (its public side is
    /// `eth0`, the host inside is `10.88.0.2`). Restricted routers drop what arrives
    /// unasked on their public side, as home routers do: a packet that reached the
    /// router itself (and was answered with "port unreachable") would leave a
    /// connection-tracking entry behind, and that entry would make the router give
    /// the host's next connection to the same peer another port, which no real router
    /// does and which foils every hole punch.
    fn rules(self) -> &'static str {
        match self {
            Nat::FullCone => {
                "nft add table ip nat && \
                 nft 'add chain ip nat post { type nat hook postrouting priority 100 ; }' && \
                 nft add rule ip nat post oifname eth0 masquerade && \
                 nft 'add chain ip nat pre { type nat hook prerouting priority -100 ; }' && \
                 nft add rule ip nat pre iifname eth0 dnat to 10.88.0.2"
            }
            Nat::PortRestricted => {
                "nft add table ip nat && \
                 nft 'add chain ip nat post { type nat hook postrouting priority 100 ; }' && \
                 nft add rule ip nat post oifname eth0 masquerade && \
                 nft add table ip filter && \
                 nft 'add chain ip filter input { type filter hook input priority 0 ; }' && \
                 nft add rule ip filter input iifname eth0 ct state new drop"
            }
            Nat::AddressRestricted => {
                "nft add table ip nat && \
                 nft 'add chain ip nat post { type nat hook postrouting priority 100 ; }' && \
                 nft add rule ip nat post oifname eth0 masquerade && \
                 nft 'add set ip nat sent_to { type ipv4_addr ; flags dynamic,timeout ; timeout 5m ; }' && \
                 nft 'add chain ip nat out { type filter hook forward priority 0 ; }' && \
                 nft 'add rule ip nat out oifname eth0 update @sent_to { ip daddr }' && \
                 nft 'add chain ip nat pre { type nat hook prerouting priority -100 ; }' && \
                 nft 'add rule ip nat pre iifname eth0 ip saddr @sent_to dnat to 10.88.0.2' && \
                 nft add table ip filter && \
                 nft 'add chain ip filter input { type filter hook input priority 0 ; }' && \
                 nft add rule ip filter input iifname eth0 ct state new drop"
            }
            Nat::Symmetric => {
                "nft add table ip nat && \
                 nft 'add chain ip nat post { type nat hook postrouting priority 100 ; }' && \
                 nft add rule ip nat post oifname eth0 masquerade fully-random && \
                 nft add table ip filter && \
                 nft 'add chain ip filter input { type filter hook input priority 0 ; }' && \
                 nft add rule ip filter input iifname eth0 ct state new drop"
            }
        }
    }
}

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

    /// A host behind a NAT router that masquerades it as home routers do (a
    /// port-restricted cone, [`Nat::PortRestricted`]); see [`Net::host_behind`].
    pub fn host_behind_nat(&mut self, name: &str, public: &str) -> String {
        self.host_behind(Nat::PortRestricted, name, public)
    }

    /// A host behind a NAT router of kind `nat`: the router is on the switch at
    /// `public` (CIDR); the host is `10.88.0.2/24` inside, its default route through
    /// the router. Returns the host's namespace.
    pub fn host_behind(&mut self, nat: Nat, name: &str, public: &str) -> String {
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
        in_router(nat.rules());
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

/// A node's peer id, creating its identity in `dir`.
pub fn relaymesh_id(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_relaymesh"))
        .args(["id", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "relaymesh id failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The last 25 lines of each `NAME.log` in `dir`, for a failure message.
pub fn tail_logs(dir: &Path, names: &[&str]) -> String {
    let mut text = String::new();
    for name in names {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        text.push_str(&format!("--- {name}.log (last 25 lines)\n"));
        for line in &lines[lines.len().saturating_sub(25)..] {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`
/// saying what did not happen, with the logs `names` in `logs`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    (logs, names): (&Path, &[&str]),
    check: impl FnMut() -> Option<T>,
) -> T {
    super::poll(timeout, check).unwrap_or_else(|| {
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            tail_logs(logs, names)
        )
    })
}

/// `GET` of a node's API (at `127.0.0.1:7434` in namespace `ns`) as JSON, if it answers.
pub fn api_json(ns: &str, path: &str) -> Option<serde_json::Value> {
    let (code, _, body) = http(
        ns,
        &format!("http://127.0.0.1:7434{path}"),
        None,
        Duration::from_secs(10),
    );
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}
