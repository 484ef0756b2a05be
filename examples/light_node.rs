//! Embedding a light node: join a mesh through a bootstrap node, list the models the
//! mesh offers, shut down cleanly.
//!
//! ```sh
//! relaymesh-bootstrap --data-dir /tmp/boot --listen /ip4/127.0.0.1/udp/4001/quic-v1
//! # prints /ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooW…
//! cargo run --example light_node -- /ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooW…
//! ```

use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let bootstrap = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: light_node BOOTSTRAP_MULTIADDR"))?
        .parse()?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let node = relaymesh::NodeBuilder::light()
            .bootstrap(bootstrap)
            .in_memory_identity()
            .start()
            .await?;
        println!(
            "light node {} joined; waiting for ads…",
            node.handle().peer_id()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let models = node.handle().models().await?;
        if models.is_empty() {
            println!("no models on the mesh yet");
        }
        for row in models {
            println!(
                "{:<24} served by {} ({} free slots)",
                row.name, row.supplier, row.free_slots
            );
        }
        node.shutdown().await;
        Ok(())
    })
}
