//! `sotto`: a command-line Sotto client. One data directory per profile holds the
//! encrypted SQLite store and its key.
//!
//! ```text
//! sotto --profile alice init --relay http://127.0.0.1:8080
//! sotto --profile alice whoami [--link]
//! sotto --profile alice add <contact link or account id>
//! sotto --profile alice send <contact> <text>
//! sotto --profile alice receive            # fetch what is queued, print it, exit
//! sotto --profile alice chat <contact>     # interactive
//! sotto --profile alice safety <contact>
//! sotto --profile alice messages <contact>
//! sotto --profile alice link [--grant-list-key] [--yes]   # show a code, confirm the new device
//! sotto --profile phone join <code> --relay http://127.0.0.1:8080 [--name phone]
//! sotto --profile alice devices
//! sotto --profile alice remove-device <id> [--recovery-key]   # the key from stdin
//! sotto --profile alice recovery-key       # print the recovery key once (keep it offline)
//! sotto --profile phone recover            # read a recovery key from stdin
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sotto_crypto::{AccountId, DeviceId};
use sotto_sdk::store::{SqliteStore, StoreKey};
use sotto_sdk::{Client, ClientError, ClientOptions, Event, EventStream, MessageStatus, Page, StoredMessage};
use tokio::io::AsyncBufReadExt;

/// Prints a line; a closed stdout (`sotto ... | head -1`) is not an error.
macro_rules! out {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

#[derive(Parser, Debug)]
#[command(name = "sotto", version, about = "Sotto command-line client")]
struct Cli {
    /// Profile name: the data directory is `$SOTTO_HOME/<profile>` (default
    /// `$HOME/.local/share/sotto/<profile>`).
    #[arg(long, global = true, default_value = "default", env = "SOTTO_PROFILE")]
    profile: String,
    /// Use this data directory instead of the profile's.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an account (its first device) on a relay.
    Init {
        /// The relay's URL, exactly as its `public_url`.
        #[arg(long, env = "SOTTO_RELAY")]
        relay: String,
    },
    /// Show this account's id, contact link and device.
    Whoami {
        /// Print only the contact link.
        #[arg(long)]
        link: bool,
    },
    /// Add a contact by contact link or account id.
    Add {
        /// `sotto:<account id>.<access key>` (as `whoami --link` prints it) or the account
        /// id (then the first messages are message requests).
        contact: String,
    },
    /// Send a text and wait until the relay stored it.
    Send {
        /// A contact (link, id, or the start of an id).
        contact: String,
        /// The text.
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Fetch and print what arrived while offline, then exit.
    Receive,
    /// Chat with a contact: incoming messages are printed as they arrive; each line
    /// typed is sent.
    Chat {
        /// A contact (link, id, or the start of an id).
        contact: String,
    },
    /// Print a conversation.
    Messages {
        /// A contact (link, id, or the start of an id).
        contact: String,
    },
    /// Show the safety number with a contact; compare it in person.
    Safety {
        /// A contact (link, id, or the start of an id).
        contact: String,
    },
    /// List this account's contacts.
    Contacts,
    /// On a device holding the list key: show a code that links a new device, wait for
    /// its request, show its name and fingerprint and ask for confirmation.
    Link {
        /// Give the new device the list key (it can then link devices and remove devices
        /// without it; removing it then needs the recovery key).
        #[arg(long)]
        grant_list_key: bool,
        /// Confirm without asking (scripts; the fingerprint is still printed).
        #[arg(long)]
        yes: bool,
    },
    /// On a new device: join an account with the code its device showed.
    Join {
        /// The code `sotto link` printed.
        code: String,
        /// The relay's URL.
        #[arg(long, env = "SOTTO_RELAY")]
        relay: String,
        /// The name the existing device shows for this one.
        #[arg(long, default_value = "sotto-cli")]
        name: String,
    },
    /// Print this account's recovery key, once: the first device then deletes the
    /// account key (keep the printed key offline).
    RecoveryKey,
    /// With a recovery key read from stdin, give this device the list key of a new epoch
    /// (every device that held an earlier one can no longer change the device list).
    Recover,
    /// List this account's devices.
    Devices,
    /// Remove another device of this account.
    RemoveDevice {
        /// Its device id.
        id: u32,
        /// Read the recovery key from stdin: needed to remove a device that holds the
        /// list key.
        #[arg(long)]
        recovery_key: bool,
    },
}

fn data_dir(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(d) = &cli.data_dir {
        return Ok(d.clone());
    }
    if cli.profile.is_empty()
        || !cli
            .profile
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("a profile name is letters, digits, '-' and '_'".into());
    }
    let root = match std::env::var_os("SOTTO_HOME") {
        Some(h) => PathBuf::from(h),
        None => match std::env::var_os("XDG_DATA_HOME") {
            Some(x) => PathBuf::from(x).join("sotto"),
            None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set")?).join(".local/share/sotto"),
        },
    };
    Ok(root.join(&cli.profile))
}

/// The store key lives next to the store, readable only by the user. (An app keeps it
/// in the platform keystore instead.)
fn store_key(dir: &Path, create: bool) -> Result<StoreKey, String> {
    let path = dir.join("store.key");
    match std::fs::read(&path) {
        Ok(b) => {
            let k: [u8; 32] = b.as_slice().try_into().map_err(|_| "store.key is damaged")?;
            Ok(StoreKey::new(k))
        }
        Err(_) if create => {
            let mut k = [0u8; 32];
            getrandom::getrandom(&mut k).map_err(|e| e.to_string())?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut f = options
                .open(&path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            f.write_all(&k).map_err(|e| e.to_string())?;
            Ok(StoreKey::new(k))
        }
        Err(_) => Err(format!("no account in {} (run `sotto init` first)", dir.display())),
    }
}

async fn open_store(dir: &Path, create: bool) -> Result<(SqliteStore, StoreKey), String> {
    if create {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let key = store_key(dir, create)?;
    let store = SqliteStore::open(&dir.join("sotto.db"), &key)
        .await
        .map_err(|e| e.to_string())?;
    Ok((store, key))
}

async fn open_client(dir: &Path) -> Result<(Client<SqliteStore>, EventStream), String> {
    let (store, key) = open_store(dir, false).await?;
    let client = Client::open(store, key, ClientOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let events = client.events().ok_or("no event stream")?;
    Ok((client, events))
}

async fn resolve(client: &Client<SqliteStore>, contact: &str) -> Result<AccountId, String> {
    if let Ok(id) = sotto_sdk::parse_contact(contact) {
        return Ok(id);
    }
    let prefix = contact.trim().to_ascii_lowercase();
    let matches: Vec<AccountId> = client
        .conversations()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| !prefix.is_empty() && c.to_string().starts_with(&prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!("no contact matches {contact:?}")),
        _ => Err(format!("{contact:?} matches several contacts")),
    }
}

fn short(a: &AccountId) -> String {
    a.to_string().chars().take(8).collect()
}

fn show(m: &StoredMessage) -> String {
    let who = if m.status.is_outgoing() {
        "me".to_owned()
    } else {
        short(&m.sender.0)
    };
    let mark = match m.status {
        MessageStatus::Queued => " (queued)",
        MessageStatus::SentElsewhere => " (from my other device)",
        _ => "",
    };
    format!("[{}] {who}: {}{mark}", short(&m.conversation), m.text)
}

/// Before a one-shot command exits: sends the receipts it owes now (not after their
/// random delay) and waits (up to `within`) until the outbox is empty, so they go out
/// now rather than the next time sotto connects.
async fn drain_outbox(client: &Client<SqliteStore>, within: Duration) {
    client.send_receipts_now().await;
    let until = tokio::time::Instant::now() + within;
    while client.outbox_len().await.unwrap_or(0) > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_event(events: &mut EventStream, timeout: Duration, mut f: impl FnMut(&Event) -> bool) -> Option<Event> {
    tokio::time::timeout(timeout, async {
        while let Some(e) = events.next().await {
            if f(&e) {
                return Some(e);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// `create_account`, retrying while the relay is not up yet (a script may start it just before).
async fn create(dir: &Path, relay: &str) -> Result<Client<SqliteStore>, String> {
    let mut delay = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (store, key) = open_store(dir, true).await?;
        match Client::create_account(store, key, relay, ClientOptions::default()).await {
            Ok(c) => return Ok(c),
            Err(ClientError::Transport(t)) if t.is_retryable() && tokio::time::Instant::now() < deadline => {
                // Start again from an empty store.
                let _ = std::fs::remove_file(dir.join("sotto.db"));
                let _ = std::fs::remove_file(dir.join("sotto.db-wal"));
                let _ = std::fs::remove_file(dir.join("sotto.db-shm"));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// One line from stdin (a recovery key), wiped when dropped.
async fn read_secret_line() -> Result<zeroize::Zeroizing<String>, String> {
    let mut line = zeroize::Zeroizing::new(String::new());
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    stdin.read_line(&mut line).await.map_err(|e| e.to_string())?;
    Ok(line)
}

async fn run(cli: Cli) -> Result<(), String> {
    let dir = data_dir(&cli)?;
    match cli.command {
        Command::Init { relay } => {
            if dir.join("store.key").exists() {
                return Err(format!("{} already holds an account", dir.display()));
            }
            let client = create(&dir, &relay).await?;
            out!("account {}", client.account_id());
            out!("contact link {}", client.contact_link());
            client.shutdown().await;
        }
        Command::Whoami { link } => {
            let (store, key) = open_store(&dir, false).await?;
            let options = ClientOptions {
                connect: false,
                ..ClientOptions::default()
            };
            let client = Client::open(store, key, options).await.map_err(|e| e.to_string())?;
            if link {
                out!("{}", client.contact_link());
            } else {
                out!("account {}", client.account_id());
                out!("contact link {}", client.contact_link());
                out!("device {}", client.device_id());
            }
        }
        Command::Add { contact } => {
            let (client, _) = open_client(&dir).await?;
            let id = client.add_contact(&contact).await.map_err(|e| e.to_string())?;
            out!("added {id}");
            out!(
                "safety number {}",
                client.safety_number(&id).await.map_err(|e| e.to_string())?
            );
            client.shutdown().await;
        }
        Command::Send { contact, text } => {
            let (client, mut events) = open_client(&dir).await?;
            let to = resolve(&client, &contact).await?;
            if !client.conversations().await.map_err(|e| e.to_string())?.contains(&to) {
                client.add_contact(&to.to_string()).await.map_err(|e| e.to_string())?;
            }
            let m = client
                .send_text(&to, &text.join(" "))
                .await
                .map_err(|e| e.to_string())?;
            let id = m.id;
            let done = wait_event(&mut events, Duration::from_secs(30), |e| match e {
                Event::MessageSent { id: sent, .. } => *sent == id,
                Event::SendFailed { id: failed, .. } => *failed == id,
                _ => false,
            })
            .await;
            if matches!(done, Some(Event::MessageSent { .. })) {
                drain_outbox(&client, Duration::from_secs(15)).await;
            }
            client.shutdown().await;
            match done {
                Some(Event::MessageSent { .. }) => out!("sent"),
                Some(Event::SendFailed { reason, .. }) => return Err(format!("not sent: {reason}")),
                _ => out!("queued; it is sent the next time sotto connects"),
            }
        }
        Command::Receive => {
            let (client, mut events) = open_client(&dir).await?;
            let got = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(e) = events.next().await {
                    match e {
                        Event::MessageReceived(m) => out!("{}", show(&m)),
                        Event::Undecryptable { cause, .. } => out!("(undecryptable: {cause})"),
                        Event::CaughtUp => return true,
                        _ => {}
                    }
                }
                false
            })
            .await;
            if got == Ok(true) {
                drain_outbox(&client, Duration::from_secs(15)).await;
            }
            client.shutdown().await;
            if got != Ok(true) {
                return Err("the relay did not answer".into());
            }
        }
        Command::Chat { contact } => {
            let (client, mut events) = open_client(&dir).await?;
            let to = resolve(&client, &contact).await?;
            if !client.conversations().await.map_err(|e| e.to_string())?.contains(&to) {
                client.add_contact(&to.to_string()).await.map_err(|e| e.to_string())?;
            }
            for m in client.messages(&to, Page::default()).await.map_err(|e| e.to_string())? {
                out!("{}", show(&m));
            }
            out!(
                "-- chatting with {}; type a line to send, Ctrl-D to quit --",
                short(&to)
            );
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            let mut stdin_open = true;
            loop {
                tokio::select! {
                    line = lines.next_line(), if stdin_open => match line {
                        Ok(Some(l)) if !l.trim().is_empty() => {
                            client.send_text(&to, l.trim()).await.map_err(|e| e.to_string())?;
                        }
                        Ok(Some(_)) => {}
                        _ => stdin_open = false,
                    },
                    e = events.next() => match e {
                        Some(Event::MessageReceived(m)) => out!("{}", show(&m)),
                        Some(Event::SendFailed { reason, .. }) => out!("(not sent: {reason})"),
                        Some(Event::Undecryptable { cause, .. }) => out!("(undecryptable: {cause})"),
                        Some(Event::DeviceListChanged { account, change }) => {
                            out!("(devices of {} changed: +{:?} -{:?})", short(&account), change.added, change.removed)
                        }
                        Some(Event::DeviceRemoved) => {
                            out!("(this device was removed from the account)");
                            break;
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
                let _ = std::io::stdout().flush();
                if !stdin_open
                    && client.outbox_len().await.unwrap_or(0) == 0
                    && std::env::var_os("SOTTO_CHAT_EXIT_ON_EOF").is_some()
                {
                    break;
                }
            }
            client.shutdown().await;
        }
        Command::Messages { contact } => {
            let (store, key) = open_store(&dir, false).await?;
            let options = ClientOptions {
                connect: false,
                ..ClientOptions::default()
            };
            let client = Client::open(store, key, options).await.map_err(|e| e.to_string())?;
            let to = resolve(&client, &contact).await?;
            let page = Page {
                before: None,
                limit: 1000,
            };
            for m in client.messages(&to, page).await.map_err(|e| e.to_string())? {
                out!("{}", show(&m));
            }
        }
        Command::Safety { contact } => {
            let (store, key) = open_store(&dir, false).await?;
            let options = ClientOptions {
                connect: false,
                ..ClientOptions::default()
            };
            let client = Client::open(store, key, options).await.map_err(|e| e.to_string())?;
            let to = resolve(&client, &contact).await?;
            out!("{}", client.safety_number(&to).await.map_err(|e| e.to_string())?);
        }
        Command::Contacts => {
            let (store, key) = open_store(&dir, false).await?;
            let options = ClientOptions {
                connect: false,
                ..ClientOptions::default()
            };
            let client = Client::open(store, key, options).await.map_err(|e| e.to_string())?;
            for c in client.conversations().await.map_err(|e| e.to_string())? {
                out!("{}", sotto_sdk::contact_link(&c));
            }
        }
        Command::Link { grant_list_key, yes } => {
            let (client, mut events) = open_client(&dir).await?;
            let code = client.link_new_device().await.map_err(|e| e.to_string())?;
            out!("{code}");
            out!("run `sotto join <code> --relay <url>` on the new device within five minutes");
            let _ = std::io::stdout().flush();
            let requested = wait_event(&mut events, Duration::from_secs(300), |e| {
                matches!(e, Event::LinkRequested { .. })
            })
            .await;
            let Some(Event::LinkRequested {
                id,
                device_name,
                fingerprint,
            }) = requested
            else {
                client.shutdown().await;
                return Err("no device asked to join".into());
            };
            out!("device {device_name:?} asks to join, fingerprint: {fingerprint}");
            let confirmed = if yes {
                true
            } else {
                out!("does the new device show the same fingerprint? [y/N]");
                let _ = std::io::stdout().flush();
                let mut line = String::new();
                let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
                let _ = stdin.read_line(&mut line).await;
                matches!(line.trim(), "y" | "Y" | "yes")
            };
            if !confirmed {
                let _ = client.reject_link(id).await;
                client.shutdown().await;
                return Err("rejected".into());
            }
            let done = client.confirm_link(id, grant_list_key).await;
            client.shutdown().await;
            done.map_err(|e| e.to_string())?;
            out!("linked {device_name:?}");
        }
        Command::Join { code, relay, name } => {
            if dir.join("store.key").exists() {
                return Err(format!("{} already holds an account", dir.display()));
            }
            let (store, key) = open_store(&dir, true).await?;
            let pending = Client::start_join(store, key, &relay, &code, &name, ClientOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            out!("fingerprint: {}", pending.fingerprint());
            out!("confirm on the existing device if it shows the same fingerprint");
            let _ = std::io::stdout().flush();
            let client = pending.wait().await.map_err(|e| e.to_string())?;
            let ak = if client.can_manage_devices().await {
                " (with the list key)"
            } else {
                ""
            };
            out!(
                "joined account {} as device {}{ak}",
                client.account_id(),
                client.device_id()
            );
            client.shutdown().await;
        }
        Command::RecoveryKey => {
            let (store, key) = open_store(&dir, false).await?;
            let options = ClientOptions {
                connect: false,
                ..ClientOptions::default()
            };
            let client = Client::open(store, key, options).await.map_err(|e| e.to_string())?;
            let rk = client.export_recovery_key().await.map_err(|e| e.to_string())?;
            out!("{}", rk.as_str());
        }
        Command::Recover => {
            let (store, key) = open_store(&dir, false).await?;
            let options = ClientOptions {
                connect: false,
                ..ClientOptions::default()
            };
            let client = Client::open(store, key, options).await.map_err(|e| e.to_string())?;
            let line = read_secret_line().await?;
            client.recover_account(&line).await.map_err(|e| e.to_string())?;
            out!("this device now holds the account's list key");
        }
        Command::Devices => {
            let (client, _) = open_client(&dir).await?;
            let me = client.account_id();
            for d in client.devices_of(&me).await {
                let this = if d == client.device_id() { " (this device)" } else { "" };
                out!("device {d}{this}");
            }
            client.shutdown().await;
        }
        Command::RemoveDevice { id, recovery_key } => {
            let (client, _) = open_client(&dir).await?;
            let done = if recovery_key {
                let line = read_secret_line().await?;
                client.remove_device_with_recovery_key(DeviceId(id), &line).await
            } else {
                client.remove_device(DeviceId(id)).await
            };
            done.map_err(|e| match e {
                ClientError::NeedsRecoveryKey => format!("{e} (run with --recovery-key and type it on stdin)"),
                e => e.to_string(),
            })?;
            out!("removed device {id}");
            client.shutdown().await;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sotto: {e}");
            ExitCode::FAILURE
        }
    }
}
