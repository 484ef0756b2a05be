//! mDNS discovery on a LAN, tested only inside network namespaces this test creates
//! (mDNS multicasts on real interfaces): two namespaces joined by a veth pair, a
//! supplier in one, a light node in the other, no bootstrap. Needs root and iproute2;
//! elsewhere it says so and passes vacuously.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Lan {
    namespaces: [String; 2],
    nodes: Vec<Child>,
}

impl Drop for Lan {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn in_ns(ns: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_relaymesh")]);
    cmd
}

#[test]
fn nodes_on_a_lan_find_each_other_with_mdns() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !root || !ip(&["netns", "list"]) {
        eprintln!("SKIPPED: needs root and iproute2 to create network namespaces");
        return;
    }
    let tag = std::process::id() % 100_000;
    let (a, b) = (format!("rm{tag}a"), format!("rm{tag}b"));
    let mut lan = Lan {
        namespaces: [a.clone(), b.clone()],
        nodes: Vec::new(),
    };
    let (va, vb) = (format!("rv{tag}a"), format!("rv{tag}b"));
    let steps: Vec<Vec<&str>> = vec![
        vec!["netns", "add", &a],
        vec!["netns", "add", &b],
        vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
        vec!["link", "set", &va, "netns", &a],
        vec!["link", "set", &vb, "netns", &b],
        vec!["-n", &a, "addr", "add", "10.251.0.1/24", "dev", &va],
        vec!["-n", &b, "addr", "add", "10.251.0.2/24", "dev", &vb],
        vec!["-n", &a, "link", "set", &va, "up"],
        vec!["-n", &b, "link", "set", &vb, "up"],
        vec!["-n", &a, "link", "set", "lo", "up"],
        vec!["-n", &b, "link", "set", "lo", "up"],
    ];
    for step in &steps {
        assert!(ip(step), "ip {step:?} failed");
    }
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    lan.nodes.push(
        in_ns(&a)
            .args([
                "node",
                "--mdns",
                "--listen",
                "/ip4/0.0.0.0/tcp/0",
                "--api",
                "127.0.0.1:7434",
                "--advertise",
                "lan-model",
                "--data-dir",
            ])
            .arg(dirs[0].path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    lan.nodes.push(
        in_ns(&b)
            .args([
                "node",
                "--mdns",
                "--light",
                "--listen",
                "/ip4/0.0.0.0/tcp/0",
                "--api",
                "127.0.0.1:7434",
                "--data-dir",
            ])
            .arg(dirs[1].path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Each namespace has its own loopback, so both APIs use the same port.
    let found = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        in_ns(&b)
            .args(["models", "--api", "127.0.0.1:7434"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("lan-model"))
    });
    assert!(
        found,
        "the light node never saw the supplier's model through mDNS"
    );
}
