//! The admin socket: the daemon's local API for technicians and tools (`docs/admin-api.md`).
//! JSON over HTTP/1.1 on a Unix socket in the runtime directory, mode 0660. Every request is
//! authorised by the caller's credentials as the kernel gives them (SO_PEERCRED), never by
//! anything the caller says, and goes to the audit trail (`slotgate::audit` log target) with its
//! uid.
//!
//! The API is a view of the state model ([`crate::state`]) plus the lines' command channels
//! ([`crate::poller::command`]) and the remote-command task ([`crate::command`]): a technician's
//! disable or enable is signed with the local key and submitted like any inbound command, its
//! origin the caller's uid; the command store is read for `/v1/commands`. It holds no state of
//! its own except the lines a probe holds.

pub mod client;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::command::envelope::Action;
use crate::command::local::LocalIssuer;
use crate::command::service::{Outcome, Submitter};
use crate::command::store::{CommandReader, State};
use crate::journal::Journal;
use crate::journal::record::Body;
use crate::poller::{AllowedPoll, LineCommand, LineHandle, command::Release};
use crate::state::StateView;

/// The API's version: the first segment of every path.
pub const API_VERSION: &str = "v1";
/// Most records one `GET /v1/events` returns.
pub const MAX_EVENTS: usize = 1000;
/// How long a line stays released when the probe does not say, and at most.
pub const RELEASE_DEFAULT: Duration = Duration::from_secs(60);
pub const RELEASE_MAX: Duration = Duration::from_secs(600);

/// The bound socket, removed when dropped (if it is still ours).
#[derive(Debug)]
pub struct Socket {
    pub path: PathBuf,
    listener: UnixListener,
    inode: u64,
}

impl Drop for Socket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // Another daemon may have taken the path over since; its socket is not ours to remove.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the admin socket at `path`, mode 0660, creating its directory (0755). A socket file left
/// by a daemon that died is replaced; one a live daemon answers on is not.
pub fn bind(path: &Path) -> anyhow::Result<Socket> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the runtime directory {}", dir.display()))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another slotgate answers on the admin socket {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the admin socket {}", path.display()))?;
    // Between bind and chmod the socket has the daemon's umask (0077 from `app::run`): never
    // wider than 0660.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    let inode = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .ino();
    Ok(Socket { path: path.to_path_buf(), listener, inode })
}

/// Largest request body taken (a command's reason).
pub const MAX_BODY: usize = 4096;

/// The remote-command task as the API reaches it.
#[derive(Debug)]
pub struct Commands {
    pub submitter: Submitter,
    /// The local technician key; none: `disable`/`enable` are refused (`409`).
    pub issuer: Option<LocalIssuer>,
    pub reader: CommandReader,
}

/// What the API serves from.
#[derive(Debug)]
pub struct Api {
    pub view: StateView,
    pub lines: Vec<LineHandle>,
    pub journal: Journal,
    /// None: the `/v1/commands` and disable/enable paths answer `503`.
    pub commands: Option<Commands>,
    /// The forwarders' replay inboxes (`slotgate replay`).
    pub replays: crate::forward::Replays,
    /// Lines a probe holds: the release that gives each back when dropped, numbered so that an
    /// expiry timer removes only the release it was started for.
    released: Mutex<HashMap<String, (u64, Release)>>,
    releases: std::sync::atomic::AtomicU64,
}

impl Api {
    pub fn new(view: StateView, lines: Vec<LineHandle>, journal: Journal) -> Self {
        Self {
            view,
            lines,
            journal,
            commands: None,
            replays: crate::forward::Replays::default(),
            released: Mutex::new(HashMap::new()),
            releases: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// With the remote-command task's paths.
    pub fn with_commands(mut self, commands: Commands) -> Self {
        self.commands = Some(commands);
        self
    }

    pub fn with_replays(self, replays: crate::forward::Replays) -> Self {
        Self { replays, ..self }
    }
}

/// Who may use the API: root, the daemon's own user, and members of the daemon's group (as the
/// socket's mode 0660 already says at connect).
fn authorised(peer: &tokio::net::unix::UCred) -> bool {
    let uid = peer.uid();
    uid == 0
        || uid == nix::unistd::geteuid().as_raw()
        || peer.gid() == nix::unistd::getegid().as_raw()
}

/// How long open connections get to finish once the daemon stops.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves `socket` until `cancel` fires; then open connections get [`CLOSE_GRACE`] to finish.
/// Returns only once none is left, so nothing of the API (the journal handle it holds) outlives
/// it.
pub async fn serve(socket: Socket, api: Arc<Api>, cancel: CancellationToken) {
    tracing::info!(socket = %socket.path.display(), "Admin socket listening.");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Reap finished connections as we go, so the set stays small.
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: the data path goes on; try again shortly.
                    tracing::warn!(%error, "Admin socket: cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let peer = match stream.peer_cred() {
            Ok(peer) => peer,
            Err(error) => {
                tracing::warn!(%error, "Admin socket: the caller's credentials cannot be read; refused.");
                continue;
            }
        };
        let api = api.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(handle(&api, peer, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
                }
            }
        });
    }
    drop(api);
    // Each connection task stops within the grace by itself; the bound is for one that hangs.
    let _ = tokio::time::timeout(CLOSE_GRACE * 2, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

type Reply = Response<Full<Bytes>>;

fn json(status: StatusCode, body: &impl serde::Serialize) -> Reply {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// The query's `key=value` pairs (no percent-decoding: every value the API takes is plain).
fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn handle(
    api: &Arc<Api>,
    peer: tokio::net::unix::UCred,
    request: Request<Incoming>,
) -> Reply {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if !authorised(&peer) {
        tracing::warn!(target: "slotgate::audit", uid = peer.uid(), gid = peer.gid(),
            pid = peer.pid(), %method, %path, "Admin request refused: not the service's user or group.");
        return error(StatusCode::FORBIDDEN, format!("uid {} may not use this socket", peer.uid()));
    }
    let query = query(&request);
    let raw_query = request.uri().query().unwrap_or("").to_owned();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is unreadable or over {MAX_BODY} bytes"),
            );
        }
    };
    let call = Call { method: &method, path: &path, query: &query, body: &body, uid: peer.uid() };
    let reply = route(api, &call).await;
    // Reads are routine; every command is audited at info with the caller.
    if method == Method::GET {
        tracing::debug!(target: "slotgate::audit", uid = peer.uid(), %method, %path,
            status = reply.status().as_u16(), "Admin request.");
    } else {
        tracing::info!(target: "slotgate::audit", uid = peer.uid(), pid = peer.pid(), %method,
            %path, query = raw_query, status = reply.status().as_u16(), "Admin command.");
    }
    reply
}

/// One request, as the routes see it.
struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a HashMap<String, String>,
    body: &'a [u8],
    /// The caller's uid (SO_PEERCRED).
    uid: u32,
}

async fn route(api: &Arc<Api>, call: &Call<'_>) -> Reply {
    let Call { method, path, query, .. } = *call;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, [API_VERSION, "status"]) => json(StatusCode::OK, &api.view.snapshot()),
        (&Method::GET, [API_VERSION, "machines"]) => {
            let machines = api.view.snapshot().machines(query.get("line").map(String::as_str));
            json(StatusCode::OK, &serde_json::json!({ "machines": machines }))
        }
        (&Method::GET, [API_VERSION, "machines", id]) => match api.view.snapshot().machine(id) {
            Some(machine) => json(StatusCode::OK, &machine),
            None => error(StatusCode::NOT_FOUND, format!("no machine {id}")),
        },
        (&Method::GET, [API_VERSION, "events"]) => events(api, query),
        (&Method::POST, [API_VERSION, "machines", id, "disable"]) => {
            remote_command(api, id, Action::Disable, call).await
        }
        (&Method::POST, [API_VERSION, "machines", id, "enable"]) => {
            remote_command(api, id, Action::Enable, call).await
        }
        (&Method::GET, [API_VERSION, "commands"]) => commands(api, query),
        (&Method::GET, [API_VERSION, "commands", id]) => command_record(api, id),
        (&Method::POST, [API_VERSION, "machines", id, "meter-snapshot"]) => {
            let machine = (*id).to_owned();
            command(api, id, |reply| LineCommand::MeterSnapshot { machine, reply }).await
        }
        (&Method::POST, [API_VERSION, "machines", id, "long-poll"]) => {
            let Some(poll) = query.get("poll").and_then(|p| parse_poll(p)) else {
                let allowed: Vec<String> = AllowedPoll::ALL
                    .iter()
                    .map(|p| format!("{:02X}", p.long_poll().command()))
                    .collect();
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("poll= must be one of {} (hex)", allowed.join(", ")),
                );
            };
            let machine = (*id).to_owned();
            command(api, id, |reply| LineCommand::LongPoll { machine, poll, reply }).await
        }
        (&Method::POST, [API_VERSION, "destinations", name, "replay"]) => {
            replay(api, call.uid, name, query).await
        }
        (&Method::POST, [API_VERSION, "lines", line, "release"]) => release(api, line, query).await,
        (&Method::POST, [API_VERSION, "lines", line, "resume"]) => {
            let given_back = api.released.lock().map(|mut r| r.remove(*line)).ok().flatten();
            // Dropping the release hands the line back to its task.
            match given_back {
                Some(release) => {
                    drop(release);
                    json(StatusCode::OK, &serde_json::json!({ "line": line, "resumed": true }))
                }
                None => error(StatusCode::CONFLICT, format!("line {line} is not released")),
            }
        }
        (_, [API_VERSION, ..]) => error(StatusCode::NOT_FOUND, format!("no {method} {path}")),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("unknown API version in {path}; this is {API_VERSION}"),
        ),
    }
}

/// The answer when the remote-command task is not there.
fn no_command_task() -> Reply {
    error(StatusCode::SERVICE_UNAVAILABLE, "the remote-command task is not running")
}

/// The body of `disable` and `enable`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandRequest {
    reason: String,
}

/// `POST /v1/machines/{id}/disable|enable`: a command signed with the local key, submitted with
/// the caller's uid as its origin, answered once its outcome is durable. The verifier decides
/// as for any other command (an unknown machine is audited and answered `404`).
async fn remote_command(api: &Api, id: &str, action: Action, call: &Call<'_>) -> Reply {
    let Some(commands) = &api.commands else { return no_command_task() };
    let Some(issuer) = &commands.issuer else {
        return error(
            StatusCode::CONFLICT,
            "no local technician key: set [commands] local_key in the configuration",
        );
    };
    let reason = match serde_json::from_slice::<CommandRequest>(call.body) {
        Ok(request) => request.reason,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body {{\"reason\": TEXT}}: {e}")),
    };
    let envelope = issuer.envelope(action, id, reason.trim(), jiff::Timestamp::now());
    let origin = crate::command::local::origin(call.uid);
    match commands.submitter.submit(envelope, origin).await {
        Ok(outcome @ Outcome::Accepted { .. }) => json(StatusCode::ACCEPTED, &outcome),
        // A fresh id cannot be a duplicate; should it be, the stored state is the answer.
        Ok(outcome @ Outcome::Duplicate { .. }) => json(StatusCode::OK, &outcome),
        Ok(Outcome::Rejected { command_id, reason, detail }) => {
            let status = if reason == crate::command::verify::RejectReason::UnknownMachine.name() {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            json(
                status,
                &serde_json::json!({
                    "error": format!("rejected: {reason}: {detail}"),
                    "outcome": "rejected",
                    "command_id": command_id,
                    "reason": reason,
                    "detail": detail,
                }),
            )
        }
        Err(unavailable) => error(StatusCode::SERVICE_UNAVAILABLE, unavailable),
    }
}

/// `GET /v1/commands[?state=S]`: the stored commands, oldest first.
fn commands(api: &Api, query: &HashMap<String, String>) -> Reply {
    let Some(commands) = &api.commands else { return no_command_task() };
    let state = match query.get("state").map(|s| State::from_name(s)) {
        None => None,
        Some(Some(state)) => Some(state),
        Some(None) => {
            let names: Vec<&str> = State::ALL.iter().map(|s| s.name()).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!("state= must be one of {}", names.join(", ")),
            );
        }
    };
    match commands.reader.list(state) {
        Ok(list) => json(StatusCode::OK, &serde_json::json!({ "commands": list })),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/commands/{id}`: one stored command with its state history.
fn command_record(api: &Api, id: &str) -> Reply {
    let Some(commands) = &api.commands else { return no_command_task() };
    let Ok(uuid) = id.parse::<uuid::Uuid>() else {
        return error(StatusCode::BAD_REQUEST, format!("{id} is not a command id (a UUID)"));
    };
    match commands.reader.get(uuid) {
        Ok(Some(record)) => json(StatusCode::OK, &record),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no command {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn parse_poll(text: &str) -> Option<AllowedPoll> {
    let hex = text.trim_start_matches("0x").trim_start_matches("0X");
    u8::from_str_radix(hex, 16).ok().and_then(AllowedPoll::from_command)
}

/// Sends a command to the line of machine `id` and turns its answer into a reply.
async fn command(
    api: &Api,
    id: &str,
    build: impl FnOnce(tokio::sync::oneshot::Sender<Result<(), String>>) -> LineCommand,
) -> Reply {
    let Some(line) = api.view.snapshot().machine(id).map(|m| m.line) else {
        return error(StatusCode::NOT_FOUND, format!("no machine {id}"));
    };
    let Some(handle) = api.lines.iter().find(|h| h.name == line) else {
        return error(StatusCode::NOT_FOUND, format!("no line {line}"));
    };
    match handle.ask(build).await {
        Ok(Ok(())) => {
            json(StatusCode::ACCEPTED, &serde_json::json!({ "machine": id, "queued": true }))
        }
        Ok(Err(refused)) => error(StatusCode::CONFLICT, refused),
        Err(unavailable) => error(StatusCode::SERVICE_UNAVAILABLE, unavailable),
    }
}

/// Releases a line to a probe for `seconds` (default [`RELEASE_DEFAULT`]); it is given back by
/// `resume` or when the time is up, whichever comes first, so a probe that dies cannot keep a
/// line unpolled.
async fn release(api: &Arc<Api>, line: &str, query: &HashMap<String, String>) -> Reply {
    let seconds = match query.get("seconds").map(|s| s.parse::<u64>()) {
        None => RELEASE_DEFAULT,
        Some(Ok(s)) if s > 0 => Duration::from_secs(s).min(RELEASE_MAX),
        Some(_) => return error(StatusCode::BAD_REQUEST, "seconds= must be a positive integer"),
    };
    if api.released.lock().is_ok_and(|r| r.contains_key(line)) {
        return error(StatusCode::CONFLICT, format!("line {line} is released already"));
    }
    let Some(handle) = api.lines.iter().find(|h| h.name == line) else {
        return error(StatusCode::NOT_FOUND, format!("no line {line}"));
    };
    let release = match handle.ask(|reply| LineCommand::Release { reply }).await {
        Ok(release) => release,
        Err(unavailable) => return error(StatusCode::SERVICE_UNAVAILABLE, unavailable),
    };
    let number = api.releases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match api.released.lock() {
        Ok(mut released) => {
            released.insert(line.to_owned(), (number, release));
        }
        // A poisoned map cannot keep the release: dropping it gives the line back at once.
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the release cannot be kept"),
    }
    // Weak: a pending expiry must not keep the API (and its journal handle) alive at stop.
    let (api, name) = (Arc::downgrade(api), line.to_owned());
    tokio::spawn(async move {
        tokio::time::sleep(seconds).await;
        let Some(api) = api.upgrade() else { return };
        let mut released = match api.released.lock() {
            Ok(released) => released,
            Err(poisoned) => poisoned.into_inner(),
        };
        if released.get(&name).is_some_and(|(n, _)| *n == number) {
            released.remove(&name);
            tracing::warn!(target: "slotgate::audit", line = %name,
                "The probe's time on the line is up; the line is polled again.");
        }
    });
    let until =
        jiff::Timestamp::now() + jiff::SignedDuration::try_from(seconds).unwrap_or_default();
    json(StatusCode::OK, &serde_json::json!({ "line": line, "released_until": until }))
}

/// `POST /v1/destinations/{name}/replay?from=SEQ|since=RFC3339[&rate=N]`: the destination's
/// forwarder sends everything from there on again. Journalled first as a `replay` audit record
/// with the caller's uid, then carried out.
async fn replay(api: &Api, uid: u32, destination: &str, query: &HashMap<String, String>) -> Reply {
    use crate::forward::ReplayError;
    use crate::journal::JournalError;
    let rate = match query.get("rate").map(|r| r.parse::<u32>()) {
        None => None,
        Some(Ok(rate)) if rate > 0 => Some(rate),
        Some(_) => return error(StatusCode::BAD_REQUEST, "rate= must be a positive integer"),
    };
    let from = match (query.get("from"), query.get("since")) {
        (Some(seq), None) => match seq.parse::<u64>() {
            Ok(seq) => Ok(seq),
            Err(_) => return error(StatusCode::BAD_REQUEST, "from= must be a journal seq"),
        },
        (None, Some(time)) => match time.parse::<jiff::Timestamp>() {
            Ok(at) => api.journal.seq_at(at),
            Err(_) => return error(StatusCode::BAD_REQUEST, "since= must be an RFC 3339 time"),
        },
        _ => return error(StatusCode::BAD_REQUEST, "give one of from=SEQ or since=TIME"),
    };
    let not_kept = |e: JournalError| error(StatusCode::CONFLICT, format!("cannot replay: {e}"));
    let from = match from {
        Ok(from) => from,
        Err(e @ JournalError::NotKept { .. }) => return not_kept(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if !api.replays.contains(destination) {
        return error(StatusCode::NOT_FOUND, format!("no destination {destination}"));
    }
    let audit = crate::journal::NewRecord::audit(
        "replay",
        &serde_json::json!({
            "uid": uid,
            "destination": destination,
            "from": from,
            "since": query.get("since"),
            "rate": rate,
        }),
    );
    if let Err(e) = api.journal.append(vec![audit]).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot journal the audit record: {e}"),
        );
    }
    match api.replays.replay(destination, from, rate).await {
        Ok(replaying) => json(StatusCode::OK, &replaying),
        Err(ReplayError::UnknownDestination(name)) => {
            error(StatusCode::NOT_FOUND, format!("no destination {name}"))
        }
        Err(ReplayError::Journal(e @ JournalError::NotKept { .. })) => not_kept(e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /v1/events?from=SEQ&limit=N`: journal records from `from` (default: the durable end, so
/// a tail starts with what comes next), as JSON.
fn events(api: &Api, query: &HashMap<String, String>) -> Reply {
    let head = *api.journal.durable().borrow();
    let from = match query.get("from").map(|s| s.parse::<u64>()) {
        None => head,
        Some(Ok(seq)) => seq,
        Some(Err(_)) => {
            return error(StatusCode::BAD_REQUEST, "from= must be a journal sequence number");
        }
    };
    let limit = match query.get("limit").map(|s| s.parse::<usize>()) {
        None => MAX_EVENTS,
        Some(Ok(n)) => n.min(MAX_EVENTS),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "limit= must be a number"),
    };
    // Only what is durable: a tail must never show an event the journal could still lose.
    let limit = limit.min(usize::try_from(head.saturating_sub(from)).unwrap_or(usize::MAX));
    let records = match api.journal.read(from, limit) {
        Ok(records) => records,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let next = records.last().map_or(from, |r| r.header.seq + 1);
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let (event, alarm) = match &r.body {
                Some(Body::Event { canonical_json, .. }) => {
                    (serde_json::from_slice::<serde_json::Value>(canonical_json).ok(), None)
                }
                Some(Body::Alarm { alarm, level, message }) => (
                    None,
                    Some(serde_json::json!({ "alarm": alarm, "level": level, "message": message })),
                ),
                None => (None, None),
            };
            serde_json::json!({
                "seq": r.header.seq,
                "appended_at_ms": r.header.appended_at_ms,
                "class": r.header.class.name(),
                "machine": r.header.machine,
                "event": event,
                "alarm": alarm,
            })
        })
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "next": next, "head": head, "records": records }))
}
