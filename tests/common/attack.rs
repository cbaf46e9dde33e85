//! An adversary with a real certificate: it seals feeds with any key it
//! holds and speaks the peer protocol from its own QUIC endpoint.

use std::time::Duration;

use herald::core::crypto::ChannelKey;
use herald::core::verify::{Draft, Entropy, Sealer, SealerMark, VerifiedEvent};
use herald::core::wire::{ALPN_PEER, PROTOCOL_VERSION, PeerMessage, Seal};
use herald::identity::NodeIdentity;
use herald::net;
use herald::node::peer::StreamOpen;

use super::net::Net;

pub struct Feed {
    pub key: ed25519_dalek::SigningKey,
    pub genesis: VerifiedEvent,
    pub events: Vec<VerifiedEvent>,
}

pub fn entropy(i: u8) -> Entropy {
    Entropy {
        id: *uuid::Uuid::now_v7().as_bytes(),
        nonce: [i; 24],
    }
}

/// Seals a feed named `name` with `name`'s own key and certificate.
pub fn seal_feed(net: &Net, name: &str, n: u8) -> Feed {
    let mut forger = Forger::new(net, name, name);
    let events = forger.seal(n, "mallory.says");
    Feed {
        key: forger.key.clone(),
        genesis: forger.genesis.clone(),
        events,
    }
}

/// Seals events of the feed `author` with the key and certificate of
/// `signer` (the same name: a genuine feed; another: a forgery), and can go
/// back to an earlier point to seal a second history (a fork). It writes
/// format 1 (each event signed, so each proves itself) unless made with
/// [`Forger::sealed`].
pub struct Forger {
    pub key: ed25519_dalek::SigningKey,
    pub genesis: VerifiedEvent,
    sealer: Sealer,
    sealed: u32,
    cluster: String,
}

impl Forger {
    pub fn new(net: &Net, author: &str, signer: &str) -> Forger {
        Forger::in_format(
            net,
            author,
            signer,
            herald::core::limits::FORMAT_VERSION_SIGNED,
        )
    }

    /// A forger writing format-2 events (authentic only through a seal,
    /// see [`Forger::seal_of`]).
    pub fn sealed(net: &Net, author: &str, signer: &str) -> Forger {
        Forger::in_format(
            net,
            author,
            signer,
            herald::core::limits::FORMAT_VERSION_SEALED,
        )
    }

    fn in_format(net: &Net, author: &str, signer: &str, format: u8) -> Forger {
        let keys = net.keys();
        let identity = NodeIdentity::load(
            signer,
            &keys.join(format!("{signer}.key")),
            &keys.join(format!("{signer}.crt")),
            &net.trust(),
            herald::clock::now_us(),
        )
        .expect("identity");
        let (sealer, genesis) = Sealer::new_feed(author, identity.signing_key.clone())
            .with_format(format)
            .start_feed(&identity.cert.der, entropy(0).id, herald::clock::now_us());
        Forger {
            key: identity.signing_key,
            genesis,
            sealer,
            sealed: 0,
            cluster: herald::core::checkpoint::cluster_id(&net.trust().ca_public_key()),
        }
    }

    /// The seal of the run `events[from..]` of a history `events` (genesis
    /// first), signed with this forger's key: the checkpoint of the whole
    /// history, ending with the run.
    pub fn seal_of(&self, history: &[&VerifiedEvent]) -> Seal {
        let tree = herald::core::merkle::MemoryTree::from_leaf_hashes(
            history
                .iter()
                .map(|e| herald::core::verify::leaf_of(e.hash())),
        )
        .expect("tree");
        let author = history[0].header().author.clone();
        let signer = herald::core::checkpoint::CheckpointSigner::new(
            self.cluster.clone(),
            author,
            self.key.clone(),
        );
        let note = signer
            .sign(tree.size(), tree.root())
            .expect("sign checkpoint");
        Seal {
            end: tree.size(),
            note: serde_bytes::ByteBuf::from(note.to_text().into_bytes()),
            proof: Vec::new(),
        }
    }

    /// Seals the next `n` events (each payload distinct across calls).
    pub fn seal(&mut self, n: u8, event_type: &str) -> Vec<VerifiedEvent> {
        let channel = ChannelKey::new("default", [0x5a; 32]);
        let drafts = (0..n)
            .map(|i| {
                self.sealed += 1;
                let body = format!(r#"{{"i":{}}}"#, self.sealed);
                let draft = Draft::new(event_type, 1, vec![], body.into()).expect("draft");
                (draft, &channel, entropy(i))
            })
            .collect();
        self.sealer.seal_batch(drafts, herald::clock::now_us())
    }

    /// Where the feed stands now, to come back to with [`Forger::restore`].
    pub fn mark(&self) -> SealerMark {
        self.sealer.mark()
    }

    pub fn restore(&mut self, mark: SealerMark) {
        self.sealer.restore(mark);
    }
}

/// A message as it goes on the wire: length prefix, then postcard bytes.
pub fn framed(message: &PeerMessage) -> Vec<u8> {
    let body = postcard::to_allocvec(message).unwrap();
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

pub fn events_frame(envelopes: &[&[u8]]) -> PeerMessage {
    PeerMessage::Events {
        events: envelopes
            .iter()
            .map(|e| serde_bytes::ByteBuf::from(e.to_vec()))
            .collect(),
        seals: Vec::new(),
    }
}

/// One replication connection from the adversary to its target.
pub struct Attack {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub received: tokio::sync::mpsc::UnboundedReceiver<PeerMessage>,
    _endpoint: quinn::Endpoint,
}

impl Attack {
    /// Dials `target` as `me`, opens the replication stream and says Hello.
    pub async fn open(net: &Net, me: &str, target: &str) -> Attack {
        let mut attack = Attack::connect(net, me, target).await;
        attack
            .send(&PeerMessage::Hello {
                protocol: PROTOCOL_VERSION,
                service: me.to_string(),
                heads: vec![],
            })
            .await;
        attack
    }

    /// Dials `target` as `me`, opens the replication stream and waits for
    /// the target's Hello, without saying anything itself.
    pub async fn connect(net: &Net, me: &str, target: &str) -> Attack {
        let tls = net.tls(me);
        let endpoint = net::bind_client("127.0.0.1:0".parse().unwrap()).expect("bind");
        let conn = net::connect(&endpoint, net.addrs[target], target, ALPN_PEER, &tls)
            .await
            .expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
        net::write_frame(&mut send, &StreamOpen::Replication)
            .await
            .expect("stream open");
        // Drain what the target sends, so its sends never stall on us.
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(m)) = net::read_frame::<PeerMessage>(&mut recv).await {
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
        let mut attack = Attack {
            conn,
            send,
            received,
            _endpoint: endpoint,
        };
        // The target's Hello proves it admitted us.
        let first = attack.next_message().await;
        assert!(
            matches!(&first, PeerMessage::Hello { service, .. } if service == target),
            "{first:?}"
        );
        attack
    }

    pub async fn next_message(&mut self) -> PeerMessage {
        tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await
            .expect("a message from the target in time")
            .expect("the target's stream ended")
    }

    pub async fn send(&mut self, message: &PeerMessage) {
        net::write_frame(&mut self.send, message)
            .await
            .expect("write frame");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("write raw bytes");
    }

    /// Waits for an Ack naming `feed` at `seq`.
    pub async fn wait_ack(&mut self, feed: &str, seq: u64) {
        loop {
            if let PeerMessage::Ack { heads } = self.next_message().await
                && heads.iter().any(|h| h.feed == feed && h.seq == seq)
            {
                return;
            }
        }
    }

    /// The application close code the target closed the connection with.
    pub async fn closed_with(&self) -> u64 {
        let error = tokio::time::timeout(Duration::from_secs(10), self.conn.closed())
            .await
            .expect("the target did not close the connection within 10 s");
        match error {
            quinn::ConnectionError::ApplicationClosed(close) => close.error_code.into_inner(),
            other => panic!("connection ended otherwise: {other}"),
        }
    }
}
