//! A mesh across NATs, for the NAT traversal tests and figures: a bootstrap node on a
//! "public" network (`198.51.100.0/24`) offering AutoNAT and a relay, a light gateway
//! and a supplier serving SmolLM2, each on the public network or behind a NAT router
//! of its own ([`Nat`]). Every node is a `relaymesh node` process listening on port
//! 4002 (QUIC and TCP) in its own namespace, in a mesh with five-second epochs,
//! ten-second sessions and genesis credit for the gateway, so sessions settle within
//! a minute.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::netns::{self, api_json, http, relaymesh_id, Nat, Net};

/// Port every node listens on.
pub const PORT: u16 = 4002;
/// Each node's API, on its own host's loopback.
pub const API: &str = "http://127.0.0.1:7434";
/// The logs a failure message shows.
pub const LOGS: &[&str] = &["boot", "supplier", "gateway"];

/// Where a node sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// On the public network, dialable by anyone.
    Public,
    /// Behind a NAT router of this kind.
    Behind(Nat),
}

impl Place {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Place::Public => "public",
            Place::Behind(nat) => nat.name(),
        }
    }
}

/// The running mesh; dropping it stops the nodes and removes the namespaces.
pub struct NatMesh {
    /// The hosts (dropped first: the processes die before their data dir goes).
    pub net: Net,
    /// Namespaces of the bootstrap node, the supplier and the gateway.
    pub boot: String,
    /// The supplier's namespace.
    pub sup: String,
    /// The gateway's namespace.
    pub gw: String,
    /// The supplier's peer id.
    pub supplier_id: String,
    /// The gateway's peer id.
    pub gateway_id: String,
    /// When the supplier's process was started.
    pub supplier_started: Instant,
    /// The bootstrap node's address.
    bootstrap: String,
    dir: tempfile::TempDir,
}

fn listen() -> String {
    format!("/ip4/0.0.0.0/udp/{PORT}/quic-v1,/ip4/0.0.0.0/tcp/{PORT}")
}

impl NatMesh {
    /// Starts the bootstrap node and the gateway at `gateway`, waits until the gateway
    /// is connected, then starts the supplier at `supplier`. `None` (after saying why)
    /// where namespaces or NAT routers cannot be made.
    pub fn start(label: &str, supplier: Place, gateway: Place) -> Option<NatMesh> {
        Self::start_with(label, supplier, gateway, &[])
    }

    /// [`Self::start`] with `supplier_args` added to the supplier's command line.
    pub fn start_with(
        label: &str,
        supplier: Place,
        gateway: Place,
        supplier_args: &[&str],
    ) -> Option<NatMesh> {
        let mut net = Net::new(label)?;
        if !Net::nat_available() {
            return None;
        }
        let host = |net: &mut Net, place: Place, name: &str, ip: &str| match place {
            Place::Public => net.host(name, ip),
            Place::Behind(nat) => net.host_behind(nat, name, ip),
        };
        let boot = net.host("boot", "198.51.100.1/24");
        let gw = host(&mut net, gateway, "gw", "198.51.100.3/24");
        let sup = host(&mut net, supplier, "sup", "198.51.100.2/24");

        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().to_owned();
        let data = |name: &str| logs.join(name);
        let boot_id = relaymesh_id(&data("b"));
        let supplier_id = relaymesh_id(&data("s"));
        let gateway_id = relaymesh_id(&data("g"));
        // A second gateway, which a test may start later (`add_gateway`), has credit too.
        let second_id = relaymesh_id(&data("g2"));
        let mesh_file = logs.join("mesh.toml");
        super::run_ok(
            std::process::Command::new(env!("CARGO_BIN_EXE_relaymesh"))
                .args(["mesh", "init", "--name", "nat", "--epoch-secs", "5"])
                .args(["--session-secs", "10", "--genesis"])
                .arg(format!("{gateway_id}=1000000000"))
                .arg("--genesis")
                .arg(format!("{second_id}=1000000000"))
                .arg("--out")
                .arg(&mesh_file),
            "relaymesh mesh init",
        );
        let bootstrap = format!("/ip4/198.51.100.1/udp/{PORT}/quic-v1/p2p/{boot_id}");
        let node = |dir: PathBuf, extra: &[String]| node_args(&logs, &dir, extra);
        let spawn = |net: &mut Net, ns: &str, args: Vec<String>, log: &str| {
            spawn_node(net, &logs, ns, args, log)
        };
        spawn(
            &mut net,
            &boot,
            node(data("b"), &["--relay-server".into()]),
            "boot",
        );
        spawn(
            &mut net,
            &gw,
            node(data("g"), &gateway_args(&bootstrap)),
            "gateway",
        );
        netns::wait_until(
            "the gateway connected to the bootstrap node",
            Duration::from_secs(60),
            (&logs, LOGS),
            || {
                let s = api_json(&gw, "/relaymesh/v1/status")?;
                (s["bootstrap"]["connected"].as_u64()? >= 1).then_some(())
            },
        );
        let supplier_started = Instant::now();
        let mut args = vec![
            "--bootstrap".into(),
            bootstrap.clone(),
            "--serve".into(),
            format!("smollm2=gguf:{}", super::model_path().display()),
        ];
        args.extend(supplier_args.iter().map(|a| a.to_string()));
        spawn(&mut net, &sup, node(data("s"), &args), "supplier");
        Some(NatMesh {
            net,
            boot,
            sup,
            gw,
            supplier_id,
            gateway_id,
            supplier_started,
            bootstrap,
            dir,
        })
    }

    /// Starts a second light gateway (with credit, like the first) at `place`, named
    /// `name`, its router or itself at `ip` on the public network (CIDR), and waits
    /// until it is connected to the bootstrap node: its namespace and peer id. Its log
    /// is `<name>.log`.
    pub fn add_gateway(&mut self, place: Place, name: &str, ip: &str) -> (String, String) {
        let ns = match place {
            Place::Public => self.net.host(name, ip),
            Place::Behind(nat) => self.net.host_behind(nat, name, ip),
        };
        let logs = self.dir.path().to_owned();
        let data = logs.join("g2");
        let args = node_args(&logs, &data, &gateway_args(&self.bootstrap));
        spawn_node(&mut self.net, &logs, &ns, args, name);
        netns::wait_until(
            "the second gateway connected to the bootstrap node",
            Duration::from_secs(60),
            (&logs, LOGS),
            || {
                let s = api_json(&ns, "/relaymesh/v1/status")?;
                (s["bootstrap"]["connected"].as_u64()? >= 1).then_some(())
            },
        );
        (ns, relaymesh_id(&data))
    }

    /// Where the logs are, and which, for [`netns::wait_until`].
    pub fn logs(&self) -> (&Path, &'static [&'static str]) {
        (self.dir.path(), LOGS)
    }

    /// The last lines of every node's log.
    pub fn tail(&self) -> String {
        netns::tail_logs(self.dir.path(), LOGS)
    }

    /// A chat request for `max_tokens` tokens through the gateway, served by the
    /// supplier only (the request says so): status, headers, body.
    pub fn ask(
        &self,
        max_tokens: u32,
        stream: bool,
        timeout: Duration,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        self.ask_from(&self.gw, max_tokens, stream, timeout)
    }

    /// [`Self::ask`] through the gateway in namespace `gw`.
    pub fn ask_from(
        &self,
        gw: &str,
        max_tokens: u32,
        stream: bool,
        timeout: Duration,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let body = json!({
            "model": "smollm2", "temperature": 0, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        });
        let (code, headers, text) = http_with_header(
            gw,
            &format!("{API}/v1/chat/completions"),
            body,
            ("x-relaymesh-suppliers", &self.supplier_id),
            timeout,
        );
        (code, headers, text)
    }

    /// The gateway's connection to the supplier, as `relaymesh peers` shows it.
    pub fn link(&self) -> Option<Value> {
        self.link_from(&self.gw)
    }

    /// [`Self::link`] as the gateway in namespace `gw` sees it.
    pub fn link_from(&self, gw: &str) -> Option<Value> {
        api_json(gw, "/relaymesh/v1/peers")?
            .as_array()?
            .iter()
            .find(|p| p["peer_id"] == self.supplier_id.as_str())
            .cloned()
    }
}

/// A node's arguments: data dir `dir`, port 4002, the API on its host's loopback, the
/// mesh file in `logs`, then `extra`.
fn node_args(logs: &Path, dir: &Path, extra: &[String]) -> Vec<String> {
    let mesh_file = logs.join("mesh.toml");
    let mut args: Vec<String> = [
        "node",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        &listen(),
        "--api",
        "127.0.0.1:7434",
        "--mesh-file",
        mesh_file.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend_from_slice(extra);
    args
}

/// A light gateway's extra arguments.
fn gateway_args(bootstrap: &str) -> Vec<String> {
    vec!["--light".into(), "--bootstrap".into(), bootstrap.into()]
}

/// Starts `relaymesh ARGS` in namespace `ns`, its log `<log>.log` in `logs`.
fn spawn_node(net: &mut Net, logs: &Path, ns: &str, args: Vec<String>, log: &str) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relaymesh = Path::new(env!("CARGO_BIN_EXE_relaymesh"));
    net.spawn(ns, relaymesh, &args, Some(&logs.join(format!("{log}.log"))));
}

/// A `POST` with one extra header, inside namespace `ns`.
fn http_with_header(
    ns: &str,
    url: &str,
    body: Value,
    (name, value): (&'static str, &str),
    timeout: Duration,
) -> (u16, reqwest::header::HeaderMap, String) {
    let (url, value) = (url.to_owned(), value.to_owned());
    Net::within(ns, move || async move {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .unwrap();
        match client
            .post(&url)
            .header(name, value)
            .json(&body)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                (status, headers, response.text().await.unwrap_or_default())
            }
            Err(_) => (0, Default::default(), String::new()),
        }
    })
}

/// A `GET` of the API of the node in namespace `ns`: status and body.
pub fn get(ns: &str, path: &str) -> (u16, String) {
    let (code, _, body) = http(ns, &format!("{API}{path}"), None, Duration::from_secs(10));
    (code, body)
}
