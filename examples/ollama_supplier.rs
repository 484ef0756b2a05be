//! A supplier whose model runs in an Ollama server: the node joins the mesh, advertises
//! the model, and forwards each request the mesh sends it to Ollama's API (on this
//! machine or another), metering the answer and earning for it (give it a data dir,
//! `NodeBuilder::data_dir`, to keep unclaimed receipts across restarts). Any server that
//! speaks the Ollama API works, a relaymesh node's own API included.
//!
//! ```sh
//! ollama pull llama3.2:1b
//! cargo run --example ollama_supplier -- http://127.0.0.1:11434 llama3.2:1b \
//!     /ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooW…
//! ```

use std::sync::Arc;

use relaymesh::backend::ollama::OllamaBackend;
use relaymesh::{Multiaddr, Node, NodeBuilder};

/// Starts a full node of mesh `mesh` serving Ollama's `model` at `url` as `name`,
/// listening on `listen` and joining through `bootstrap` (none: it is the first node,
/// and others join through it).
pub async fn serve(
    mesh: &str,
    listen: Vec<Multiaddr>,
    bootstrap: Option<Multiaddr>,
    url: &str,
    model: &str,
    name: &str,
) -> anyhow::Result<Node> {
    // Two generations at once, eight more waiting at most: Ollama's own defaults.
    let backend = OllamaBackend::connect(name, url, model, 2, 8).await?;
    let mut builder = NodeBuilder::full()
        .mesh_name(mesh)
        .listen(listen)
        .serve(Arc::new(backend), 1)
        .map_err(anyhow::Error::msg)?;
    if let Some(addr) = bootstrap {
        builder = builder.bootstrap(addr);
    }
    Ok(builder.start().await?)
}

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: ollama_supplier OLLAMA_URL MODEL [BOOTSTRAP_MULTIADDR] [MESH]";
    let url = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let model = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let bootstrap = args.next().map(|a| a.parse()).transpose()?;
    let mesh = args.next().unwrap_or_else(|| "public".into());
    let name = model.split(':').next().unwrap_or(&model).to_owned();
    tokio::runtime::Runtime::new()?.block_on(async {
        let listen = vec!["/ip4/0.0.0.0/udp/0/quic-v1".parse()?];
        let node = serve(&mesh, listen, bootstrap, &url, &model, &name).await?;
        println!(
            "serving {model} from {url} as {name} on mesh {mesh}, peer {}; Ctrl-C stops",
            node.handle().peer_id()
        );
        tokio::signal::ctrl_c().await?;
        node.shutdown().await;
        Ok(())
    })
}
