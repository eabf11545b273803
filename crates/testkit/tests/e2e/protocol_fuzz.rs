//! A structured fuzzer for the Postgres protocol, against a real server:
//! mutated startup packets and Parse/Bind/Describe/Execute/Close/Sync/Flush
//! sequences, truncated and oversized messages, random COPY data. Every
//! case must end (the server answers or closes) with no panic anywhere in
//! the server, every reply well framed, and — for the cases sent unmutated —
//! the right answer; afterwards the server serves a normal query correctly.
//!
//! `STREAMHOUSE_FUZZ_CASES` sets the number of cases (CI runs the default);
//! `STREAMHOUSE_FUZZ_SEED` replays one run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use streamhouse_testkit::TestServer;
use streamhouse_testkit::wire::{cstr, frames, message, startup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// splitmix64: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A count as a fuzzer would send it: often small, sometimes extreme.
    fn count(&mut self) -> i16 {
        match self.below(6) {
            0 => -1,
            1 => i16::MAX,
            2 => -(self.below(100) as i16),
            _ => self.below(4) as i16,
        }
    }
}

const QUERIES: &[&str] = &[
    "SELECT 1",
    "SELECT $1::bigint + 1",
    "SELECT k, v FROM fuzz WHERE k = $1",
    "INSERT INTO fuzz VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
    "SELECT count(*) FROM fuzz",
    "BEGIN",
    "COMMIT",
    "SHOW search_path",
    "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM fuzz",
    "FETCH 2 FROM c",
    "SELECT 9223372036854775807::bigint + $1",
];

/// One well-formed extended-protocol message of a random kind.
fn valid_message(rng: &mut Rng) -> Vec<u8> {
    let name = ["", "s1", "p1"][rng.below(3)];
    match rng.below(8) {
        0 => {
            let mut b = Vec::new();
            cstr(&mut b, name);
            cstr(&mut b, QUERIES[rng.below(QUERIES.len())]);
            let n = rng.below(3);
            b.extend_from_slice(&(n as i16).to_be_bytes());
            for _ in 0..n {
                b.extend_from_slice(&[0, 0, 0, [0u8, 20, 25][rng.below(3)]]);
            }
            message(b'P', &b)
        }
        1 => {
            let mut b = Vec::new();
            cstr(&mut b, name);
            cstr(&mut b, ["", "s1"][rng.below(2)]);
            let np = rng.below(3);
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&(np as i16).to_be_bytes());
            for _ in 0..np {
                let value = rng.below(1000).to_string();
                b.extend_from_slice(&(value.len() as i32).to_be_bytes());
                b.extend_from_slice(value.as_bytes());
            }
            let nr = rng.below(3) as i16;
            b.extend_from_slice(&nr.to_be_bytes());
            for _ in 0..nr {
                b.extend_from_slice(&(rng.below(2) as i16).to_be_bytes());
            }
            message(b'B', &b)
        }
        2 => {
            let mut b = vec![[b'S', b'P'][rng.below(2)]];
            cstr(&mut b, name);
            message(b'D', &b)
        }
        3 => {
            let mut b = Vec::new();
            cstr(&mut b, name);
            b.extend_from_slice(&(rng.below(3) as i32).to_be_bytes());
            message(b'E', &b)
        }
        4 => {
            let mut b = vec![[b'S', b'P'][rng.below(2)]];
            cstr(&mut b, name);
            message(b'C', &b)
        }
        5 => message(b'H', &[]),
        6 => {
            let mut b = Vec::new();
            cstr(&mut b, QUERIES[rng.below(QUERIES.len())]);
            message(b'Q', &b)
        }
        _ => message(b'S', &[]),
    }
}

/// A message built from random counts and lengths, like the ones that
/// made pgwire 0.41.1 panic.
fn hostile_message(rng: &mut Rng) -> Vec<u8> {
    match rng.below(5) {
        0 => {
            let mut b = Vec::new();
            cstr(&mut b, "");
            cstr(&mut b, "SELECT $1");
            b.extend_from_slice(&rng.count().to_be_bytes());
            let k = rng.below(3);
            b.extend(rng.bytes(4 * k));
            message(b'P', &b)
        }
        1 => {
            let mut b = Vec::new();
            cstr(&mut b, "");
            cstr(&mut b, "");
            b.extend_from_slice(&rng.count().to_be_bytes());
            let k = rng.below(3);
            b.extend(rng.bytes(2 * k));
            b.extend_from_slice(&rng.count().to_be_bytes());
            for _ in 0..rng.below(3) {
                let len = match rng.below(4) {
                    0 => -1,
                    1 => i32::MAX,
                    2 => -(rng.below(9) as i32) - 2,
                    _ => rng.below(6) as i32,
                };
                b.extend_from_slice(&len.to_be_bytes());
                let n = rng.below(6);
                b.extend(rng.bytes(n));
            }
            b.extend_from_slice(&rng.count().to_be_bytes());
            let n = rng.below(4);
            b.extend(rng.bytes(n));
            message(b'B', &b)
        }
        2 => {
            let n = rng.below(12);
            message([b'D', b'C', b'E', b'S', b'H', b'f', b'Q', b'F', b'z', 0][rng.below(10)], &rng.bytes(n))
        }
        3 => {
            // A length field of any value.
            let mut m = valid_message(rng);
            let len = match rng.below(4) {
                0 => rng.below(4) as i32,
                1 => i32::MAX,
                2 => -(rng.below(1000) as i32),
                _ => 0x4000_0000,
            };
            m[1..5].copy_from_slice(&len.to_be_bytes());
            m
        }
        _ => {
            // A valid message with its body cut short (length adjusted) or bytes flipped.
            let m = valid_message(rng);
            let mut body = m[5..].to_vec();
            if rng.chance(50) && !body.is_empty() {
                body.truncate(rng.below(body.len()));
            } else {
                for _ in 0..=rng.below(3) {
                    if !body.is_empty() {
                        let at = rng.below(body.len());
                        body[at] = rng.next() as u8;
                    }
                }
            }
            message(m[0], &body)
        }
    }
}

/// A startup packet, sometimes mutated, sometimes after an SSL request.
fn startup_packet(rng: &mut Rng) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    if rng.chance(20) {
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&80_877_103i32.to_be_bytes());
    }
    let mut packet = startup("fuzzer");
    if rng.chance(85) {
        out.extend(packet);
        return (out, false);
    }
    match rng.below(4) {
        0 => packet[..4].copy_from_slice(&(rng.next() as i32).to_be_bytes()),
        1 => packet[4..8].copy_from_slice(&(rng.next() as i32).to_be_bytes()),
        2 => {
            let keep = 8 + rng.below(packet.len() - 8);
            packet.truncate(keep);
            let len = packet.len() as i32;
            packet[..4].copy_from_slice(&len.to_be_bytes());
        }
        _ => {
            // A cancel request with a random key.
            packet = 16i32.to_be_bytes().to_vec();
            packet.extend_from_slice(&80_877_102i32.to_be_bytes());
            packet.extend(rng.bytes(8));
        }
    }
    out.extend(packet);
    (out, true)
}

/// Random COPY data after a COPY FROM STDIN.
fn copy_sequence(rng: &mut Rng) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, "COPY fuzz FROM STDIN");
    let mut out = message(b'Q', &b);
    for _ in 0..rng.below(4) {
        let row = match rng.below(4) {
            0 => format!("{}\tv{}\n", rng.below(1000), rng.below(10)).into_bytes(),
            1 => b"99999999999999999999\tbig\n".to_vec(),
            2 => {
                let n = rng.below(20);
                rng.bytes(n)
            }
            _ => b"1\t\xff\xfe\n".to_vec(),
        };
        out.extend(message(b'd', &row));
    }
    if rng.chance(50) {
        out.extend(message(b'c', &[]));
    } else {
        let mut f = Vec::new();
        cstr(&mut f, "fuzzer gave up");
        out.extend(message(b'f', &f));
    }
    out
}

fn is_protocol_violation(body: &[u8]) -> bool {
    body.windows(6).any(|w| w == b"C08P01")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protocol_messages_never_panic_the_server() -> anyhow::Result<()> {
    let panics = Arc::new(AtomicUsize::new(0));
    let previous = std::panic::take_hook();
    let counted = Arc::clone(&panics);
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));

    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute("CREATE TABLE fuzz (k BIGINT PRIMARY KEY, v TEXT); INSERT INTO fuzz VALUES (1, 'a'), (2, 'b')")
        .await?;
    let cases: usize = std::env::var("STREAMHOUSE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let seed: u64 = std::env::var("STREAMHOUSE_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(17);
    let mut rng = Rng(seed);
    let (mut violations, mut answered) = (0, 0);
    for case in 0..cases {
        let (mut sent, mutated_startup) = startup_packet(&mut rng);
        let ssl = sent.len() > 8 && sent[4..8] == 80_877_103i32.to_be_bytes();
        let mut mutated = mutated_startup;
        for _ in 0..rng.below(8) {
            match rng.below(10) {
                0..=4 => sent.extend(valid_message(&mut rng)),
                5 => sent.extend(copy_sequence(&mut rng)),
                _ => {
                    mutated = true;
                    sent.extend(hostile_message(&mut rng));
                }
            }
        }
        // Then a normal query, which an unmutated case must answer (after
        // leaving any transaction block a failed statement aborted).
        sent.extend(message(b'S', &[]));
        let mut rollback = Vec::new();
        cstr(&mut rollback, "ROLLBACK");
        sent.extend(message(b'Q', &rollback));
        let mut q = Vec::new();
        cstr(&mut q, "SELECT 40 + 2 AS answer");
        sent.extend(message(b'Q', &q));

        let mut socket = TcpStream::connect(server.pg_addr()).await?;
        socket.write_all(&sent).await?;
        socket.shutdown().await?; // no more input: the server must answer and close
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut reply))
            .await
            .unwrap_or_else(|_| panic!("case {case} (seed {seed}): the server neither answered nor closed"))
            .ok();
        let frames = frames(&reply, ssl).unwrap_or_else(|| panic!("case {case} (seed {seed}): a torn reply"));
        if frames.iter().any(|(kind, body)| *kind == b'E' && is_protocol_violation(body)) {
            violations += 1;
        }
        let answer = frames.iter().any(|(kind, body)| *kind == b'D' && body.ends_with(b"\0\0\0\x0242"));
        answered += usize::from(answer);
        if !mutated {
            assert!(answer, "case {case} (seed {seed}): a well-formed session got no answer: {frames:?}");
        }
        assert_eq!(panics.load(Ordering::SeqCst), 0, "case {case} (seed {seed}) panicked the server");
    }
    let row = pg.query_one("SELECT 40 + 2", &[]).await?;
    assert_eq!(row.get::<_, i64>(0), 42);
    let fresh = server.pg().await?;
    assert_eq!(fresh.query_one("SELECT count(*) FROM fuzz WHERE k IN (1, 2)", &[]).await?.get::<_, i64>(0), 2);
    eprintln!("{cases} cases: {violations} refused as protocol violations (08P01), {answered} answered; 0 panics");
    Ok(())
}

/// Flight with malformed input: garbage and random protobuf in commands and
/// tickets, unknown command types, an oversized message — each answered
/// with a gRPC status (never `Internal`), the server alive afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_flight_requests_get_a_status() -> anyhow::Result<()> {
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::{FlightDescriptor, Ticket};

    let server = TestServer::start().await?;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.flight_addr()))?.connect().await?;
    let mut flight = FlightServiceClient::new(channel).max_encoding_message_size(usize::MAX);
    let mut rng = Rng(5);
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"SELECT 1".to_vec(),
        vec![0xff; 64],
        // An Any of an unknown type, and one of a known type with a garbage body.
        [&[0x0a, 0x07][..], b"unknown", &[0x12, 0x03, 1, 2, 3]].concat(),
        [
            &[0x0a, 0x41][..],
            b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery",
            &[0x12, 0x04, 0xff, 0xff, 0xff, 0xff],
        ]
        .concat(),
    ];
    for _ in 0..200 {
        let n = rng.below(80);
        inputs.push(rng.bytes(n));
    }
    for bytes in inputs {
        let descriptor = FlightDescriptor::new_cmd(bytes.clone());
        if let Err(status) = flight.get_flight_info(descriptor).await {
            assert_ne!(status.code(), tonic::Code::Internal, "{status:?}");
            assert_ne!(status.code(), tonic::Code::Unknown, "{status:?}");
        }
        match flight.do_get(Ticket::new(bytes)).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                while let Some(item) = futures::StreamExt::next(&mut stream).await {
                    if let Err(status) = item {
                        assert_ne!(status.code(), tonic::Code::Internal, "{status:?}");
                        break;
                    }
                }
            }
            Err(status) => {
                assert_ne!(status.code(), tonic::Code::Internal, "{status:?}");
                assert_ne!(status.code(), tonic::Code::Unknown, "{status:?}");
            }
        }
    }
    // Bigger than the server takes in one message.
    let huge = FlightDescriptor::new_cmd(vec![0u8; 64 << 20]);
    let status = flight.get_flight_info(huge).await.expect_err("oversized");
    // tonic's own answer to a message past the server's limit.
    assert!(matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted), "{status:?}");
    let pg = server.pg().await?;
    assert_eq!(pg.query_one("SELECT 40 + 2", &[]).await?.get::<_, i64>(0), 42);
    Ok(())
}

/// Query text that is not valid UTF-8 is refused with 22021, over the simple
/// and the extended protocol, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_query_text_is_22021() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut sent = startup("fuzzer");
    sent.extend(message(b'Q', b"SELECT 'caf\xe9'\0"));
    sent.extend(message(b'P', b"\0SELECT '\xff\xfe'\0\0\0"));
    sent.extend(message(b'S', &[]));
    sent.extend(message(b'Q', b"SELECT 40 + 2\0"));
    let mut socket = TcpStream::connect(server.pg_addr()).await?;
    socket.write_all(&sent).await?;
    socket.shutdown().await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut reply)).await??;
    let frames = frames(&reply, false).expect("well framed");
    let errors: Vec<String> = frames
        .iter()
        .filter(|(kind, _)| *kind == b'E')
        .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("C22021") && errors[0].contains("0xe9"), "{}", errors[0]);
    assert!(errors[1].contains("C22021") && errors[1].contains("0xff"), "{}", errors[1]);
    assert!(frames.iter().any(|(kind, body)| *kind == b'D' && body.ends_with(b"\0\0\0\x0242")), "{frames:?}");
    Ok(())
}
