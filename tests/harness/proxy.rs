//! A TCP proxy on loopback that a test controls, to cut the network to a server or make it
//! answer errors, without touching the server itself.
//!
//! Every accepted connection is forwarded to the target byte for byte. `cut` closes every open
//! connection and refuses new ones (accepts and drops them at once) until the time is up; `stall`
//! closes nothing but lets no byte through until the time is up; `answer`
//! makes the next connections get a canned reply instead of reaching the target (ClickHouse's
//! HTTP interface opens one connection per statement, so "the next N connections" is "the next
//! N statements"); `answer_when` gives a fault to the next request whose text holds a given
//! string (one statement among many, on an HTTP target).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the proxy does with the next connection instead of forwarding it.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Read the request head, send these bytes, close.
    Reply(Vec<u8>),
    /// Read the request head, then reset the connection without answering.
    Reset,
    /// Read the request, then never answer (the connection stays open until the client
    /// gives up).
    Hang,
}

#[derive(Default)]
struct Control {
    cut_until: Option<Instant>,
    /// Until then, nothing passes either way on open connections and new ones wait.
    stalled_until: Option<Instant>,
    faults: VecDeque<Fault>,
    /// A fault for the next request holding the string.
    when: Option<(String, Fault)>,
    /// Faults handed out so far.
    served: usize,
}

pub struct Proxy {
    port: u16,
    control: Arc<Mutex<Control>>,
    /// Bumped by `cut`: forwarding tasks watching it close their connections.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on a free loopback port, forwarding to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let control = Arc::new(Mutex::new(Control::default()));
        let (generation, _) = watch::channel(0u64);
        let task = {
            let control = control.clone();
            let generation = generation.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    client.set_nodelay(true).ok();
                    let action = {
                        let mut c = control.lock().unwrap();
                        if c.cut_until.is_some_and(|t| Instant::now() < t) {
                            None
                        } else {
                            c.cut_until = None;
                            let f = c.faults.pop_front();
                            if f.is_some() {
                                c.served += 1;
                            }
                            Some(f)
                        }
                    };
                    match action {
                        None => drop(client),
                        Some(Some(fault)) => {
                            tokio::spawn(misbehave(client, fault));
                        }
                        Some(None) => {
                            let gen = generation.subscribe();
                            if control.lock().unwrap().when.is_some() {
                                tokio::spawn(inspect(client, target, gen, control.clone()));
                            } else {
                                tokio::spawn(forward(
                                    client,
                                    Vec::new(),
                                    target,
                                    gen,
                                    control.clone(),
                                ));
                            }
                        }
                    }
                }
            })
        };
        Proxy {
            port,
            control,
            generation,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Close every forwarded connection and refuse new ones for `how_long`.
    pub fn cut(&self, how_long: Duration) {
        self.control.lock().unwrap().cut_until = Some(Instant::now() + how_long);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Let nothing through for `how_long`, closing nothing: connections stay open (new ones
    /// are accepted) and their bytes wait, as when a network path silently drops packets and
    /// TCP retransmits until it is back.
    pub fn stall(&self, how_long: Duration) {
        self.control.lock().unwrap().stalled_until = Some(Instant::now() + how_long);
    }

    /// The next connections get `faults`, one each, in order.
    pub fn answer(&self, faults: impl IntoIterator<Item = Fault>) {
        self.control.lock().unwrap().faults.extend(faults);
    }

    /// The next request whose text (head and body) holds `needle` gets `fault`; other
    /// requests pass meanwhile.
    pub fn answer_when(&self, needle: &str, fault: Fault) {
        self.control.lock().unwrap().when = Some((needle.to_owned(), fault));
    }

    /// Whether the `answer_when` fault still waits for its request.
    pub fn when_pending(&self) -> bool {
        self.control.lock().unwrap().when.is_some()
    }

    /// How many faults have been handed out.
    pub fn faults_served(&self) -> usize {
        self.control.lock().unwrap().served
    }

    /// Faults still waiting for a connection.
    pub fn faults_pending(&self) -> usize {
        self.control.lock().unwrap().faults.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forward `client` to the target, `read` (what was read from it already) first. Bytes wait
/// while the proxy is stalled.
async fn forward(
    client: TcpStream,
    read: Vec<u8>,
    target: u16,
    mut cut: watch::Receiver<u64>,
    control: Arc<Mutex<Control>>,
) {
    wait_unstalled(&control).await;
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    server.set_nodelay(true).ok();
    if server.write_all(&read).await.is_err() {
        return;
    }
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = async { tokio::join!(pump(cr, sw, &control), pump(sr, cw, &control)) } => {}
        _ = cut.changed() => {}
    }
}

/// Copy one direction until end of stream, holding every chunk while the proxy is stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    control: &Mutex<Control>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => break,
        };
        wait_unstalled(control).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn wait_unstalled(control: &Mutex<Control>) {
    loop {
        let until = control.lock().unwrap().stalled_until;
        match until {
            Some(t) if Instant::now() < t => tokio::time::sleep_until(t).await,
            _ => return,
        }
    }
}

/// Read the whole request; the `answer_when` fault if it holds the string, else forward it.
async fn inspect(
    mut client: TcpStream,
    target: u16,
    cut: watch::Receiver<u64>,
    control: Arc<Mutex<Control>>,
) {
    let seen = read_request(&mut client).await;
    let fault = {
        let mut c = control.lock().unwrap();
        let hit = c
            .when
            .as_ref()
            .is_some_and(|(needle, _)| seen.windows(needle.len()).any(|w| w == needle.as_bytes()));
        if hit {
            c.served += 1;
            c.when.take().map(|(_, f)| f)
        } else {
            None
        }
    };
    match fault {
        Some(fault) => answer(client, fault).await,
        None => forward(client, seen, target, cut, control).await,
    }
}

/// Read a whole HTTP request (head, then a `Content-Length` or chunked body), so that the
/// client has sent everything and reads the answer; gives up after 5 s of waiting. Returns
/// what was read.
async fn read_request(client: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen: Vec<u8> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let complete = |seen: &[u8]| -> bool {
        let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
        let body = &seen[end + 4..];
        if head.contains("transfer-encoding: chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        body.len() >= length
    };
    while !complete(&seen) {
        match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return seen,
        }
    }
    seen
}

async fn misbehave(mut client: TcpStream, fault: Fault) {
    read_request(&mut client).await;
    answer(client, fault).await
}

/// Answer a request that was read with `fault`.
async fn answer(mut client: TcpStream, fault: Fault) {
    match fault {
        Fault::Reply(bytes) => {
            let _ = client.write_all(&bytes).await;
            let _ = client.shutdown().await;
        }
        Fault::Reset => {
            // SO_LINGER 0: the close sends a reset, as a crashed peer's kernel would.
            let _ = client.set_zero_linger();
            drop(client);
        }
        Fault::Hang => {
            // Until the client closes its end (or an hour, whichever comes first).
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(3600), async {
                while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
            })
            .await;
        }
    }
}

/// A whole HTTP/1.1 response, with `Connection: close`.
pub fn http_reply(status: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    out.into_bytes()
}
