//! A private community mesh in one program: an owner key makes the mesh, runs its
//! bootstrap node and invites a supplier and an app; the app asks the supplier a
//! question. A stranger without an invite cannot even start a node of the mesh. In a
//! real community each of these runs on its own machine (`relaymesh mesh init`,
//! `relaymesh mesh invite`, `relaymesh node --invite`).
//!
//! ```sh
//! cargo run --example private_mesh -- SmolLM2-135M-Instruct.Q4_1.gguf "Why is the sky blue?"
//! ```

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use relaymesh::backend::embedded::{EmbeddedBackend, EmbeddedOptions};
use relaymesh::{
    make_invite, new_key, private_mesh, ChatMessage, ChatRole, GenEvent, GenRequest, MemberRole,
    Multiaddr, NodeBuilder,
};

/// Makes the mesh, serves the GGUF file `model` as `smollm2` from an invited supplier,
/// asks `question` from an invited app, and streams the answer to `out`.
pub async fn run(model: &Path, question: &str, out: &mut dyn Write) -> anyhow::Result<String> {
    let owner = new_key();
    let mesh = private_mesh("our-community", &owner);
    let loopback: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse()?;
    let day_ms = 86_400_000;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64
        + day_ms;

    // The owner's bootstrap node: its key needs no invite.
    let boot = NodeBuilder::full()
        .mesh(mesh.clone())
        .identity(owner.clone())
        .listen(vec![loopback.clone()])
        .start()
        .await?;
    let boot_addr: Multiaddr = boot
        .listen_addrs(std::time::Duration::from_secs(10))
        .await
        .first()
        .ok_or_else(|| anyhow::anyhow!("the bootstrap node listens nowhere"))?
        .parse()?;

    // A stranger is refused before it starts.
    let stranger = NodeBuilder::light()
        .mesh(mesh.clone())
        .bootstrap(boot_addr.clone())
        .start()
        .await;
    anyhow::ensure!(stranger.is_err(), "a node without an invite started");
    writeln!(out, "a stranger without an invite: refused")?;

    // An invited supplier, and an invited app (invite tokens: whoever holds one is in).
    let options = EmbeddedOptions {
        progress: false,
        ..Default::default()
    };
    let backend = EmbeddedBackend::load("smollm2", model, &options)?;
    let supplier = NodeBuilder::full()
        .mesh(mesh.clone())
        .invite(make_invite(
            &mesh,
            &owner,
            None,
            MemberRole::SUPPLIER,
            expires,
        ))
        .listen(vec![loopback.clone()])
        .bootstrap(boot_addr.clone())
        .serve(Arc::new(backend), 1)
        .map_err(anyhow::Error::msg)?
        .start()
        .await?;
    let app = NodeBuilder::light()
        .mesh(mesh.clone())
        .invite(make_invite(&mesh, &owner, None, MemberRole::APP, expires))
        .listen(vec![loopback])
        .bootstrap(boot_addr)
        .start()
        .await?;
    anyhow::ensure!(
        app.wait_for_model("smollm2", Duration::from_secs(60)).await,
        "the app never saw the supplier's model"
    );
    let question = ChatMessage {
        role: ChatRole::User,
        content: question.to_owned(),
    };
    let mut answer = String::new();
    let mut generation = app
        .generate("smollm2", GenRequest::chat(vec![question]))
        .await?;
    while let Some(event) = generation.next().await {
        match event {
            GenEvent::Text(piece) => {
                write!(out, "{piece}")?;
                answer.push_str(&piece);
            }
            GenEvent::Done(_) => break,
            GenEvent::Failed(why) => anyhow::bail!("the answer failed: {why}"),
            // Log probabilities, told only when the request asks.
            _ => {}
        }
    }
    let served_by = generation
        .provenance()
        .map(|p| p.header())
        .unwrap_or_default();
    writeln!(out, "\n[served by {served_by}, a member of our-community]")?;
    drop(generation);
    for node in [app, supplier, boot] {
        node.shutdown().await;
    }
    Ok(answer)
}

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: private_mesh GGUF_FILE [QUESTION]"))?;
    let question = args.next().unwrap_or_else(|| "Why is the sky blue?".into());
    tokio::runtime::Runtime::new()?.block_on(async {
        run(Path::new(&model), &question, &mut std::io::stdout())
            .await
            .map(drop)
    })
}
