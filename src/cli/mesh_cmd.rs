//! `relaymesh mesh …`: a community mesh's parameters file, and for a private mesh its
//! owner key, invites and revocations.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use relaymesh_node::config::{GenesisEntry, MeshFile};
use relaymesh_protocol::identity::signed::Signed;
use relaymesh_protocol::membership::Role;
use relaymesh_protocol::messages::membership::{Revocation, SignedRevocation};
use relaymesh_protocol::params::MeshParams;
use relaymesh_protocol::wire::WireMessage;
use relaymesh_protocol::{BoundedVec, Digest, Keypair, PublicKey, Signer};
use serde_json::Value;

use super::node_cmd::DEFAULT_API;

#[derive(Subcommand, Debug)]
pub enum MeshCommand {
    /// Write a mesh parameters file: defaults, with the values given here. Every node
    /// of the mesh runs with `--mesh-file FILE`; the file's hash is the mesh id, so
    /// nodes with other parameters are in another mesh.
    Init {
        /// The mesh's name.
        #[arg(long)]
        name: String,
        /// Ledger epoch length in seconds [default: 300].
        #[arg(long)]
        epoch_secs: Option<u64>,
        /// Longest session in seconds [default: 1200].
        #[arg(long)]
        session_secs: Option<u64>,
        /// Genesis credit: PEER_ID=MICRO_CREDITS (repeatable).
        #[arg(long)]
        genesis: Vec<String>,
        /// Make a private mesh: only peers its owner invites may join. Writes a new
        /// owner key (mode 0600) to --owner-key, or next to --out as OUT.owner.key.
        #[arg(long)]
        private: bool,
        /// The owner key file of a private mesh (created if absent).
        #[arg(long, requires = "private")]
        owner_key: Option<PathBuf>,
        /// Where to write it (refuses to overwrite); without it, stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a mesh parameters file and print its mesh id.
    Id {
        /// The file.
        file: PathBuf,
    },
    /// Invite a peer into a private mesh: prints a one-line token that `relaymesh node
    /// --invite TOKEN` joins with, and the invite's id (what `mesh revoke` names).
    Invite {
        /// The mesh parameters file.
        #[arg(long, env = "RELAYMESH_MESH_FILE")]
        mesh_file: PathBuf,
        /// The owner key file (`mesh init --private` wrote it).
        #[arg(long)]
        owner_key: PathBuf,
        /// Admit only this peer id (`relaymesh id` prints a node's). Without it the
        /// token admits whoever presents it: keep it secret.
        #[arg(long)]
        peer: Option<String>,
        /// What the member may do: `supplier` (serve), `app` (use) or `both`.
        #[arg(long, default_value = "both")]
        role: String,
        /// How long it admits: a number with s, m, h or d (e.g. 90d).
        #[arg(long, default_value = "30d")]
        expires: String,
        /// Also write the token to this file (mode 0600).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke invites or peers of a private mesh: signs the owner's new revocation
    /// list (the old one plus these) and hands it to a running member node, which
    /// enforces it at once and gossips it to the mesh.
    Revoke {
        /// The mesh parameters file.
        #[arg(long, env = "RELAYMESH_MESH_FILE")]
        mesh_file: PathBuf,
        /// The owner key file.
        #[arg(long)]
        owner_key: PathBuf,
        /// An invite id to revoke (hex, as `mesh invite` printed it); repeatable.
        #[arg(long)]
        invite: Vec<String>,
        /// A peer id to revoke, whatever invite it holds; repeatable.
        #[arg(long)]
        peer: Vec<String>,
        /// Take these off the list instead (admit them again).
        #[arg(long)]
        restore: bool,
        /// A member node's local API.
        #[arg(long, env = "RELAYMESH_API", default_value = DEFAULT_API)]
        api: String,
    },
    /// Try an invite at the door: dial members of a private mesh presenting it, and
    /// print per address whether they admit it or why not (exit status 1 if any
    /// refuses). Nothing is joined.
    Probe {
        /// The mesh parameters file.
        #[arg(long, env = "RELAYMESH_MESH_FILE")]
        mesh_file: PathBuf,
        /// The invite to present (token or file); none presents none.
        #[arg(long)]
        invite: Option<String>,
        /// Present it as the node of this data dir (its key); without it, a new key.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A member's address ending in /p2p/PEER_ID (repeatable).
        #[arg(long, required = true)]
        dial: Vec<libp2p::Multiaddr>,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: MeshCommand) -> anyhow::Result<()> {
    match command {
        MeshCommand::Init {
            name,
            epoch_secs,
            session_secs,
            genesis,
            private,
            owner_key,
            out,
        } => {
            let owner = private.then(|| owner_key_path(owner_key, out.as_deref()));
            init(
                &name,
                epoch_secs,
                session_secs,
                &genesis,
                owner,
                out.as_deref(),
            )
        }
        MeshCommand::Id { file } => MeshFile::load(&file)
            .map(|p| println!("{}", p.mesh_id().to_hex()))
            .map_err(|e| anyhow!(e)),
        MeshCommand::Invite {
            mesh_file,
            owner_key,
            peer,
            role,
            expires,
            out,
        } => invite(
            &mesh_file,
            &owner_key,
            peer,
            &role,
            &expires,
            out.as_deref(),
        ),
        MeshCommand::Revoke {
            mesh_file,
            owner_key,
            invite,
            peer,
            restore,
            api,
        } => revoke(&mesh_file, &owner_key, &invite, &peer, restore, &api),
        MeshCommand::Probe {
            mesh_file,
            invite,
            data_dir,
            dial,
            json,
        } => probe(
            &mesh_file,
            invite.as_deref(),
            data_dir.as_deref(),
            &dial,
            json,
        ),
    }
}

fn probe(
    mesh_file: &Path,
    invite: Option<&str>,
    data_dir: Option<&Path>,
    dial: &[libp2p::Multiaddr],
    json: bool,
) -> anyhow::Result<()> {
    let params = MeshFile::load(mesh_file).map_err(|e| anyhow!(e))?;
    let invite = invite
        .map(relaymesh_node::mesh::membership::read_invite)
        .transpose()
        .map_err(|e| anyhow!(e))?;
    let key = match data_dir {
        Some(dir) => relaymesh_node::store::load_or_create_identity(dir, || {
            Keypair::generate(&mut rand_core::OsRng)
        })?,
        None => Keypair::generate(&mut rand_core::OsRng),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let results = runtime
        .block_on(relaymesh_node::mesh::join_probe::probe(
            &params,
            &key,
            invite,
            dial,
            std::time::Duration::from_secs(15),
        ))
        .map_err(|e| anyhow!(e))?;
    let refused = results.iter().filter(|(_, r)| r.is_err()).count();
    if json {
        let rows: Vec<Value> = results
            .iter()
            .map(|(addr, r)| match r {
                Ok(()) => serde_json::json!({ "address": addr.to_string(), "admitted": true }),
                Err(why) => serde_json::json!({ "address": addr.to_string(), "admitted": false, "reason": why }),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "peer_id": key.public_key().peer_id(), "results": rows })
            )?
        );
    } else {
        for (addr, r) in &results {
            match r {
                Ok(()) => println!("{addr}: admitted"),
                Err(why) => println!("{addr}: refused: {why}"),
            }
        }
    }
    if refused > 0 {
        return Err(anyhow!("{refused} of {} refused the invite", results.len()));
    }
    Ok(())
}

/// Where a new mesh's owner key goes: as given, next to the mesh file, or here.
fn owner_key_path(given: Option<PathBuf>, out: Option<&Path>) -> PathBuf {
    given.unwrap_or_else(|| match out {
        Some(out) => {
            let mut name = out.as_os_str().to_owned();
            name.push(".owner.key");
            PathBuf::from(name)
        }
        None => PathBuf::from("mesh.owner.key"),
    })
}

fn init(
    name: &str,
    epoch_secs: Option<u64>,
    session_secs: Option<u64>,
    genesis: &[String],
    owner_key: Option<PathBuf>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let mut file = MeshFile::from_params(&relaymesh_node::config::named_mesh(name));
    if let Some(secs) = epoch_secs {
        file.epoch_secs = secs;
    }
    if let Some(secs) = session_secs {
        file.max_session_secs = secs;
    }
    // Sessions must be claimable before their epoch freezes: the horizon grows to fit
    // the epoch and session lengths given (never below the default).
    let epoch_ms = file.epoch_secs.max(1) * 1000;
    let needed_ms = file.max_session_secs * 1000
        + file.max_clock_skew_ms
        + (2 * epoch_ms).max(10_000)
        + epoch_ms;
    let fits = u32::try_from(needed_ms.div_ceil(epoch_ms) + 1).unwrap_or(u32::MAX);
    file.freeze_horizon_epochs = file.freeze_horizon_epochs.max(fits);
    for g in genesis {
        let (account, amount) = g
            .split_once('=')
            .ok_or_else(|| anyhow!("--genesis {g:?}: expected PEER_ID=MICRO_CREDITS"))?;
        file.genesis.push(GenesisEntry {
            account: account.trim().to_owned(),
            amount: amount
                .trim()
                .parse()
                .map_err(|_| anyhow!("--genesis {g:?}: the amount is not a number"))?,
        });
    }
    if let Some(path) = &owner_key {
        let key = match relaymesh_node::store::read_key_file(path) {
            Ok(key) => key,
            Err(_) if !path.exists() => {
                let key = Keypair::generate(&mut rand_core::OsRng);
                relaymesh_node::store::write_key_file(path, &key)?;
                eprintln!(
                    "wrote the owner key {} (keep it safe and private: whoever holds it admits peers to the mesh)",
                    path.display()
                );
                key
            }
            Err(e) => return Err(e.into()),
        };
        file.owners.push(key.public_key().peer_id());
    }
    let params = file.to_params().map_err(|e| anyhow!(e))?;
    let text = format!(
        "# relaymesh mesh parameters; mesh id {}\n{}",
        params.mesh_id().to_hex(),
        file.to_toml()
    );
    match out {
        None => print!("{text}"),
        Some(path) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
            f.write_all(text.as_bytes())?;
            eprintln!(
                "wrote {} (mesh id {})",
                path.display(),
                params.mesh_id().to_hex()
            );
        }
    }
    Ok(())
}

/// The mesh file and the owner key, checked to belong together.
fn owner_of(mesh_file: &Path, owner_key: &Path) -> anyhow::Result<(MeshParams, Keypair)> {
    let params = MeshFile::load(mesh_file).map_err(|e| anyhow!(e))?;
    let key = relaymesh_node::store::read_key_file(owner_key)?;
    if !params.is_private() {
        return Err(anyhow!(
            "{} describes a public mesh (no owners): make a private one with `relaymesh mesh init --private`",
            mesh_file.display()
        ));
    }
    if !params.is_owner(&key.public_key()) {
        return Err(anyhow!(
            "{} is not an owner key of the mesh in {} (its owners: {})",
            owner_key.display(),
            mesh_file.display(),
            params
                .owners
                .iter()
                .map(|o| o.peer_id())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok((params, key))
}

/// `90d`, `12h`, `30m`, `45s` as milliseconds.
fn duration_ms(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let scale = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(anyhow!(
                "--expires {text:?}: expected a number and s, m, h or d"
            ))
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| anyhow!("--expires {text:?}: expected a number and s, m, h or d"))?;
    n.checked_mul(scale)
        .filter(|ms| *ms > 0)
        .ok_or_else(|| anyhow!("--expires {text:?}: out of range"))
}

fn invite(
    mesh_file: &Path,
    owner_key: &Path,
    peer: Option<String>,
    role: &str,
    expires: &str,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let (params, owner) = owner_of(mesh_file, owner_key)?;
    let role = Role::parse(role)
        .ok_or_else(|| anyhow!("--role {role:?}: expected supplier, app or both"))?;
    let peer = peer
        .map(|p| {
            PublicKey::from_peer_id(&p).ok_or_else(|| anyhow!("--peer {p:?} is not a peer id"))
        })
        .transpose()?;
    let expires_ms = relaymesh_node::mesh::now_ms().saturating_add(duration_ms(expires)?);
    let invite =
        relaymesh_node::mesh::membership::make_invite(&params, &owner, peer, role, expires_ms);
    let token = invite.to_token();
    if let Some(path) = out {
        relaymesh_node::store::write_private_file(path, format!("{token}\n").as_bytes())?;
    }
    println!("{token}");
    eprintln!(
        "invite {} to mesh {}: role {role}, {}, expires at {expires_ms} (unix ms); join with `relaymesh node --mesh-file {} --invite TOKEN` (the node keeps it in its data dir)",
        invite.invite.body.id.to_hex(),
        params.name.as_str(),
        match peer {
            Some(k) => format!("for peer {} only", k.peer_id()),
            None => "for whoever holds the token (keep it secret)".to_string(),
        },
        mesh_file.display()
    );
    Ok(())
}

fn revoke(
    mesh_file: &Path,
    owner_key: &Path,
    invites: &[String],
    peers: &[String],
    restore: bool,
    api: &str,
) -> anyhow::Result<()> {
    let (params, owner) = owner_of(mesh_file, owner_key)?;
    if invites.is_empty() && peers.is_empty() {
        return Err(anyhow!(
            "name what to revoke: --invite ID or --peer PEER_ID"
        ));
    }
    let invites: Vec<Digest> = invites
        .iter()
        .map(|i| {
            Digest::from_hex(i).ok_or_else(|| anyhow!("--invite {i:?}: expected 64 hex digits"))
        })
        .collect::<anyhow::Result<_>>()?;
    let peers: Vec<PublicKey> = peers
        .iter()
        .map(|p| PublicKey::from_peer_id(p).ok_or_else(|| anyhow!("--peer {p:?} is not a peer id")))
        .collect::<anyhow::Result<_>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let unreachable = || {
        format!(
            "no relaymesh node answers at {api} (is a member node running? --api sets the address)"
        )
    };
    // The owner's list as the mesh holds it: the new one extends it.
    let held: Value = runtime.block_on(async {
        let response = reqwest::get(format!("http://{api}/relaymesh/v1/membership"))
            .await
            .with_context(unreachable)?;
        response.json().await.context("the API did not answer JSON")
    })?;
    if held["private"] != Value::Bool(true) {
        return Err(anyhow!("the node at {api} is not in a private mesh"));
    }
    let current = held["revocations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["signed"].as_str())
        .filter_map(|h| hex::decode(h).ok())
        .filter_map(|b| SignedRevocation::decode(&b).ok())
        .find(|l| l.body.owner == owner.public_key() && l.body.mesh_id == params.mesh_id());
    // The node's word is not taken: only a list this owner signed is extended.
    if let Some(list) = &current {
        list.verify(&owner.public_key(), &relaymesh_protocol::Ed25519Verifier)
            .map_err(|_| anyhow!("the node at {api} hands out a revocation list in this owner's name that the owner did not sign; use another member"))?;
    }
    let (mut list_invites, mut list_peers, seq) = match current {
        Some(l) => (
            l.body.invites.into_vec(),
            l.body.peers.into_vec(),
            l.body.seq,
        ),
        None => (Vec::new(), Vec::new(), 0),
    };
    if restore {
        list_invites.retain(|i| !invites.contains(i));
        list_peers.retain(|p| !peers.contains(p));
    } else {
        for invite in invites {
            if !list_invites.contains(&invite) {
                list_invites.push(invite);
            }
        }
        for peer in peers {
            if !list_peers.contains(&peer) {
                list_peers.push(peer);
            }
        }
    }
    let list = Signed::sign(
        Revocation {
            version: relaymesh_protocol::PROTOCOL_VERSION,
            mesh_id: params.mesh_id(),
            owner: owner.public_key(),
            seq: seq
                .checked_add(1)
                .ok_or_else(|| anyhow!("the owner's list has the highest sequence number"))?,
            invites: BoundedVec::try_from_vec(list_invites)
                .map_err(|e| anyhow!("revoked invites: {e}"))?,
            peers: BoundedVec::try_from_vec(list_peers)
                .map_err(|e| anyhow!("revoked peers: {e}"))?,
        },
        &owner,
    );
    let answer: Value = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("http://{api}/relaymesh/v1/revocations"))
            .json(&serde_json::json!({ "revocation": hex::encode(list.encode()?) }))
            .send()
            .await
            .with_context(unreachable)?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .context("the API did not answer JSON")?;
        if !status.is_success() {
            return Err(anyhow!("revocation refused: {}", body["error"]["message"]));
        }
        Ok(body)
    })?;
    if answer["new"] != Value::Bool(true) {
        return Err(anyhow!(
            "the node at {api} holds a newer list of this owner than it showed; run the command again"
        ));
    }
    println!(
        "revocation list {} of owner {} enforced by {api} and gossiped: {} invites and {} peers revoked",
        list.body.seq,
        owner.public_key().peer_id(),
        list.body.invites.len(),
        list.body.peers.len()
    );
    Ok(())
}
