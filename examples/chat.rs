//! An app that embeds a light node and streams a chat answer from the mesh: no HTTP
//! API, no separate process. The answer is metered as any other (a session with the
//! supplier, acks, receipts) and fails over to another supplier if the first stops.
//!
//! ```sh
//! relaymesh-bootstrap --data-dir /tmp/boot --listen /ip4/127.0.0.1/udp/4001/quic-v1
//! relaymesh node --data-dir /tmp/s --bootstrap /ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooW… \
//!     --serve smollm2=gguf:SmolLM2-135M-Instruct.Q4_1.gguf
//! cargo run --example chat -- /ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooW… smollm2 "Why is the sky blue?"
//! ```

use std::io::Write;
use std::time::Duration;

use relaymesh::{ChatMessage, ChatRole, GenEvent, GenRequest, Multiaddr, NodeBuilder};

/// Joins the mesh `mesh` through `bootstrap` as a light node, asks `model` `question`,
/// and streams the answer to `out`; returns the whole answer.
pub async fn ask(
    mesh: &str,
    bootstrap: Multiaddr,
    model: &str,
    question: &str,
    out: &mut dyn Write,
) -> anyhow::Result<String> {
    let node = NodeBuilder::light()
        .mesh_name(mesh)
        .bootstrap(bootstrap)
        .in_memory_identity()
        .start()
        .await?;
    anyhow::ensure!(
        node.wait_for_model(model, Duration::from_secs(60)).await,
        "no supplier of {model} appeared on the mesh within a minute"
    );
    let request = GenRequest::chat(vec![ChatMessage {
        role: ChatRole::User,
        content: question.to_owned(),
    }]);
    let mut answer = String::new();
    let mut generation = node.generate(model, request).await?;
    while let Some(event) = generation.next().await {
        match event {
            GenEvent::Text(piece) => {
                write!(out, "{piece}")?;
                out.flush()?;
                answer.push_str(&piece);
            }
            GenEvent::Done(finish) => {
                writeln!(
                    out,
                    "\n[{} tokens; served by {}]",
                    finish.completion_tokens,
                    generation
                        .provenance()
                        .map_or_else(|| "this node".to_owned(), |p| p.header())
                )?;
                break;
            }
            GenEvent::Failed(why) => anyhow::bail!("the answer failed: {why}"),
            // Log probabilities, told only when the request asks.
            _ => {}
        }
    }
    drop(generation);
    node.shutdown().await;
    Ok(answer)
}

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: chat BOOTSTRAP_MULTIADDR [MODEL] [QUESTION] [MESH]";
    let bootstrap = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let model = args.next().unwrap_or_else(|| "smollm2".into());
    let question = args.next().unwrap_or_else(|| "Why is the sky blue?".into());
    let mesh = args.next().unwrap_or_else(|| "public".into());
    tokio::runtime::Runtime::new()?.block_on(async {
        ask(&mesh, bootstrap, &model, &question, &mut std::io::stdout())
            .await
            .map(drop)
    })
}
