//! docs/PROTOCOL.md, pinned: the exact postcard bytes of the query and
//! replication messages as the document lays them out, and what a client
//! offering an unknown ALPN really gets from a running node. (The accepting
//! side's `Hello` order is pinned by `Attack::connect` in `tests/cluster.rs`,
//! which waits for the node's `Hello` without sending its own.)

mod common;

use common::net::Net;
use herald::core::query::{
    QUERY_RESULT_TAG, QueryRequest, QueryResultBody, QueryStatus, SignedQueryResult,
    result_signing_message,
};
use herald::core::wire::{ALPN_PEER, FeedPosition, PeerMessage, Seal};
use herald::net::{self, NetError};
use herald::node::Node;
use herald::node::peer::StreamOpen;

/// A UUID v7, for the request id.
const ID: [u8; 16] = [
    0x01, 0x90, 0xf3, 0xa0, 0x00, 0x00, 0x70, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
];
const ID_HEX: &str = "0190f3a0000070008000000000000001";

fn hex_of(parts: &[&str]) -> Vec<u8> {
    hex::decode(parts.concat()).expect("hex")
}

/// PROTOCOL.md section 5: `StreamOpen::Query` is variant 1, then the
/// request's fields in order: id (16 raw bytes), caller, target,
/// query_type, correlation_id (varint length + UTF-8 each), payload (varint
/// length + bytes), timeout_ms (varint).
#[test]
fn a_query_request_is_encoded_as_documented() {
    let request = QueryRequest {
        id: ID,
        caller: "a".into(),
        target: "b".into(),
        query_type: "q.t".into(),
        correlation_id: "c".into(),
        payload: vec![0xaa, 0xbb],
        timeout_ms: 300,
    };
    let expected = hex_of(&[
        "01", // StreamOpen::Query
        ID_HEX, "0161",     // caller "a"
        "0162",     // target "b"
        "03712e74", // query_type "q.t"
        "0163",     // correlation_id "c"
        "02aabb",   // payload
        "ac02",     // timeout_ms 300
    ]);
    let bytes = postcard::to_stdvec(&StreamOpen::Query(request)).expect("encode");
    assert_eq!(hex::encode(&bytes), hex::encode(&expected));
    assert_eq!(
        postcard::to_stdvec(&StreamOpen::Replication).expect("encode"),
        [0x00]
    );
}

/// PROTOCOL.md section 5: `SignedQueryResult` is the body as a byte string
/// (varint length + bytes) and the signature as `40` + 64 bytes; the body is
/// `QueryResultBody`'s fields in order; the statuses are variant indices 0
/// to 5; the signed message is the 23-byte tag and SHA-256 of the body.
#[test]
fn a_signed_query_result_is_encoded_as_documented() {
    let body = QueryResultBody {
        request_id: ID,
        responder: "b".into(),
        caller: "a".into(),
        query_type: "q.t".into(),
        correlation_id: "c".into(),
        status: QueryStatus::Error,
        payload: b"z".to_vec(),
        timestamp_us: 1,
    };
    let body_bytes = postcard::to_stdvec(&body).expect("encode");
    let expected_body = hex_of(&[
        ID_HEX, "0162", // responder "b"
        "0161", // caller "a"
        "03712e74", "0163", "02",   // status Error
        "017a", // payload "z"
        "01",   // timestamp_us 1
    ]);
    assert_eq!(hex::encode(&body_bytes), hex::encode(&expected_body));
    let signed = SignedQueryResult {
        body: body_bytes.clone(),
        signature: [0x5a; 64],
    };
    let mut expected = vec![body_bytes.len() as u8];
    expected.extend_from_slice(&body_bytes);
    expected.push(0x40);
    expected.extend_from_slice(&[0x5a; 64]);
    assert_eq!(postcard::to_stdvec(&signed).expect("encode"), expected);

    for (i, status) in [
        QueryStatus::Success,
        QueryStatus::NotFound,
        QueryStatus::Error,
        QueryStatus::NoHandler,
        QueryStatus::Timeout,
        QueryStatus::Unreachable,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(postcard::to_stdvec(&status).expect("encode"), [i as u8]);
    }

    assert_eq!(QUERY_RESULT_TAG, b"herald/v1/query-result\0");
    let message = result_signing_message(&body_bytes);
    assert_eq!(message.len(), 23 + 32);
    assert_eq!(&message[..23], QUERY_RESULT_TAG);
}

/// PROTOCOL.md section 3: `Hello` is variant 0, `protocol` (varint),
/// `service`, then the positions: varint count, each `feed` (varint length
/// + UTF-8), `seq` (varint) and `hash` (32 raw bytes).
#[test]
fn hello_and_its_feed_positions_are_encoded_as_documented() {
    let hello = PeerMessage::Hello {
        protocol: 3,
        service: "a".into(),
        heads: vec![FeedPosition {
            feed: "b".into(),
            seq: 200,
            hash: [0x11; 32],
        }],
    };
    let expected = hex_of(&[
        "00",   // Hello
        "03",   // protocol 3
        "0161", // service "a"
        "01",   // one position
        "0162", // feed "b"
        "c801", // seq 200
        &"11".repeat(32),
    ]);
    assert_eq!(
        hex::encode(postcard::to_stdvec(&hello).expect("encode")),
        hex::encode(expected)
    );
}

/// PROTOCOL.md section 3: `Events` carries its envelopes and then its
/// seals, each `end`, `note` and `proof` in that order.
#[test]
fn events_and_their_seals_are_encoded_as_documented() {
    let events = PeerMessage::Events {
        events: vec![serde_bytes::ByteBuf::from(b"e".to_vec())],
        seals: vec![Seal {
            end: 300,
            note: serde_bytes::ByteBuf::from(b"n".to_vec()),
            proof: vec![[0x44; 32]],
        }],
    };
    assert_eq!(
        hex::encode(postcard::to_stdvec(&events).expect("encode")),
        hex::encode(hex_of(&[
            "01",   // Events
            "01",   // one envelope
            "0165", // "e"
            "01",   // one seal
            "ac02", // end 300
            "016e", // note "n"
            "01",   // one proof hash
            &"44".repeat(32),
        ]))
    );
}

/// PROTOCOL.md section 3: the two messages of version 2 have the indices
/// and field order the table gives.
#[test]
fn checkpoint_and_equivocation_messages_are_encoded_as_documented() {
    assert_eq!(herald::core::wire::PROTOCOL_VERSION, 3);
    let checkpoint = PeerMessage::Checkpoint {
        note: serde_bytes::ByteBuf::from(b"ab".to_vec()),
    };
    assert_eq!(
        hex::encode(postcard::to_stdvec(&checkpoint).expect("encode")),
        hex::encode(hex_of(&["04", "026162"]))
    );
    let evidence = PeerMessage::Equivocation {
        first: serde_bytes::ByteBuf::from(b"a".to_vec()),
        second: serde_bytes::ByteBuf::from(b"b".to_vec()),
        prefix_root: [0x22; 32],
        proof: vec![[0x33; 32]],
    };
    assert_eq!(
        hex::encode(postcard::to_stdvec(&evidence).expect("encode")),
        hex::encode(hex_of(&[
            "05",
            "0161",
            "0162",
            &"22".repeat(32),
            "01",
            &"33".repeat(32),
        ]))
    );
}

/// PROTOCOL.md section 1: a client offering only ALPNs the node does not
/// serve never completes the handshake. The node's TLS stack (rustls, QUIC
/// mode) sends the `no_application_protocol` alert, which QUIC carries as
/// the transport error CRYPTO_ERROR 0x0178 (RFC 9001 section 8.1); no
/// herald close code is involved. The same certificate with `herald-peer/1`
/// gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_alpn_fails_the_handshake_with_no_application_protocol() {
    // "t" sorts after "good", so t only accepts.
    let net = Net::with_peers(&["t", "good"], |me| match me {
        "t" => vec!["good".into()],
        _ => vec!["t".into()],
    });
    let t = Node::start(&net.config("t")).await.expect("start t");
    let target = net.addrs["t"];
    let good = net.tls("good");
    let endpoint = net::bind_client("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let unknown: [&'static [u8]; 2] = [b"herald-peer/2", b"h3"];
    for alpn in unknown {
        let result = net::connect(&endpoint, target, "t", alpn, &good).await;
        match result {
            Err(NetError::Handshake {
                source: quinn::ConnectionError::ConnectionClosed(close),
                ..
            }) => assert_eq!(
                u64::from(close.error_code),
                0x0178,
                "{}: {close}",
                String::from_utf8_lossy(alpn)
            ),
            other => panic!(
                "{}: expected a handshake refused with no_application_protocol, got {:?}",
                String::from_utf8_lossy(alpn),
                other.map(|_| "a connection")
            ),
        }
    }
    let conn = net::connect(&endpoint, target, "t", ALPN_PEER, &good)
        .await
        .expect("herald-peer/1 completes the handshake");
    conn.close(0u32.into(), b"done");
    t.shutdown().await;
}

/// PROTOCOL.md section 6: `ClientRequest::Reload` is the single byte 05;
/// `ClientResponse::Reloaded` is 06 and the report's JSON as a string.
#[test]
fn the_reload_request_and_answer_are_encoded_as_documented() {
    use herald::node::client::{ClientRequest, ClientResponse};
    let bytes = postcard::to_stdvec(&ClientRequest::Reload).expect("encode");
    assert_eq!(bytes, [0x05]);
    let bytes = postcard::to_stdvec(&ClientResponse::Reloaded("{}".into())).expect("encode");
    assert_eq!(hex::encode(&bytes), "06027b7d");
}
