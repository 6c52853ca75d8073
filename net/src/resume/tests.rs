use super::*;
use tokio::io::{duplex, DuplexStream};
use tokio::task::JoinHandle;

/// One end of a tunnel under test: its engine task, its control and events, and the
/// application's side of its local stream.
struct End {
    task: JoinHandle<(Finished, Moved)>,
    control: Handle,
    events: Events,
    app: Option<DuplexStream>,
}

fn end(link: Option<Link>, buffer: usize) -> End {
    let (app, local) = duplex(64 * 1024);
    let (control, events, inbox) = channel();
    let task = tokio::spawn(run(local, link, Config { buffer }, inbox));
    End {
        task,
        control,
        events,
        app: Some(app),
    }
}

/// Two engines joined by an in-memory link.
fn pair(buffer: usize) -> (End, End) {
    let (a, b) = duplex(256 * 1024);
    (
        end(Some(Box::new(a)), buffer),
        end(Some(Box::new(b)), buffer),
    )
}

async fn detach(e: &End) -> Detached {
    e.control.detach().await.unwrap()
}

async fn attach(e: &End, d: Detached, link: Link, peer_received: u64) -> Result<(), String> {
    e.control
        .attach(d, link, peer_received, String::new())
        .await
}

/// Breaks the link between `a` and `b` (whatever was in flight is lost) and joins them with a
/// new one, each resending from what the other received.
async fn reconnect(a: &End, b: &End) {
    let da = detach(a).await;
    let db = detach(b).await;
    let (la, lb) = duplex(256 * 1024);
    attach(a, da, Box::new(la), db.received).await.unwrap();
    attach(b, db, Box::new(lb), da.received).await.unwrap();
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` then closes; reads everything the other side sends.
async fn app_exchange(app: DuplexStream, data: Vec<u8>) -> Vec<u8> {
    app_exchange_paced(app, data, usize::MAX).await
}

/// [`app_exchange`], yielding to the other tasks after each `piece` bytes written.
async fn app_exchange_paced(mut app: DuplexStream, data: Vec<u8>, piece: usize) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(&mut app);
    let send = async {
        for chunk in data.chunks(piece) {
            w.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let recv = r.read_to_end(&mut got);
    let (_, n) = tokio::join!(send, recv);
    n.unwrap();
    got
}

#[tokio::test]
async fn bytes_cross_both_ways_and_both_ends_finish_cleanly() {
    let (mut a, mut b) = pair(1024 * 1024);
    let (up, down) = (pattern(1, 3_000_000), pattern(2, 1_500_000));
    let ta = tokio::spawn(app_exchange(a.app.take().unwrap(), up.clone()));
    let tb = tokio::spawn(app_exchange(b.app.take().unwrap(), down.clone()));
    assert!(tb.await.unwrap() == up, "a -> b bytes differ");
    assert!(ta.await.unwrap() == down, "b -> a bytes differ");
    let (fa, ma) = a.task.await.unwrap();
    let (fb, mb) = b.task.await.unwrap();
    assert_eq!((fa, fb), (Finished::Clean, Finished::Clean));
    assert_eq!(ma.read, 3_000_000);
    assert_eq!(ma.delivered, 1_500_000);
    assert_eq!(mb.read, 1_500_000);
    assert_eq!(mb.delivered, 3_000_000);
}

#[tokio::test]
async fn no_byte_is_lost_or_repeated_when_the_link_breaks_again_and_again() {
    let (mut a, mut b) = pair(512 * 1024);
    let (up, down) = (pattern(3, 8_000_000), pattern(4, 6_000_000));
    let piece = 4 * 1024;
    let ta = tokio::spawn(app_exchange_paced(a.app.take().unwrap(), up.clone(), piece));
    let tb = tokio::spawn(app_exchange_paced(
        b.app.take().unwrap(),
        down.clone(),
        piece,
    ));
    let mut breaks = 0u64;
    while !(ta.is_finished() && tb.is_finished()) {
        // Let the engines move some bytes (a varying amount) before the next break.
        for _ in 0..(1 + breaks % 6) {
            tokio::task::yield_now().await;
        }
        if a.task.is_finished() || b.task.is_finished() {
            if !(ta.is_finished() && tb.is_finished()) {
                let (fa, fb) = (a.task.await.unwrap(), b.task.await.unwrap());
                panic!("an engine ended mid-transfer after {breaks} breaks: {fa:?} {fb:?}");
            }
            break;
        }
        reconnect(&a, &b).await;
        breaks += 1;
    }
    let (got_b, got_a) = (tb.await.unwrap(), ta.await.unwrap());
    eprintln!("{breaks} breaks");
    assert!(
        breaks >= 20,
        "only {breaks} breaks: the test did not exercise resumption ({} and {} bytes arrived)",
        got_b.len(),
        got_a.len()
    );
    assert!(got_b == up, "a -> b bytes differ after {breaks} breaks");
    assert!(got_a == down, "b -> a bytes differ after {breaks} breaks");
    let (fa, _) = a.task.await.unwrap();
    let (fb, _) = b.task.await.unwrap();
    assert_eq!((fa, fb), (Finished::Clean, Finished::Clean));
    let lost = std::iter::from_fn(|| a.events.try_recv())
        .filter(|e| matches!(e, Event::LinkLost { .. }))
        .count();
    assert!(
        lost as u64 >= breaks - 1,
        "{lost} LinkLost events for {breaks} breaks"
    );
}

#[tokio::test]
async fn an_idle_tunnel_holds_no_buffer_after_traffic() {
    let (mut a, mut b) = pair(1024 * 1024);
    assert_eq!(a.control.held().await, Some(0), "before any traffic");
    let (app_a, app_b) = (a.app.take().unwrap(), b.app.take().unwrap());
    let (mut ra, mut wa) = tokio::io::split(app_a);
    let (mut rb, mut wb) = tokio::io::split(app_b);
    // Bulk both ways (every buffer grows to its largest), then one byte each way; the
    // applications keep their connections open.
    for len in [2_000_000, 1] {
        let (up, down) = (pattern(7, len), pattern(8, len));
        let (mut got_b, mut got_a) = (vec![0u8; len], vec![0u8; len]);
        let (w1, w2, r1, r2) = tokio::join!(
            wa.write_all(&up),
            wb.write_all(&down),
            ra.read_exact(&mut got_a),
            rb.read_exact(&mut got_b),
        );
        w1.unwrap();
        w2.unwrap();
        r1.unwrap();
        r2.unwrap();
        assert!(got_b == up && got_a == down, "{len} bytes differ");
    }
    // The last acknowledgements go out after ACK_DELAY.
    tokio::time::sleep(ACK_DELAY * 10).await;
    assert_eq!(
        a.control.held().await,
        Some(0),
        "a holds storage while idle"
    );
    assert_eq!(
        b.control.held().await,
        Some(0),
        "b holds storage while idle"
    );
    drop((ra, wa, rb, wb));
    let (fa, _) = a.task.await.unwrap();
    let (fb, _) = b.task.await.unwrap();
    assert_eq!((fa, fb), (Finished::Clean, Finished::Clean));
}

#[tokio::test]
async fn an_engine_whose_handles_are_all_gone_ends_once_its_link_is_down() {
    let (a, mut b) = pair(MIN_BUFFER);
    let extra = a.control.clone();
    let d = detach(&a).await;
    assert_eq!(d.received, 0);
    drop(a.control);
    // A clone still holds it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!a.task.is_finished());
    drop(extra);
    let (f, _) = tokio::time::timeout(Duration::from_secs(5), a.task)
        .await
        .expect("the engine did not end")
        .unwrap();
    assert_eq!(f, Finished::Abandoned);
    // Its events end too.
    let mut events = a.events;
    assert_eq!(
        events.recv().await,
        Some(Event::LinkLost { detached: true })
    );
    assert_eq!(events.recv().await, None);
    drop(b.app.take());
}

#[tokio::test]
async fn a_suspended_end_buffers_at_most_its_replay_buffer() {
    let buffer = MIN_BUFFER;
    let (mut a, b) = pair(buffer);
    let d = detach(&a).await;
    assert_eq!(d.received, 0);
    assert_eq!(
        a.events.recv().await,
        Some(Event::LinkLost { detached: true })
    );
    drop(b);
    // The application writes far more than the buffer: the engine stops reading, so the
    // writes block instead of memory growing.
    let mut app = a.app.take().unwrap();
    let big = pattern(5, 8 * buffer);
    let wrote = tokio::time::timeout(Duration::from_millis(300), app.write_all(&big)).await;
    assert!(wrote.is_err(), "a suspended tunnel took 8 times its buffer");
    a.control.close("test over".into());
    let (f, moved) = a.task.await.unwrap();
    assert_eq!(f, Finished::Closed);
    assert!(
        moved.read as usize <= buffer + MAX_DATA,
        "read {} with a buffer of {buffer}",
        moved.read
    );
    assert!(moved.read > 0);
}

#[tokio::test]
async fn a_close_reaches_the_other_end_with_its_reason() {
    let (mut a, b) = pair(MIN_BUFFER);
    a.control
        .close("device revoked: device d-1 is now revoked".into());
    assert_eq!(a.task.await.unwrap().0, Finished::Closed);
    assert_eq!(
        b.task.await.unwrap().0,
        Finished::PeerClosed("device revoked: device d-1 is now revoked".into())
    );
    drop(a.app.take());
}

#[tokio::test]
async fn a_local_failure_is_passed_on_as_a_close() {
    let (mut a, b) = pair(MIN_BUFFER);
    // The application goes away while data is on its way to it.
    drop(a.app.take());
    let mut app_b = b.app.unwrap();
    let _ = app_b.write_all(&pattern(6, 200_000)).await;
    let (fa, _) = a.task.await.unwrap();
    assert!(matches!(fa, Finished::LocalError(_)), "{fa:?}");
    let (fb, _) = b.task.await.unwrap();
    assert!(
        matches!(&fb, Finished::PeerClosed(r) if r.contains("local connection")),
        "{fb:?}"
    );
}

#[tokio::test]
async fn garbage_on_the_link_ends_the_tunnel_with_a_protocol_error() {
    for (garbage, expect) in [
        (vec![9u8, 0, 0], "unknown frame type 9"),
        (vec![1u8, 0, 1, 0, 1], "DATA frame of 65537 bytes"),
        (vec![1u8, 0, 0, 0, 0], "DATA frame of 0 bytes"),
        (vec![2u8, 0, 0, 0, 0, 0, 0, 0, 9], "past the 0 sent"),
        (vec![3u8, 0, 0, 0, 0, 0, 0, 0, 5], "FIN at 5"),
        (vec![4u8, 2, 1], "CLOSE reason of 513 bytes"),
    ] {
        let (link, mut peer) = duplex(1024);
        let mut a = end(Some(Box::new(link)), MIN_BUFFER);
        peer.write_all(&garbage).await.unwrap();
        let (f, _) = tokio::time::timeout(Duration::from_secs(5), a.task)
            .await
            .expect("the engine hung on garbage")
            .unwrap();
        assert!(
            matches!(&f, Finished::Protocol(m) if m.contains(expect)),
            "{garbage:?}: {f:?}"
        );
        // The peer is told why, in a CLOSE frame.
        let mut told = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), peer.read_to_end(&mut told)).await;
        assert_eq!(told.first(), Some(&4), "{garbage:?}: {told:?}");
        drop(a.app.take());
    }
}

#[tokio::test]
async fn an_attach_with_an_impossible_offset_or_a_stale_epoch_is_refused() {
    let (a, b) = pair(MIN_BUFFER);
    let d = detach(&a).await;
    let (l1, _keep1) = duplex(1024);
    // Another attach got in first: this one is stale.
    let (l0, _keep0) = duplex(1024);
    attach(&a, d, Box::new(l0), 0).await.unwrap();
    let stale = attach(&a, d, Box::new(l1), 0).await.unwrap_err();
    assert!(stale.contains("another link"), "{stale}");
    let d = detach(&a).await;
    let (l2, _keep2) = duplex(1024);
    let e = attach(&a, d, Box::new(l2), 1_000).await.unwrap_err();
    assert!(e.contains("received 1000"), "{e}");
    assert!(matches!(a.task.await.unwrap().0, Finished::Protocol(_)));
    drop(b);
}

#[test]
fn only_the_clients_exit_close_ends_a_tunnel_instead_of_suspending_it() {
    let closed = |code: u32| {
        quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(code),
            reason: Bytes::from_static(b"client closing"),
        })
    };
    let read = |c| std::io::Error::other(quinn::ReadError::ConnectionLost(c));
    let write = |c| std::io::Error::other(quinn::WriteError::ConnectionLost(c));
    let exit = postern_proto::wire::QUIC_CLOSE_EXIT;
    assert!(peer_exited(&read(closed(exit))));
    assert!(peer_exited(&write(closed(exit))));
    // Any other close, a timeout, or a plain I/O error is a lost link: suspend and wait.
    assert!(!peer_exited(&read(closed(0))));
    assert!(!peer_exited(&read(quinn::ConnectionError::TimedOut)));
    assert!(!peer_exited(&std::io::Error::from(
        std::io::ErrorKind::ConnectionReset
    )));
}
