//! The technician commands `status`, `machines`, `machine show` and `tail`: views of the state
//! model; and `replay`, which asks a destination's forwarder to send history again. They ask the running daemon over its admin socket ([`crate::admin`]); with the daemon
//! stopped, `status`, `machines` and `machine show` show the last state it left in
//! `status.json`, saying so. `machine disable|enable` and `commands list|show` give and follow
//! remote commands through the same socket (they need the running daemon). Human output fits
//! 100 columns; `--json` prints the API's JSON.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hyper::Method;

use crate::admin::client::{ClientError, request, request_with};
use crate::command::envelope::Action;
use crate::command::store::{CommandRecord, DesiredState, short_id};
use crate::config::Config;
use crate::poller::MachineStatus;
use crate::state::{MachineRow, Snapshot};

/// Where the state shown came from.
enum Source {
    /// The daemon answered.
    Live,
    /// The status file of a daemon that is stopped (or does not answer).
    File { stale: bool },
}

/// How a view ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// The daemon is running and answered.
    Running,
    /// Shown from the status file: the daemon is not running (exit status 3).
    NotRunning,
    /// `machine show` of an id no line has, `commands show` of an unknown id (exit status 4).
    NotFound,
    /// `machine disable|enable`: the daemon rejected the command (exit status 5).
    Rejected,
}

/// Status files older than this many status periods belong to a daemon that is not responding.
const STALE_PERIODS: u32 = 3;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The daemon's state: asked over the socket, or read from the status file when nothing answers.
fn snapshot(config: &Config) -> anyhow::Result<Option<(Snapshot, Source)>> {
    let asked = runtime()?.block_on(request(&config.admin.socket, Method::GET, "/v1/status"));
    match asked {
        Ok(value) => {
            let snapshot = serde_json::from_value(value).context("the daemon's status")?;
            Ok(Some((snapshot, Source::Live)))
        }
        Err(ClientError::NotRunning { .. }) => from_file(config),
        Err(error) => Err(error.into()),
    }
}

fn from_file(config: &Config) -> anyhow::Result<Option<(Snapshot, Source)>> {
    let path = config.storage.status_file();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let snapshot: Snapshot = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a status file", path.display()))?;
    let age = jiff::Timestamp::now().duration_since(snapshot.written_at);
    let stale =
        age.as_secs() > i64::from(STALE_PERIODS) * crate::app::STATUS_EVERY.as_secs() as i64;
    Ok(Some((snapshot, Source::File { stale })))
}

fn not_running(config: &Config) -> Shown {
    println!(
        "slotgate: not running (nothing answers on {} and no status at {}: has the daemon \
         run with this configuration?)",
        config.admin.socket.display(),
        config.storage.status_file().display()
    );
    Shown::NotRunning
}

fn shown(source: &Source) -> Shown {
    match source {
        Source::Live => Shown::Running,
        Source::File { .. } => Shown::NotRunning,
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// `slotgate status`.
pub fn status(config_file: &Path, json: bool) -> anyhow::Result<Shown> {
    let config = Config::load(config_file)?;
    let Some((state, source)) = snapshot(&config)? else { return Ok(not_running(&config)) };
    if json {
        print_json(&state)?;
        return Ok(shown(&source));
    }
    let mut out = std::io::stdout().lock();
    write_status(&mut out, &state, &source, jiff::Timestamp::now())?;
    Ok(shown(&source))
}

fn write_status(
    out: &mut impl Write,
    s: &Snapshot,
    source: &Source,
    now: jiff::Timestamp,
) -> std::io::Result<()> {
    let state = match source {
        Source::Live => {
            let up = s.started_at.map_or(String::new(), |t| format!(", up {}", age(t, now)));
            format!("running (pid {}{up})", s.pid)
        }
        Source::File { stale: true } if s.running => format!(
            "NOT RESPONDING or killed: last status {} ago (pid {})",
            age(s.written_at, now),
            s.pid
        ),
        Source::File { .. } => {
            format!("stopped at {} ({} ago)", s.written_at, age(s.written_at, now))
        }
    };
    writeln!(out, "slotgate: {state}")?;
    writeln!(out, "clock: {} (UTC)", now.strftime("%Y-%m-%d %H:%M:%S"))?;
    let j = &s.journal;
    writeln!(out, "journal {}", j.dir.display())?;
    writeln!(
        out,
        "  usage {} of {} ({} %), pressure {:?}; {} records (seq {}..{}), {} compacted",
        bytes(j.live_bytes),
        bytes(j.cap_bytes),
        j.live_bytes.saturating_mul(100) / j.cap_bytes.max(1),
        j.pressure,
        j.records,
        j.first_seq,
        j.next_seq,
        j.compacted
    )?;
    if let Some(free) = j.disk_free {
        writeln!(out, "  disk free {}, store on disk {}", bytes(free), bytes(j.size_on_disk))?;
    }
    match j.oldest_unacknowledged_at {
        Some(at) => writeln!(out, "  oldest unacknowledged record {} old", age(at, now))?,
        None if !j.cursors.is_empty() => {
            writeln!(out, "  every record acknowledged by every destination")?;
        }
        None => {}
    }
    if j.alarms.is_empty() {
        writeln!(out, "  alarms: none")?;
    }
    for alarm in &j.alarms {
        writeln!(out, "  ALARM {alarm}")?;
    }
    if let Some(q) = &j.quarantined {
        writeln!(out, "  quarantined store: {}", q.display())?;
    }
    for line in &s.lines {
        writeln!(out, "{line}")?;
        if !line.transport.is_empty() {
            writeln!(out, "  via {}", line.transport)?;
        }
        for m in &line.machines {
            writeln!(out, "  {}", machine_summary(m, now))?;
            if let Some(desired) = s.desired.get(&m.registry_id) {
                writeln!(out, "    desired: {}", desired_since(desired, now))?;
            }
        }
    }
    for d in &s.destinations {
        let eta = d.drain_eta_seconds.map_or(String::new(), |s| {
            format!(", about {} to drain", span(Duration::from_secs(s)))
        });
        writeln!(
            out,
            "destination {} ({}): {:?}, {} unacknowledged (replay backlog {}{eta}), cursor {}",
            d.name, d.kind, d.state, d.unacknowledged, d.backlog, d.cursor
        )?;
        writeln!(
            out,
            "  in flight {}, delivered {}, quarantined {}, replay rate {}/s",
            d.in_flight, d.delivered, d.quarantined, d.replay_rate
        )?;
        if let Some(error) = &d.last_error {
            writeln!(out, "  last error: {}", clip(error, 84))?;
        }
    }
    Ok(())
}

/// One machine in one line of at most 98 characters.
fn machine_summary(m: &MachineStatus, now: jiff::Timestamp) -> String {
    let last = match (&m.last_event, m.last_event_at) {
        (Some(kind), Some(at)) => format!("{} {} ago", clip(kind, 22), age(at, now)),
        _ => "no event yet".to_owned(),
    };
    let errors = m.timeouts.saturating_add(m.crc_errors).saturating_add(m.decode_errors);
    // An acknowledged exception whose data is not read yet is worth a technician's eye.
    let owed = match m.exceptions_pending {
        0 => String::new(),
        n => format!(" owed {n}"),
    };
    let summary = format!(
        "{:<14} addr {:>3} {:<8} {:>11}  last {:<30} errors {errors}{owed}",
        clip(&m.registry_id, 14),
        m.address,
        m.link,
        age(m.link_since, now),
        last,
    );
    clip(&summary, 98)
}

/// A desired state with its age: `disabled (cmd 1a2b3c4d) since 3 min 2 s`.
fn desired_since(desired: &DesiredState, now: jiff::Timestamp) -> String {
    format!("{} since {}", desired.label(), age(desired.since, now))
}

/// `slotgate machines [--line L]`.
pub fn machines(config_file: &Path, line: Option<&str>, json: bool) -> anyhow::Result<Shown> {
    let config = Config::load(config_file)?;
    let Some((state, source)) = snapshot(&config)? else { return Ok(not_running(&config)) };
    let rows = state.machines(line);
    if json {
        print_json(&serde_json::json!({ "machines": rows }))?;
        return Ok(shown(&source));
    }
    let mut out = std::io::stdout().lock();
    if let Source::File { .. } = source {
        writeln!(out, "(daemon not running: its last state, {})", state.written_at)?;
    }
    write_machines(&mut out, &rows, jiff::Timestamp::now())?;
    Ok(shown(&source))
}

fn write_machines(
    out: &mut impl Write,
    rows: &[MachineRow],
    now: jiff::Timestamp,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<8} {:<14} {:>4} {:<8} {:>11} {:<15} {:>9} {:>6} {:>6} {:>5} {:<3}",
        "LINE",
        "MACHINE",
        "ADDR",
        "LINK",
        "SINCE",
        "LAST EVENT",
        "POLLS",
        "RETRY",
        "TMOUT",
        "CRC",
        "RTE"
    )?;
    for row in rows {
        let m = &row.machine;
        writeln!(
            out,
            "{:<8} {:<14} {:>4} {:<8} {:>11} {:<15} {:>9} {:>6} {:>6} {:>5} {:<3}",
            clip(&row.line, 8),
            clip(&m.registry_id, 14),
            m.address,
            m.link,
            age(m.link_since, now),
            clip(m.last_event.as_deref().unwrap_or("-"), 15),
            m.polls,
            m.retries,
            m.timeouts,
            m.crc_errors,
            if m.rte { "on" } else { "off" }
        )?;
    }
    let desired: Vec<_> =
        rows.iter().filter_map(|r| r.desired.map(|d| (&r.machine.registry_id, d))).collect();
    if !desired.is_empty() {
        writeln!(out, "desired states (remote commands):")?;
    }
    for (machine, state) in desired {
        writeln!(out, "  {:<14} {}", clip(machine, 14), desired_since(&state, now))?;
    }
    Ok(())
}

/// `slotgate machine show ID`.
pub fn machine_show(config_file: &Path, id: &str, json: bool) -> anyhow::Result<Shown> {
    let config = Config::load(config_file)?;
    let Some((state, source)) = snapshot(&config)? else { return Ok(not_running(&config)) };
    let Some(row) = state.machine(id) else {
        eprintln!("slotgate: no machine {id} in the configuration the daemon runs");
        return Ok(Shown::NotFound);
    };
    if json {
        print_json(&row)?;
        return Ok(shown(&source));
    }
    let now = jiff::Timestamp::now();
    let m = &row.machine;
    let mut out = std::io::stdout().lock();
    if let Source::File { .. } = source {
        writeln!(out, "(daemon not running: its last state, {})", state.written_at)?;
    }
    let at = |t: Option<jiff::Timestamp>| {
        t.map_or_else(|| "-".to_owned(), |t| format!("{} ago", age(t, now)))
    };
    writeln!(out, "machine {} (line {}, address {})", m.registry_id, row.line, m.address)?;
    writeln!(out, "  link          {} for {}", m.link, age(m.link_since, now))?;
    writeln!(
        out,
        "  last event    {} ({})",
        m.last_event.as_deref().unwrap_or("-"),
        at(m.last_event_at)
    )?;
    writeln!(out, "  next seq      {}", m.next_seq)?;
    writeln!(out, "  RTE           {}", if m.rte { "on" } else { "off" })?;
    writeln!(out, "  play          {}", if m.enabled { "enabled" } else { "DISABLED" })?;
    let desired = row.desired.map_or_else(|| "-".to_owned(), |d| desired_since(&d, now));
    writeln!(out, "  desired       {desired}")?;
    let drift =
        m.clock_drift_seconds.map_or_else(|| "within threshold".to_owned(), |s| format!("{s} s"));
    writeln!(out, "  clock drift   {drift}")?;
    writeln!(
        out,
        "  counters      polls {}, retries {}, timeouts {}, CRC errors {}, other bad answers {}",
        m.polls, m.retries, m.timeouts, m.crc_errors, m.decode_errors
    )?;
    writeln!(
        out,
        "                busy {}, chirps {}, dropped reports {}",
        m.busy, m.chirps, m.dropped_reports
    )?;
    writeln!(
        out,
        "                polls queued {}, exceptions pending {}",
        m.polls_queued, m.exceptions_pending
    )?;
    match &m.features {
        Some(f) => {
            let raw: Vec<String> = f.raw.iter().map(|b| format!("{b:02X}")).collect();
            let yes = |on: bool| if on { "yes" } else { "no" };
            writeln!(out, "  features      LPA0 {}", raw.join(" "))?;
            writeln!(
                out,
                "                validation {}, ticket redemption {}, AFT {}",
                f.validation,
                yes(f.ticket_redemption),
                yes(f.aft)
            )?;
            writeln!(
                out,
                "                legacy bonus {}, extended meters {}, multi-denomination {}",
                yes(f.legacy_bonus_awards),
                yes(f.extended_meters),
                yes(f.multi_denomination)
            )?;
        }
        None => writeln!(out, "  features      - (LPA0 not read or not supported)")?,
    }
    writeln!(out, "  meters        {}", at(m.meters_at))?;
    for (name, value) in &m.meters {
        writeln!(out, "    {name:<32} {value:>20}")?;
    }
    Ok(shown(&source))
}

/// What a command call to the daemon came to, when it was not an answer.
fn refused(config: &Config, error: ClientError) -> anyhow::Result<Shown> {
    match error {
        ClientError::NotRunning { .. } => {
            eprintln!(
                "slotgate: not running (nothing answers on {})",
                config.admin.socket.display()
            );
            Ok(Shown::NotRunning)
        }
        ClientError::Refused { status, message } if status == hyper::StatusCode::NOT_FOUND => {
            eprintln!("slotgate: {message}");
            Ok(Shown::NotFound)
        }
        // Rejected by verification (audited), or no local key to sign with.
        ClientError::Refused { status, message }
            if status == hyper::StatusCode::UNPROCESSABLE_ENTITY
                || status == hyper::StatusCode::CONFLICT =>
        {
            eprintln!("slotgate: {message}");
            Ok(Shown::Rejected)
        }
        error => Err(error.into()),
    }
}

/// Asks the running daemon; its answer, or how the view ends when there is none.
fn ask(
    config: &Config,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<Result<serde_json::Value, Shown>> {
    match runtime()?.block_on(request_with(&config.admin.socket, method, path, body)) {
        Ok(value) => Ok(Ok(value)),
        Err(error) => refused(config, error).map(Err),
    }
}

/// `slotgate machine disable|enable ID --reason TEXT`: the daemon signs it with the local key
/// and answers once the command is journalled; prints its id and where it stands.
pub fn remote_command(
    args: &crate::cli::RemoteCommandArgs,
    action: Action,
) -> anyhow::Result<Shown> {
    let config = Config::load(&args.config)?;
    let (id, path) = (&args.id, format!("/v1/machines/{}/{}", args.id, action.name()));
    let body = serde_json::json!({ "reason": args.reason });
    let outcome = match ask(&config, Method::POST, &path, Some(&body))? {
        Ok(outcome) => outcome,
        Err(shown) => return Ok(shown),
    };
    if args.json {
        print_json(&outcome)?;
    } else {
        println!(
            "{} {id}: {} as command {}, now {}",
            action.name(),
            outcome["outcome"].as_str().unwrap_or("?"),
            outcome["command_id"].as_str().unwrap_or("?"),
            outcome["state"].as_str().unwrap_or("?"),
        );
    }
    Ok(Shown::Running)
}

/// `slotgate commands list [--state S]`.
pub fn commands_list(config_file: &Path, state: Option<&str>, json: bool) -> anyhow::Result<Shown> {
    let config = Config::load(config_file)?;
    let path = match state {
        Some(state) => format!("/v1/commands?state={state}"),
        None => "/v1/commands".to_owned(),
    };
    let page = match ask(&config, Method::GET, &path, None)? {
        Ok(page) => page,
        Err(shown) => return Ok(shown),
    };
    if json {
        print_json(&page)?;
        return Ok(Shown::Running);
    }
    let records: Vec<CommandRecord> =
        serde_json::from_value(page["commands"].clone()).context("the daemon's command list")?;
    let mut out = std::io::stdout().lock();
    write_commands(&mut out, &records)?;
    Ok(Shown::Running)
}

fn write_commands(out: &mut impl Write, records: &[CommandRecord]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<8} {:<7} {:<9} {:<19} {:<16} {:<14} REASON",
        "COMMAND", "ACTION", "STATE", "ISSUED (UTC)", "ORIGIN", "MACHINES"
    )?;
    for r in records {
        let machines: Vec<&str> = r.targets.iter().map(|(m, _)| m.as_str()).collect();
        let line = format!(
            "{:<8} {:<7} {:<9} {:<19} {:<16} {:<14} {}",
            short_id(r.id),
            r.action.name(),
            r.state.name(),
            r.issued_at.strftime("%Y-%m-%d %H:%M:%S"),
            clip(&r.origin, 16),
            clip(&machines.join(","), 14),
            r.reason
        );
        writeln!(out, "{}", clip(&line, 100))?;
    }
    Ok(())
}

/// `slotgate commands show ID`.
pub fn commands_show(config_file: &Path, id: &str, json: bool) -> anyhow::Result<Shown> {
    let config = Config::load(config_file)?;
    let value = match ask(&config, Method::GET, &format!("/v1/commands/{id}"), None)? {
        Ok(value) => value,
        Err(shown) => return Ok(shown),
    };
    if json {
        print_json(&value)?;
        return Ok(Shown::Running);
    }
    let record: CommandRecord = serde_json::from_value(value).context("the daemon's command")?;
    let mut out = std::io::stdout().lock();
    write_command(&mut out, &record)?;
    Ok(Shown::Running)
}

fn write_command(out: &mut impl Write, r: &CommandRecord) -> std::io::Result<()> {
    let time = |t: jiff::Timestamp| t.strftime("%Y-%m-%d %H:%M:%S").to_string();
    writeln!(out, "command {} ({})", r.id, r.state.name())?;
    writeln!(out, "  action    {}", r.action.name())?;
    writeln!(out, "  reason    {}", clip(&r.reason, 88))?;
    writeln!(out, "  origin    {}", clip(&r.origin, 88))?;
    writeln!(out, "  signed by {}", clip(&r.signers.join(", "), 88))?;
    writeln!(
        out,
        "  valid     issued {}, from {} until {} (UTC)",
        time(r.issued_at),
        time(r.not_before),
        time(r.expires_at)
    )?;
    for (machine, state) in &r.targets {
        writeln!(out, "  machine   {:<14} {}", clip(machine, 14), state.name())?;
    }
    writeln!(out, "history:")?;
    for t in &r.history {
        let why = match (t.reason, &t.detail) {
            (Some(reason), Some(detail)) => format!("{}: {detail}", reason.name()),
            (Some(reason), None) => reason.name().to_owned(),
            (None, Some(detail)) => detail.clone(),
            (None, None) => String::new(),
        };
        let line = format!(
            "  {} {:<9} {:<14} {why}",
            t.at.strftime("%Y-%m-%d %H:%M:%S%.3f"),
            t.state.name(),
            clip(t.machine.as_deref().unwrap_or("all"), 14),
        );
        writeln!(out, "{}", clip(line.trim_end(), 100))?;
    }
    Ok(())
}

/// What `tail` shows.
#[derive(Debug, Clone, Default)]
pub struct TailFilter {
    pub machine: Option<String>,
    pub kind: Option<String>,
    /// `SEQ` or an RFC 3339 time; none: from what comes next.
    pub since: Option<String>,
}

/// How often `tail` asks for new records when there were none.
const TAIL_EVERY: Duration = Duration::from_millis(250);

/// `slotgate tail`: journalled records as they come, until interrupted.
pub fn tail(config_file: &Path, filter: &TailFilter, json: bool) -> anyhow::Result<Shown> {
    let config = Config::load(config_file)?;
    let (mut from, since_time) = match filter.since.as_deref() {
        None => (None, None),
        Some(text) => match text.parse::<u64>() {
            Ok(seq) => (Some(seq), None),
            Err(_) => {
                let time = text.parse::<jiff::Timestamp>().with_context(|| {
                    format!("--since {text}: neither a sequence number nor an RFC 3339 time")
                })?;
                (Some(0), Some(time.as_millisecond()))
            }
        },
    };
    let runtime = runtime()?;
    let mut out = std::io::stdout().lock();
    loop {
        let path = match from {
            Some(seq) => format!("/v1/events?from={seq}"),
            None => "/v1/events".to_owned(),
        };
        let page = match runtime.block_on(request(&config.admin.socket, Method::GET, &path)) {
            Ok(page) => page,
            Err(ClientError::NotRunning { .. }) if from.is_none() => {
                return Ok(not_running(&config));
            }
            Err(error) => return Err(error.into()),
        };
        let records = page["records"].as_array().map_or(&[][..], Vec::as_slice);
        for record in records {
            if !wanted(record, filter, since_time) {
                continue;
            }
            if json {
                serde_json::to_writer(&mut out, record)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{}", tail_line(record))?;
            }
        }
        out.flush()?;
        from = page["next"].as_u64().or(from);
        if records.is_empty() {
            runtime.block_on(async { tokio::time::sleep(TAIL_EVERY).await });
        }
    }
}

/// What `replay` asks for.
#[derive(Debug, Clone)]
pub struct Replay {
    pub destination: String,
    /// `SEQ` or an RFC 3339 time.
    pub from: String,
    pub rate: Option<u32>,
}

/// How often `replay` looks at the destination's cursor while it waits.
const REPLAY_WATCH_EVERY: Duration = Duration::from_millis(250);

/// `slotgate replay`: asks the daemon to replay, then waits until the destination's cursor is
/// back where the replay began (a bar on a terminal).
pub fn replay(config_file: &Path, replay: &Replay, json: bool) -> anyhow::Result<Shown> {
    let config = Config::load(config_file)?;
    let from = match replay.from.parse::<u64>() {
        Ok(seq) => format!("from={seq}"),
        Err(_) => {
            let time = replay.from.parse::<jiff::Timestamp>().with_context(|| {
                format!("--from {}: neither a sequence number nor an RFC 3339 time", replay.from)
            })?;
            // UTC with a `Z`: nothing in it needs percent-encoding.
            format!("since={time}")
        }
    };
    let rate = replay.rate.map(|r| format!("&rate={r}")).unwrap_or_default();
    let path = format!("/v1/destinations/{}/replay?{from}{rate}", replay.destination);
    let runtime = runtime()?;
    let answer = match runtime.block_on(request(&config.admin.socket, Method::POST, &path)) {
        Ok(answer) => answer,
        Err(ClientError::NotRunning { .. }) => {
            println!(
                "slotgate: not running (nothing answers on {}): a replay needs the daemon",
                config.admin.socket.display()
            );
            return Ok(Shown::NotRunning);
        }
        Err(error) => return Err(error.into()),
    };
    if json {
        print_json(&answer)?;
        return Ok(Shown::Running);
    }
    let replaying: crate::forward::Replaying =
        serde_json::from_value(answer).context("the daemon's answer to the replay")?;
    let total = replaying.until.saturating_sub(replaying.from);
    if total == 0 {
        println!("Nothing to replay: the journal ends at seq {}.", replaying.until);
        return Ok(Shown::Running);
    }
    let bar = crate::progress::bar(Some(total));
    bar.set_message(format!("replaying to {}", replaying.destination));
    loop {
        let status = runtime.block_on(request(&config.admin.socket, Method::GET, "/v1/status"))?;
        let cursor = status["destinations"]
            .as_array()
            .and_then(|all| all.iter().find(|d| d["name"] == replaying.destination.as_str()))
            .and_then(|d| d["cursor"].as_u64())
            .unwrap_or(replaying.from);
        bar.set_position(cursor.min(replaying.until).saturating_sub(replaying.from));
        if cursor >= replaying.until {
            break;
        }
        runtime.block_on(async { tokio::time::sleep(REPLAY_WATCH_EVERY).await });
    }
    bar.finish_and_clear();
    println!(
        "Replayed {total} record(s), seq {} to {}, to {} (at most {} a second).",
        replaying.from,
        replaying.until.saturating_sub(1),
        replaying.destination,
        replaying.rate
    );
    Ok(Shown::Running)
}

fn wanted(record: &serde_json::Value, filter: &TailFilter, since_ms: Option<i64>) -> bool {
    let machine_ok = filter.machine.as_deref().is_none_or(|m| record["machine"] == m);
    let kind = record["event"]["kind"]
        .as_str()
        .or_else(|| record["alarm"]["alarm"].as_str().map(|_| "alarm"));
    let kind_ok = filter.kind.as_deref().is_none_or(|k| kind == Some(k));
    let time_ok =
        since_ms.is_none_or(|t| record["appended_at_ms"].as_i64().is_some_and(|a| a >= t));
    machine_ok && kind_ok && time_ok
}

/// One record on one line: `seq  time  machine  kind  data`, at most 100 characters.
fn tail_line(record: &serde_json::Value) -> String {
    let seq = record["seq"].as_u64().unwrap_or_default();
    let time = record["appended_at_ms"]
        .as_i64()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| "-".to_owned(), |t| t.strftime("%H:%M:%S%.3f").to_string());
    let machine = record["machine"].as_str().filter(|m| !m.is_empty()).unwrap_or("gateway");
    let (kind, detail) = match (&record["event"], &record["alarm"]) {
        (event, _) if event.is_object() => (
            event["kind"].as_str().unwrap_or("?").to_owned(),
            format!("#{} {}", event["machine_seq"], event["data"]),
        ),
        (_, alarm) if alarm.is_object() => (
            "alarm".to_owned(),
            format!(
                "{} {}",
                alarm["alarm"].as_str().unwrap_or("?"),
                alarm["message"].as_str().unwrap_or("")
            ),
        ),
        _ => ("compacted".to_owned(), String::new()),
    };
    let line =
        format!("{seq:>8} {time} {:<14} {:<20} {detail}", clip(machine, 14), clip(&kind, 20));
    clip(&line, 100)
}

/// `s`, cut to `max` characters with an ellipsis.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// 1536 → "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} bytes"),
        _ => format!("{value:.1} {}", UNITS.get(unit).copied().unwrap_or("?")),
    }
}

/// 11_520 s → "3 h 12 min".
pub fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// How long ago `t` was, in [`span`]'s units.
fn age(t: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let seconds = now.duration_since(t).as_secs().max(0);
    span(Duration::from_secs(seconds.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_for_people() {
        assert_eq!(bytes(512), "512 bytes");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(span(Duration::from_secs(11_520)), "3 h 12 min");
        assert_eq!(span(Duration::from_secs(59)), "59 s");
        assert_eq!(span(Duration::from_secs(90_000)), "1 d 1 h");
    }

    #[test]
    fn a_machine_summary_fits_the_screen() {
        let now = jiff::Timestamp::now();
        let mut m = MachineStatus::new("UA-VERY-LONG-REGISTRY-ID-0001".into(), 127, now);
        m.last_event = Some("significant_event_with_a_long_name".into());
        m.last_event_at = Some(now);
        m.timeouts = 999_999;
        m.polls = 123_456_789;
        assert!(machine_summary(&m, now).chars().count() <= 100, "{}", machine_summary(&m, now));
        let desired = DesiredState {
            action: Action::Disable,
            command_id: uuid::Uuid::from_u128(u128::MAX),
            issued_at: now,
            since: now - jiff::SignedDuration::from_hours(49),
        };
        let row =
            MachineRow { line: "a-long-line-name".into(), machine: m, desired: Some(desired) };
        let mut out = Vec::new();
        write_machines(&mut out, &[row], now).unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in text.lines() {
            assert!(line.chars().count() <= 100, "{line}");
        }
        assert!(text.contains("UA-VERY-LONG-… disabled (cmd ffffffff) since 2 d 1 h"), "{text}");
    }

    #[test]
    fn a_command_and_its_history_fit_the_screen() {
        let at: jiff::Timestamp = "2026-12-07T08:00:00Z".parse().unwrap();
        let record = CommandRecord {
            id: uuid::Uuid::from_u128(0x1a2b_3c4d << 96),
            action: Action::Disable,
            reason: "a reason far longer than any screen is wide, ".repeat(4),
            issued_at: at,
            not_before: at,
            expires_at: at + jiff::SignedDuration::from_hours(1),
            origin: "admin uid=4294967295".into(),
            signers: vec!["tech".into()],
            envelope: String::new(),
            state: crate::command::store::State::Failed,
            targets: vec![(
                "UA-VERY-LONG-REGISTRY-ID-0001".into(),
                crate::command::store::State::Failed,
            )],
            history: vec![crate::command::store::Transition {
                state: crate::command::store::State::Failed,
                at,
                machine: Some("UA-VERY-LONG-REGISTRY-ID-0001".into()),
                reason: Some(crate::command::audit::FailReason::GameStartedAfterShutdown),
                detail: Some("a detail far longer than any screen is wide, ".repeat(3)),
            }],
        };
        let mut out = Vec::new();
        write_commands(&mut out, std::slice::from_ref(&record)).unwrap();
        write_command(&mut out, &record).unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in text.lines() {
            assert!(line.chars().count() <= 100, "{line}");
        }
        assert!(text.contains("1a2b3c4d disable failed"), "{text}");
        assert!(
            text.contains("failed    UA-VERY-LONG-… game_started_after_shutdown: a detail"),
            "{text}"
        );
    }
}
