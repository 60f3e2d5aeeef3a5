//! A TCP proxy before a test database that loses one message's answer, for
//! the tests of what pgshift makes of a connection lost at the worst moment
//! (its swap's COMMIT). Every connection passes through unchanged until a
//! client sends bytes holding the needle: that connection then loses the
//! message's answer, the message itself reaching the server or not, and is
//! closed both ways. Connections opened later pass through again.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::TestDb;

/// A running proxy (its threads end with the test process).
pub struct LosingProxy {
    pub port: u16,
    /// Set once a connection has been cut.
    pub cut: Arc<AtomicBool>,
}

impl LosingProxy {
    /// Before `db`'s server: the first message holding `needle` is passed on
    /// (`deliver`: the server runs it, its answer is lost) or not (the
    /// server sees the connection end before it).
    pub fn start(db: &TestDb, needle: &'static [u8], deliver: bool) -> LosingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        let port = listener.local_addr().unwrap().port();
        let server = format!("127.0.0.1:{}", db.server().port);
        let cut = Arc::new(AtomicBool::new(false));
        let cut_flag = Arc::clone(&cut);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(upstream) = TcpStream::connect(&server) else {
                    continue;
                };
                let cut = Arc::clone(&cut_flag);
                std::thread::spawn(move || relay(client, upstream, needle, deliver, &cut));
            }
        });
        LosingProxy { port, cut }
    }

    /// `db`'s URL through the proxy, without TLS (the needle must be seen).
    pub fn url(&self, db: &TestDb) -> String {
        let direct = db.url();
        let at = format!(":{}/", db.server().port);
        assert!(direct.contains(&at), "{direct}");
        format!(
            "{}?sslmode=disable",
            direct.replacen(&at, &format!(":{}/", self.port), 1)
        )
    }
}

/// One connection: the server's bytes go back to the client until muted;
/// the client's go on to the server until the needle is seen.
fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    needle: &[u8],
    deliver: bool,
    cut: &AtomicBool,
) {
    let muted = Arc::new(AtomicBool::new(false));
    {
        let muted = Arc::clone(&muted);
        let mut from = upstream.try_clone().unwrap();
        let mut to = client.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || muted.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let hit =
            !cut.load(Ordering::SeqCst) && buf[..n].windows(needle.len()).any(|w| w == needle);
        if !hit {
            if upstream.write_all(&buf[..n]).is_err() {
                break;
            }
            continue;
        }
        muted.store(true, Ordering::SeqCst);
        cut.store(true, Ordering::SeqCst);
        if deliver {
            // The rest of the message too: whatever the client sends
            // within a moment.
            let _ = upstream.write_all(&buf[..n]);
            let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
            while let Ok(n) = client.read(&mut buf) {
                if n == 0 || upstream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            // Time for the server to run it before it sees the end.
            std::thread::sleep(Duration::from_millis(500));
        }
        break;
    }
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}
