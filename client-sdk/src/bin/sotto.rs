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
//! sotto --profile alice messages <contact> [--ids]
//! sotto --profile alice reply <contact> <message> <text>   # <message>: 1 = the newest, 2 = the one before, or an id prefix
//! sotto --profile alice edit <contact> <message> <text>
//! sotto --profile alice delete <contact> <message>      # for everyone
//! sotto --profile alice react <contact> <message> [emoji]   # no emoji: remove the reaction
//! sotto --profile alice timer <contact> <seconds>       # disappearing messages; 0 turns it off
//! sotto --profile alice block|unblock <contact>
//! sotto --profile alice nickname <contact> [name]       # no name: clear it
//! sotto --profile alice profile [name]                  # the name contacts see; no name: show it
//! sotto --profile alice requests                        # message requests
//! sotto --profile alice accept|decline <contact>        # a message request
//! sotto --profile alice acknowledge <contact>           # a changed safety number
//! sotto --profile alice link [--grant-list-key] [--yes]   # show a code, confirm the new device
//! sotto --profile phone join <code> --relay http://127.0.0.1:8080 [--name phone]
//! sotto --profile alice devices
//! sotto --profile alice remove-device <id> [--recovery-key]   # the key from stdin
//! sotto --profile alice recovery-key       # print the recovery key once (keep it offline)
//! sotto --profile phone recover            # read a recovery key from stdin
//! sotto --profile alice group create <title> <contact>...
//! sotto --profile alice group add <group> <contact>...
//! sotto --profile alice group remove <group> <member>
//! sotto --profile alice group rename <group> <title>
//! sotto --profile alice group admin <group> <member> [--revoke]
//! sotto --profile alice group leave <group>
//! sotto --profile alice group list
//! sotto --profile alice group send <group> <text>
//! sotto --profile alice group chat <group>   # interactive
//! sotto --profile alice group messages <group>
//! ```
//!
//! A `<group>` is its id (64 hex digits), the start of its id, or its title. In `chat` and
//! `group chat`, a line starting with `/` is a command (`/help` lists them: `/reply`,
//! `/edit`, `/delete`, `/react`, `/timer`, `/block`, `/unblock`, `/nick`, `/accept`,
//! `/ack`). Lines show replies (`> quoted`), `(edited)`, deletions, reactions, ticks (✓
//! sent, ✓✓ delivered, ✓✓ read) and nicknames instead of account ids.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sotto_crypto::{AccountId, DeviceId};
use sotto_sdk::store::{SqliteStore, StoreKey};
use sotto_sdk::{
    Client, ClientError, ClientOptions, Conversation, Event, EventStream, GroupId, GroupInfo, MessageId, MessageKey,
    MessageKind, MessageStatus, Page, Role, StoredMessage,
};
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
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
        /// The text.
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Send a file (encrypted, uploaded to the relay's blob store) and wait until the
    /// relay stored the message.
    SendFile {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
        /// The file.
        path: PathBuf,
        /// A caption.
        #[arg(long, default_value = "")]
        caption: String,
        /// The media type shown to the receiver (default: guessed from the extension).
        #[arg(long)]
        media_type: Option<String>,
    },
    /// Download a received file, check it, and write it to a path.
    Save {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
        /// The message: 1 for the newest, 2 for the one before..., or the start of its id.
        message: String,
        /// Where to write it (a directory: the sender's file name, sanitized, inside it).
        path: PathBuf,
    },
    /// Fetch and print what arrived while offline, then exit.
    Receive,
    /// Run as this device's notification extension, beside a running `sotto` on the same
    /// profile: fetch what waits (unless the app is connected), decrypt it, print one
    /// `notification` line per message, then exit.
    Notify {
        /// How long to wait for the mailbox, seconds.
        #[arg(long, default_value_t = 20)]
        max_wait: u64,
        /// Print the process's peak resident memory (`peak_rss_kib N`) on stderr.
        #[arg(long)]
        memory: bool,
    },
    /// Chat with a contact: incoming messages are printed as they arrive; each line
    /// typed is sent.
    Chat {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
    },
    /// Print a conversation.
    Messages {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
        /// Start each line with the message's id (the first 8 digits), for `reply`,
        /// `edit`, `delete` and `react`.
        #[arg(long)]
        ids: bool,
    },
    /// Reply to a message, quoting its start.
    Reply {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
        /// The message: 1 for the newest, 2 for the one before..., or the start of its id.
        message: String,
        /// The text.
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Edit a message this account wrote.
    Edit {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
        /// The message: 1 for the newest, 2 for the one before..., or the start of its id.
        message: String,
        /// The new text.
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Delete a message this account wrote, for everyone.
    Delete {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
        /// The message: 1 for the newest, 2 for the one before..., or the start of its id.
        message: String,
    },
    /// React to a message (no emoji: remove this account's reaction).
    React {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
        /// The message: 1 for the newest, 2 for the one before..., or the start of its id.
        message: String,
        /// The emoji.
        emoji: Option<String>,
    },
    /// Set the disappearing-message timer of a conversation (0 turns it off).
    Timer {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
        /// Seconds.
        seconds: u32,
    },
    /// Block a contact: their messages are dropped and nothing is sent to them.
    Block {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
    },
    /// Unblock a contact.
    Unblock {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
    },
    /// Set the name shown for a contact instead of its id (no name: clear it).
    Nickname {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
        /// The name.
        name: Option<String>,
    },
    /// Set this account's profile name, which contacts see instead of its id, and send
    /// it to them (no name: print the current one).
    Profile {
        /// The name.
        #[arg(num_args = 0..)]
        name: Vec<String>,
    },
    /// List message requests: accounts that wrote first and were not accepted yet.
    Requests,
    /// Accept a message request.
    Accept {
        /// The account (id or the start of it).
        contact: String,
    },
    /// Decline a message request: delete the conversation (the sender is not blocked).
    Decline {
        /// The account (id or the start of it).
        contact: String,
    },
    /// Accept a contact's changed safety number (after comparing it): sending resumes.
    Acknowledge {
        /// A contact (link, id, the start of an id, or its nickname).
        contact: String,
    },
    /// Show the safety number with a contact; compare it in person.
    Safety {
        /// A contact (link, id, the start of an id, or its nickname).
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
    /// Groups: create and change them, list them, talk in them.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
}

/// `sotto group ...`. A group is named by its id (64 hex digits), the start of its id,
/// or its title.
#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Create a group with this account as its admin; prints its id.
    Create {
        /// The group's title (members see it; the relay does not).
        title: String,
        /// Its other members: contacts (link, id, or the start of an id). A link or id
        /// that is no contact yet is added as one first.
        #[arg(required = true)]
        contacts: Vec<String>,
    },
    /// Add members (admins only); they read what is sent from now on.
    Add {
        /// The group.
        group: String,
        /// Contacts (link, id, or the start of an id).
        #[arg(required = true)]
        contacts: Vec<String>,
    },
    /// Remove a member (admins only): the group's keys change, so the member reads
    /// nothing sent afterwards.
    Remove {
        /// The group.
        group: String,
        /// A member (link, id, or the start of an id).
        member: String,
    },
    /// Rename a group (admins only).
    Rename {
        /// The group.
        group: String,
        /// The new title.
        title: String,
    },
    /// Make a member an admin (admins only), or with `--revoke` a plain member again.
    Admin {
        /// The group.
        group: String,
        /// A member (link, id, or the start of an id).
        member: String,
        /// Make the member a plain member again.
        #[arg(long)]
        revoke: bool,
    },
    /// Leave a group.
    Leave {
        /// The group.
        group: String,
    },
    /// List the groups this account is or was in, with their members.
    List,
    /// Send a text to a group and wait until the relay stored it.
    Send {
        /// The group.
        group: String,
        /// The text.
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Chat in a group: incoming messages are printed as they arrive; each line typed is
    /// sent to the group.
    Chat {
        /// The group.
        group: String,
    },
    /// Print a group's messages.
    Messages {
        /// The group.
        group: String,
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
    // A nickname (or profile name), exactly as shown.
    let named: Vec<AccountId> = names(client)
        .await
        .into_iter()
        .filter(|(a, n)| n == contact.trim() && *a != client.account_id())
        .map(|(a, _)| a)
        .collect();
    if let [one] = named.as_slice() {
        return Ok(*one);
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

fn short_group(g: &GroupId) -> String {
    g.to_string().chars().take(8).collect()
}

fn n_members(n: usize) -> String {
    if n == 1 {
        "1 member".into()
    } else {
        format!("{n} members")
    }
}

/// Names shown instead of account ids: nicknames and profile names, and `me` for this
/// account.
type Names = std::collections::HashMap<AccountId, String>;

/// The names this device knows (the conversation list's), and `me`.
async fn names(client: &Client<SqliteStore>) -> Names {
    let list = client.conversation_list().snapshot().await.unwrap_or_default();
    let mut names: Names = list
        .into_iter()
        .filter_map(|s| match s.conversation {
            Conversation::Direct(a) if !s.name.is_empty() => Some((a, s.name)),
            _ => None,
        })
        .collect();
    names.insert(client.account_id(), "me".to_owned());
    names
}

/// An account's name, else the start of its id.
fn name(names: &Names, a: &AccountId) -> String {
    names.get(a).cloned().unwrap_or_else(|| short(a))
}

/// At most `n` characters of `text`, with `…` when cut.
fn snippet(text: &str, n: usize) -> String {
    let mut out: String = text.chars().take(n).collect();
    if text.chars().count() > n {
        out.push('…');
    }
    out
}

/// A timer as people say it: `30s`, `5m`, `1h`, `7d`.
fn duration(s: u32) -> String {
    match s {
        0 => "off".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The last 8 hex digits of a message id (what `messages --ids` prints and message
/// references match).
/// A file name from a sender, safe to create in a directory: its last path component,
/// without control characters, never empty, `.` or `..`.
fn safe_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = last.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim().trim_start_matches('.').to_owned();
    if clean.is_empty() {
        "attachment".to_owned()
    } else {
        clean
    }
}

/// A media type from a file's extension (the common ones; else octet-stream).
fn guess_media_type(path: &std::path::Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "m4a" => "audio/mp4",
        "ogg" | "opus" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

fn short_id(id: &MessageId) -> String {
    let s = id.to_string();
    s[s.len().saturating_sub(8)..].to_owned()
}

/// A message as one line: `[<contact>] <sender>: <text>`, or `[#<title>] <sender>: <text>`
/// for a message in the group titled `group`; then `(edited)`, the reactions, and the
/// ticks of a message this account sent: ✓ sent, ✓✓ delivered, ✓✓ read.
fn show(m: &StoredMessage, group: Option<&str>, names: &Names) -> String {
    let me = m.status.is_outgoing();
    let who = if me { "me".to_owned() } else { name(names, &m.sender.0) };
    let place = match group {
        Some(title) => format!("#{title}"),
        None => name(names, &m.conversation),
    };
    let body = match m.kind {
        MessageKind::Timer { expire_s: 0 } => "(turned disappearing messages off)".to_owned(),
        MessageKind::Timer { expire_s } => format!("(set disappearing messages to {})", duration(expire_s)),
        MessageKind::IdentityChanged => {
            "(the safety number changed: compare it, then `acknowledge` or /ack)".to_owned()
        }
        MessageKind::Text if m.deleted => "(deleted)".to_owned(),
        MessageKind::Text if m.attachment.is_some() => {
            let a = m.attachment.as_deref();
            let (file, size, kind) = a.map_or((String::new(), 0, String::new()), |a| {
                (safe_file_name(&a.file_name), a.size, a.media_type.clone())
            });
            let caption = if m.text.is_empty() {
                String::new()
            } else {
                format!(" {}", m.text)
            };
            format!("[file {file}, {kind}, {size} bytes: `sotto save`]{caption}")
        }
        MessageKind::Text => {
            let quote = match &m.quote {
                Some(q) => format!("(re {}: \"{}\") ", name(names, &q.author), snippet(&q.snippet, 40)),
                None => String::new(),
            };
            let edited = if m.edited_at_ms > 0 { " (edited)" } else { "" };
            format!("{quote}{}{edited}", m.text)
        }
        _ => "(a message this version cannot show)".to_owned(),
    };
    let reactions: Vec<String> = m
        .reactions
        .iter()
        .filter(|r| !r.emoji.is_empty())
        .map(|r| format!("{} {}", r.emoji, name(names, &r.by)))
        .collect();
    let reactions = if reactions.is_empty() {
        String::new()
    } else {
        format!(" [{}]", reactions.join(", "))
    };
    let mark = match m.status {
        MessageStatus::Queued => " (queued)",
        MessageStatus::Sent => " ✓",
        MessageStatus::Delivered => " ✓✓",
        MessageStatus::Read => " ✓✓ read",
        MessageStatus::SentElsewhere => " (from my other device)",
        MessageStatus::Failed { .. } => " (not sent)",
        _ => "",
    };
    let expires = if m.expires_at_ms > 0 || m.expire_s > 0 {
        format!(" ⏱{}", duration(m.expire_s))
    } else {
        String::new()
    };
    format!("[{place}] {who}: {body}{reactions}{mark}{expires}")
}

/// [`show`], with the group's title when the message is a group message.
async fn show_any(client: &Client<SqliteStore>, m: &StoredMessage, names: &Names) -> String {
    let title = match client.group_of(&m.conversation).await {
        Some(g) => client.group(&g).await.map(|info| info.title),
        None => None,
    };
    show(m, title.as_deref(), names)
}

/// A message of a conversation (its store key `conversation`) by reference: `1` for the
/// newest, `2` for the one before, ..., or (at least 4 hex digits of) its id.
async fn find_message(
    client: &Client<SqliteStore>,
    conversation: &AccountId,
    reference: &str,
) -> Result<StoredMessage, String> {
    let page = Page {
        before: None,
        limit: 1000,
    };
    let list = client.messages(conversation, page).await.map_err(|e| e.to_string())?;
    if let Ok(n) = reference.parse::<usize>()
        && n >= 1
        && reference.len() < 4
    {
        return list
            .iter()
            .rev()
            .nth(n - 1)
            .cloned()
            .ok_or_else(|| format!("no message {n} back"));
    }
    let wanted: String = reference.to_ascii_lowercase().chars().filter(|c| *c != '-').collect();
    if wanted.len() < 4 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{reference:?} names no message: 1 is the newest, 2 the one before, or give its id (`messages --ids`)"
        ));
    }
    let matches: Vec<&StoredMessage> = list
        .iter()
        .filter(|m| m.id.to_string().replace('-', "").contains(&wanted))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!("no message matches {reference:?}")),
        _ => Err(format!("{reference:?} matches several messages")),
    }
}

/// A group by its id, the start of its id, or its title.
async fn resolve_group(client: &Client<SqliteStore>, group: &str) -> Result<GroupInfo, String> {
    if let Ok(id) = group.parse::<GroupId>() {
        return client.group(&id).await.ok_or_else(|| format!("no group {id}"));
    }
    let wanted = group.trim();
    let prefix = wanted.to_ascii_lowercase();
    let groups = client.groups().await;
    let mut matches: Vec<&GroupInfo> = groups.iter().filter(|g| g.title == wanted).collect();
    if matches.is_empty() {
        matches = groups
            .iter()
            .filter(|g| !prefix.is_empty() && g.id.to_string().starts_with(&prefix))
            .collect();
    }
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!("no group matches {group:?}")),
        _ => Err(format!(
            "{group:?} matches several groups (name one by its id, as `sotto group list` prints it)"
        )),
    }
}

/// A member of a group by link, account id or the start of its id.
fn resolve_member(group: &GroupInfo, member: &str) -> Result<AccountId, String> {
    let is_member = |a: &AccountId| group.members.iter().any(|(m, _)| m == a);
    if let Ok(id) = sotto_sdk::parse_contact(member) {
        return if is_member(&id) {
            Ok(id)
        } else {
            Err(format!("{} is not a member of {:?}", short(&id), group.title))
        };
    }
    let prefix = member.trim().to_ascii_lowercase();
    let matches: Vec<AccountId> = group
        .members
        .iter()
        .map(|(a, _)| *a)
        .filter(|a| !prefix.is_empty() && a.to_string().starts_with(&prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!("no member of {:?} matches {member:?}", group.title)),
        _ => Err(format!("{member:?} matches several members of {:?}", group.title)),
    }
}

/// A contact to write to or to put in a group. A link or account id that is no contact
/// yet is added first (its device list fetched and pinned; a link's access key kept, so
/// that what is sent is no message request).
async fn contact_or_add(client: &Client<SqliteStore>, contact: &str) -> Result<AccountId, String> {
    let id = resolve(client, contact).await?;
    if !client.conversations().await.map_err(|e| e.to_string())?.contains(&id) {
        client.add_contact(contact).await.map_err(|e| e.to_string())?;
    }
    Ok(id)
}

/// A line about a group that changed (created, joined, changed, left or removed from).
async fn group_note(client: &Client<SqliteStore>, group: &GroupId) -> String {
    match client.group(group).await {
        Some(g) if g.active => format!(
            "(group {:?} {}: {}, version {})",
            g.title,
            short_group(group),
            n_members(g.members.len()),
            g.version
        ),
        Some(g) => format!(
            "(group {:?} {}: this account is no longer a member)",
            g.title,
            short_group(group)
        ),
        None => format!("(group {}: unknown)", short_group(group)),
    }
}

/// A line naming one of this account's messages by its start, or a count.
async fn own_messages(client: &Client<SqliteStore>, conversation: &AccountId, ids: &[MessageId]) -> String {
    if let [id] = ids {
        let key = MessageKey {
            conversation: *conversation,
            sender: client.account_id(),
            id: *id,
        };
        if let Ok(Some(m)) = client.message(&key).await {
            return format!("\"{}\"", snippet(&m.text, 40));
        }
    }
    if ids.len() == 1 {
        "1 message".into()
    } else {
        format!("{} messages", ids.len())
    }
}

/// The text of a message an event names, shortened.
async fn about(client: &Client<SqliteStore>, key: &MessageKey) -> String {
    match client.message(key).await {
        Ok(Some(m)) if !m.deleted => format!("\"{}\"", snippet(&m.text, 40)),
        _ => "a message".into(),
    }
}

/// Prints what a one-shot run or a chat shows of an event; true for an event that ends
/// a chat in `group` (this device removed, or this account out of the group). `ticks`:
/// also the sends' progress (a chat shows it; a one-shot run does not).
async fn print_event(
    client: &Client<SqliteStore>,
    e: &Event,
    group: Option<&GroupId>,
    names: &Names,
    ticks: bool,
) -> bool {
    match e {
        Event::MessageReceived(m) => out!("{}", show_any(client, m, names).await),
        Event::SendFailed { reason, .. } => out!("(not sent: {reason})"),
        Event::Undecryptable { cause, .. } => out!("(undecryptable: {cause})"),
        Event::DeviceListChanged { account, change } => {
            out!(
                "(devices of {} changed: +{:?} -{:?})",
                name(names, account),
                change.added,
                change.removed
            )
        }
        Event::DeviceRemoved => {
            out!("(this device was removed from the account)");
            return true;
        }
        Event::GroupChanged { group: g } => {
            out!("{}", group_note(client, g).await);
            if Some(g) == group && !client.group(g).await.is_some_and(|i| i.active) {
                return true;
            }
        }
        Event::GroupChangeRejected { group: g, error } => {
            out!("(a change to group {} was refused: {error})", short_group(g))
        }
        Event::MessageEdited { key } => {
            if let Ok(Some(m)) = client.message(key).await {
                out!("{}", show_any(client, &m, names).await);
            }
        }
        Event::MessageDeleted { key } => out!("({} deleted a message)", name(names, &key.sender)),
        Event::ReactionChanged { key, by, emoji } if emoji.is_empty() => {
            out!(
                "({} removed a reaction to {})",
                name(names, by),
                about(client, key).await
            )
        }
        Event::ReactionChanged { key, by, emoji } => {
            out!("({} reacted {emoji} to {})", name(names, by), about(client, key).await)
        }
        Event::TimerChanged { expire_s, by, .. } => out!(
            "({} set disappearing messages to {})",
            name(names, by),
            duration(*expire_s)
        ),
        Event::IdentityChanged { account } => out!(
            "(the safety number with {} changed: compare it (`safety`), then `acknowledge` or /ack)",
            name(names, account)
        ),
        Event::Typing { by, typing: true, .. } => out!("({} is typing…)", name(names, by)),
        Event::ProfileChanged { account } if *account == client.account_id() => {
            out!("(this account's profile changed on another device)")
        }
        Event::ProfileChanged { account } => {
            let shown = self::names(client).await;
            out!("({} is now called {})", short(account), name(&shown, account))
        }
        Event::MessageSent { id, conversation } if ticks => {
            out!("✓ sent {}", own_messages(client, conversation, &[*id]).await)
        }
        Event::Delivered { conversation, ids, .. } if ticks => {
            out!("✓✓ delivered {}", own_messages(client, conversation, ids).await)
        }
        Event::Read { conversation, ids, .. } if ticks => {
            out!("✓✓ read {}", own_messages(client, conversation, ids).await)
        }
        _ => {}
    }
    false
}

/// Where a chat sends.
enum ChatWith {
    Contact(AccountId),
    Group(GroupId),
}

const CHAT_HELP: &str = "commands: /reply N text, /edit N text, /delete N, /react N [emoji], /timer SECONDS, \
/block, /unblock, /nick [name], /accept, /ack, /help (N: 1 is the newest message, 2 the one before, or an id)";

/// Runs one `/command` typed in a chat; returns what to print.
async fn chat_command(client: &Client<SqliteStore>, with: &ChatWith, line: &str) -> Result<String, String> {
    let conversation = match with {
        ChatWith::Contact(a) => Conversation::Direct(*a),
        ChatWith::Group(g) => Conversation::Group(*g),
    };
    let contact = match with {
        ChatWith::Contact(a) => Ok(*a),
        ChatWith::Group(_) => Err("only in a chat with a contact".to_owned()),
    };
    let key = conversation.key();
    let mut words = line.trim_start_matches('/').splitn(3, ' ');
    let cmd = words.next().unwrap_or_default();
    let arg = words.next().unwrap_or_default().trim();
    let rest = words.next().unwrap_or_default().trim();
    let err = |e: ClientError| e.to_string();
    match cmd {
        "reply" | "edit" if rest.is_empty() => Err(format!("/{cmd} N text")),
        "reply" => {
            let m = find_message(client, &key, arg).await?;
            client.reply(&m.key(), rest).await.map_err(err)?;
            Ok(String::new())
        }
        "edit" => {
            let m = find_message(client, &key, arg).await?;
            client.edit(&m.key(), rest).await.map_err(err)?;
            Ok("(edited)".into())
        }
        "delete" => {
            let m = find_message(client, &key, arg).await?;
            client.delete_for_everyone(&m.key()).await.map_err(err)?;
            Ok("(deleted for everyone)".into())
        }
        "react" => {
            let m = find_message(client, &key, arg).await?;
            client.react(&m.key(), rest).await.map_err(err)?;
            Ok(if rest.is_empty() {
                "(reaction removed)".into()
            } else {
                format!("(reacted {rest})")
            })
        }
        "timer" => {
            let seconds: u32 = arg.parse().map_err(|_| "/timer SECONDS (0 turns it off)".to_owned())?;
            client.set_timer(conversation, seconds).await.map_err(err)?;
            Ok(format!("(disappearing messages: {})", duration(seconds)))
        }
        "block" => {
            client.block(&contact?).await.map_err(err)?;
            Ok("(blocked)".into())
        }
        "unblock" => {
            client.unblock(&contact?).await.map_err(err)?;
            Ok("(unblocked)".into())
        }
        "nick" => {
            let nick = [arg, rest].join(" ");
            let nick = nick.trim();
            let nick = (!nick.is_empty()).then_some(nick);
            client.set_nickname(&contact?, nick).await.map_err(err)?;
            Ok(format!("(nickname {})", nick.unwrap_or("cleared")))
        }
        "accept" => {
            client.accept_message_request(&contact?).await.map_err(err)?;
            Ok("(accepted)".into())
        }
        "ack" => {
            client.acknowledge_identity(&contact?).await.map_err(err)?;
            Ok("(safety number acknowledged)".into())
        }
        _ => Ok(CHAT_HELP.into()),
    }
}

/// The longest line a chat reads; a longer one is cut there.
const MAX_LINE: usize = 64 * 1024;

/// Input as it arrives: whole lines, and whether a line is being composed.
#[derive(Default)]
struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Adds what was read; returns the lines it completed.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' || self.pending.len() >= MAX_LINE {
                lines.push(String::from_utf8_lossy(&self.pending).trim_end_matches('\r').to_owned());
                self.pending.clear();
                if b == b'\n' {
                    continue;
                }
            }
            self.pending.push(b);
        }
        lines
    }

    /// What is left when the input ends.
    fn finish(&mut self) -> Option<String> {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        (!rest.trim().is_empty()).then_some(rest)
    }

    /// A line has started and is not finished: the user is typing.
    fn composing(&self) -> bool {
        self.pending.iter().any(|b| !b.is_ascii_whitespace()) && self.pending.first() != Some(&b'/')
    }
}

/// One line typed in a chat: a `/command`, or a text to send.
async fn chat_line(
    client: &Client<SqliteStore>,
    with: &ChatWith,
    conversation: Conversation,
    line: &str,
) -> Result<(), String> {
    let line = line.trim();
    if line.starts_with('/') {
        match chat_command(client, with, line).await {
            Ok(done) if done.is_empty() => {}
            Ok(done) => out!("{done}"),
            Err(e) => out!("(error: {e})"),
        }
    } else if !line.is_empty() {
        // A line read whole (a terminal sends it on Enter) still starts as "typing".
        let _ = client.set_typing(conversation, true).await;
        client
            .send_message(conversation, line)
            .await
            .map_err(|e| e.to_string())?;
        let _ = client.set_typing(conversation, false).await;
    }
    Ok(())
}

/// The interactive mode of `chat` and `group chat`: prints the history and incoming
/// messages (marking them read) and who is typing; sends each line typed, or runs it
/// when it starts with `/`. While a line is being composed (input that arrives before
/// its newline, as from a pipe or a terminal in raw mode), the others see "typing"; it
/// stops when the line is sent.
async fn chat(
    client: &Client<SqliteStore>,
    events: &mut EventStream,
    with: ChatWith,
    history: Vec<StoredMessage>,
    banner: String,
) -> Result<(), String> {
    use tokio::io::AsyncReadExt as _;
    let mut names = names(client).await;
    for m in history {
        out!("{}", show_any(client, &m, &names).await);
    }
    out!("-- {banner}; type a line to send, /help for commands, Ctrl-D to quit --");
    let (group, conversation) = match &with {
        ChatWith::Group(g) => (Some(*g), Conversation::Group(*g)),
        ChatWith::Contact(a) => (None, Conversation::Direct(*a)),
    };
    let _ = client.mark_read(conversation).await;
    let mut stdin = tokio::io::stdin();
    let mut chunk = vec![0u8; 4096];
    let mut input = LineBuffer::default();
    let mut stdin_open = true;
    let mut typing = false;
    // While a line is being composed, "typing" is repeated before it times out.
    let mut repeat = tokio::time::interval(Duration::from_millis(sotto_sdk::TYPING_REPEAT_MS));
    loop {
        tokio::select! {
            read = stdin.read(&mut chunk), if stdin_open => {
                let (lines, ended) = match read {
                    Ok(0) | Err(_) => (input.finish().into_iter().collect(), true),
                    Ok(n) => (input.push(chunk.get(..n).unwrap_or_default()), false),
                };
                for line in lines {
                    chat_line(client, &with, conversation, &line).await?;
                    names = self::names(client).await;
                    // A text line sent says "stopped typing".
                    typing = false;
                }
                stdin_open = !ended;
                let now_typing = stdin_open && input.composing();
                if now_typing != typing {
                    let _ = client.set_typing(conversation, now_typing).await;
                    typing = now_typing;
                }
            },
            _ = repeat.tick(), if typing => {
                let _ = client.set_typing(conversation, true).await;
            },
            e = events.next() => match e {
                Some(e) => {
                    if let Event::MessageReceived(m) = &e
                        && m.conversation == conversation.key()
                    {
                        let _ = client.mark_read(conversation).await;
                    }
                    if print_event(client, &e, group.as_ref(), &names, true).await {
                        break;
                    }
                }
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
    Ok(())
}

/// Waits until the relay stored message `id` (or it failed), then drains the outbox and
/// shuts the client down.
async fn finish_send(client: &Client<SqliteStore>, events: &mut EventStream, id: MessageId) -> Result<(), String> {
    let done = wait_event(events, Duration::from_secs(30), |e| match e {
        Event::MessageSent { id: sent, .. } => *sent == id,
        Event::SendFailed { id: failed, .. } => *failed == id,
        _ => false,
    })
    .await;
    if matches!(done, Some(Event::MessageSent { .. })) {
        drain_outbox(client, Duration::from_secs(15)).await;
    }
    client.shutdown().await;
    match done {
        Some(Event::MessageSent { .. }) => out!("sent"),
        Some(Event::SendFailed { reason, .. }) => return Err(format!("not sent: {reason}")),
        _ => out!("queued; it is sent the next time sotto connects"),
    }
    Ok(())
}

/// After a group change: waits (a bounded time) until what it queued (the commit,
/// welcomes, new keys) is with the relay, prints `done` and shuts the client down.
async fn finish_group_change(client: &Client<SqliteStore>, done: String) {
    drain_outbox(client, Duration::from_secs(30)).await;
    let left = client.outbox_len().await.unwrap_or(0);
    client.shutdown().await;
    out!("{done}");
    if left > 0 {
        out!("({left} messages still queued; they are sent the next time sotto connects)");
    }
}

/// After an edit, a delete or a reaction: waits (a bounded time) until it is with the
/// relay, prints `done` and shuts the client down.
async fn finish_change(client: &Client<SqliteStore>, done: String) {
    drain_outbox(client, Duration::from_secs(30)).await;
    let left = client.outbox_len().await.unwrap_or(0);
    client.shutdown().await;
    out!("{done}");
    if left > 0 {
        out!("(still queued; it is sent the next time sotto connects)");
    }
}

/// A client on the store only, without a relay connection.
async fn open_offline(dir: &Path) -> Result<Client<SqliteStore>, String> {
    let (store, key) = open_store(dir, false).await?;
    let options = ClientOptions {
        connect: false,
        ..ClientOptions::default()
    };
    Client::open(store, key, options).await.map_err(|e| e.to_string())
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
            let client = open_offline(&dir).await?;
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
            let to = contact_or_add(&client, &contact).await?;
            let m = client
                .send_text(&to, &text.join(" "))
                .await
                .map_err(|e| e.to_string())?;
            finish_send(&client, &mut events, m.id).await?;
        }
        Command::SendFile {
            contact,
            path,
            caption,
            media_type,
        } => {
            let (client, mut events) = open_client(&dir).await?;
            let to = contact_or_add(&client, &contact).await?;
            let info = sotto_sdk::AttachmentInfo {
                media_type: media_type.unwrap_or_else(|| guess_media_type(&path).to_owned()),
                caption,
                ..Default::default()
            };
            let progress = |done: u64, total: u64| {
                let _ = write!(std::io::stderr(), "\ruploaded {}%", done * 100 / total.max(1));
            };
            let m = client
                .send_attachment_file(Conversation::Direct(to), &path, info, Some(&progress), None)
                .await
                .map_err(|e| e.to_string())?;
            let _ = writeln!(std::io::stderr());
            finish_send(&client, &mut events, m.id).await?;
        }
        Command::Save { contact, message, path } => {
            let client = open_offline(&dir).await?;
            let to = resolve(&client, &contact).await?;
            let m = find_message(&client, &to, &message).await?;
            let Some(a) = m.attachment.as_deref() else {
                return Err("that message carries no file".into());
            };
            let path = if path.is_dir() {
                path.join(safe_file_name(&a.file_name))
            } else {
                path
            };
            client
                .download_attachment(a, &path, None, None)
                .await
                .map_err(|e| e.to_string())?;
            out!("saved {} ({} bytes)", path.display(), a.size);
            client.shutdown().await;
        }
        Command::Notify { max_wait, memory } => {
            let (store, key) = open_store(&dir, false).await?;
            let client = Client::open_notification_extension(store, key, ClientOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let fetched = client
                .fetch_notifications(Duration::from_secs(max_wait))
                .await
                .map_err(|e| e.to_string())?;
            for n in &fetched.notifications {
                let who = if n.sender_name.is_empty() {
                    short(&n.key.sender)
                } else {
                    n.sender_name.clone()
                };
                match &n.group_title {
                    Some(g) => out!("notification #{g} {who}: {}", n.body),
                    None => out!("notification {who}: {}", n.body),
                }
            }
            if fetched.app_active {
                out!("app active");
            } else if fetched.complete {
                out!("caught up");
            } else {
                out!("incomplete");
            }
            client.shutdown().await;
            if memory {
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0);
                let _ = writeln!(std::io::stderr(), "peak_rss_kib {kib}");
            }
        }
        Command::Receive => {
            let (client, mut events) = open_client(&dir).await?;
            let names = names(&client).await;
            let got = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(e) = events.next().await {
                    match e {
                        Event::MessageReceived(_)
                        | Event::Undecryptable { .. }
                        | Event::GroupChanged { .. }
                        | Event::GroupChangeRejected { .. }
                        | Event::MessageEdited { .. }
                        | Event::MessageDeleted { .. }
                        | Event::ReactionChanged { .. }
                        | Event::TimerChanged { .. }
                        | Event::ProfileChanged { .. }
                        | Event::IdentityChanged { .. } => {
                            print_event(&client, &e, None, &names, false).await;
                        }
                        Event::CaughtUp => return true,
                        _ => {}
                    }
                }
                false
            })
            .await;
            if got == Ok(true) {
                // Profiles announced in what arrived: fetched before exiting, and shown.
                if client.sync_profiles().await.is_ok() {
                    while let Some(e) = events.try_next() {
                        if matches!(e, Event::ProfileChanged { .. }) {
                            print_event(&client, &e, None, &names, false).await;
                        }
                    }
                }
                drain_outbox(&client, Duration::from_secs(15)).await;
            }
            client.shutdown().await;
            if got != Ok(true) {
                return Err("the relay did not answer".into());
            }
        }
        Command::Chat { contact } => {
            let (client, mut events) = open_client(&dir).await?;
            let to = contact_or_add(&client, &contact).await?;
            let history = client.messages(&to, Page::default()).await.map_err(|e| e.to_string())?;
            let banner = format!("chatting with {}", name(&names(&client).await, &to));
            let done = chat(&client, &mut events, ChatWith::Contact(to), history, banner).await;
            client.shutdown().await;
            done?;
        }
        Command::Messages { contact, ids } => {
            let client = open_offline(&dir).await?;
            let to = resolve(&client, &contact).await?;
            let names = names(&client).await;
            let page = Page {
                before: None,
                limit: 1000,
            };
            for m in client.messages(&to, page).await.map_err(|e| e.to_string())? {
                if ids {
                    out!("{} {}", short_id(&m.id), show(&m, None, &names));
                } else {
                    out!("{}", show(&m, None, &names));
                }
            }
        }
        Command::Reply { contact, message, text } => {
            let (client, mut events) = open_client(&dir).await?;
            let to = resolve(&client, &contact).await?;
            let m = find_message(&client, &to, &message).await?;
            let sent = client
                .reply(&m.key(), &text.join(" "))
                .await
                .map_err(|e| e.to_string())?;
            finish_send(&client, &mut events, sent.id).await?;
        }
        Command::Edit { contact, message, text } => {
            let (client, _) = open_client(&dir).await?;
            let to = resolve(&client, &contact).await?;
            let m = find_message(&client, &to, &message).await?;
            client
                .edit(&m.key(), &text.join(" "))
                .await
                .map_err(|e| e.to_string())?;
            finish_change(&client, "edited".into()).await;
        }
        Command::Delete { contact, message } => {
            let (client, _) = open_client(&dir).await?;
            let to = resolve(&client, &contact).await?;
            let m = find_message(&client, &to, &message).await?;
            client.delete_for_everyone(&m.key()).await.map_err(|e| e.to_string())?;
            finish_change(&client, "deleted for everyone".into()).await;
        }
        Command::React {
            contact,
            message,
            emoji,
        } => {
            let (client, _) = open_client(&dir).await?;
            let to = resolve(&client, &contact).await?;
            let m = find_message(&client, &to, &message).await?;
            let emoji = emoji.unwrap_or_default();
            client.react(&m.key(), &emoji).await.map_err(|e| e.to_string())?;
            let done = if emoji.is_empty() {
                "reaction removed".into()
            } else {
                format!("reacted {emoji}")
            };
            finish_change(&client, done).await;
        }
        Command::Timer { contact, seconds } => {
            let (client, mut events) = open_client(&dir).await?;
            let to = resolve(&client, &contact).await?;
            let m = client
                .set_timer(Conversation::Direct(to), seconds)
                .await
                .map_err(|e| e.to_string())?;
            out!("disappearing messages: {}", duration(seconds));
            finish_send(&client, &mut events, m.id).await?;
        }
        Command::Block { contact } => {
            let client = open_offline(&dir).await?;
            let who = resolve(&client, &contact).await?;
            client.block(&who).await.map_err(|e| e.to_string())?;
            out!("blocked {}", name(&names(&client).await, &who));
        }
        Command::Unblock { contact } => {
            let client = open_offline(&dir).await?;
            let who = resolve(&client, &contact).await?;
            client.unblock(&who).await.map_err(|e| e.to_string())?;
            out!("unblocked {}", name(&names(&client).await, &who));
        }
        Command::Nickname { contact, name: nick } => {
            let client = open_offline(&dir).await?;
            let who = resolve(&client, &contact).await?;
            let nick = nick.filter(|n| !n.trim().is_empty());
            client
                .set_nickname(&who, nick.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            match nick {
                Some(n) => out!("{} is now shown as {n:?}", short(&who)),
                None => out!("nickname of {} cleared", short(&who)),
            }
        }
        Command::Profile { name } => {
            let name = name.join(" ");
            let name = name.trim();
            if name.is_empty() {
                let client = open_offline(&dir).await?;
                match client.profile().await {
                    Some(p) if !p.name.is_empty() => out!("profile name {:?}", p.name),
                    _ => out!("no profile name set"),
                }
            } else {
                let (client, _) = open_client(&dir).await?;
                client.set_profile(name, None).await.map_err(|e| e.to_string())?;
                // Stored on the relay (encrypted) before the key goes to contacts.
                let synced = client.sync_profiles().await.is_ok();
                finish_change(&client, format!("profile name set to {name:?}")).await;
                if !synced {
                    out!("(not on the relay yet; it is uploaded the next time sotto connects)");
                }
            }
        }
        Command::Requests => {
            let client = open_offline(&dir).await?;
            for a in client.message_requests().await.map_err(|e| e.to_string())? {
                let first = client
                    .messages(&a, Page { before: None, limit: 1 })
                    .await
                    .map_err(|e| e.to_string())?;
                let last = first.last().map(|m| snippet(&m.text, 40)).unwrap_or_default();
                out!("request {a} \"{last}\"");
            }
        }
        Command::Accept { contact } => {
            let client = open_offline(&dir).await?;
            let who = resolve(&client, &contact).await?;
            client.accept_message_request(&who).await.map_err(|e| e.to_string())?;
            out!("accepted {}", short(&who));
        }
        Command::Decline { contact } => {
            let client = open_offline(&dir).await?;
            let who = resolve(&client, &contact).await?;
            client.delete_conversation(&who).await.map_err(|e| e.to_string())?;
            out!("declined {} (conversation deleted)", short(&who));
        }
        Command::Acknowledge { contact } => {
            let client = open_offline(&dir).await?;
            let who = resolve(&client, &contact).await?;
            client.acknowledge_identity(&who).await.map_err(|e| e.to_string())?;
            out!(
                "acknowledged the safety number of {}",
                name(&names(&client).await, &who)
            );
        }
        Command::Safety { contact } => {
            let client = open_offline(&dir).await?;
            let to = resolve(&client, &contact).await?;
            out!("{}", client.safety_number(&to).await.map_err(|e| e.to_string())?);
        }
        Command::Contacts => {
            let client = open_offline(&dir).await?;
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
            let client = open_offline(&dir).await?;
            let rk = client.export_recovery_key().await.map_err(|e| e.to_string())?;
            out!("{}", rk.as_str());
        }
        Command::Recover => {
            let client = open_offline(&dir).await?;
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
        Command::Group { command } => group(&dir, command).await?,
    }
    Ok(())
}

async fn group(dir: &Path, command: GroupCommand) -> Result<(), String> {
    match command {
        GroupCommand::Create { title, contacts } => {
            let (client, _) = open_client(dir).await?;
            let mut members = Vec::with_capacity(contacts.len());
            for c in &contacts {
                members.push(contact_or_add(&client, c).await?);
            }
            let id = client.create_group(&title, &members).await.map_err(|e| e.to_string())?;
            out!("group {id}");
            finish_group_change(
                &client,
                format!("created {title:?} with {}", n_members(members.len() + 1)),
            )
            .await;
        }
        GroupCommand::Add { group, contacts } => {
            let (client, _) = open_client(dir).await?;
            let info = resolve_group(&client, &group).await?;
            let mut members = Vec::with_capacity(contacts.len());
            for c in &contacts {
                members.push(contact_or_add(&client, c).await?);
            }
            client
                .add_group_members(&info.id, &members)
                .await
                .map_err(|e| e.to_string())?;
            let names: Vec<String> = members.iter().map(short).collect();
            finish_group_change(&client, format!("added {} to {:?}", names.join(", "), info.title)).await;
        }
        GroupCommand::Remove { group, member } => {
            let (client, _) = open_client(dir).await?;
            let info = resolve_group(&client, &group).await?;
            let who = resolve_member(&info, &member)?;
            client
                .remove_group_member(&info.id, &who)
                .await
                .map_err(|e| e.to_string())?;
            finish_group_change(&client, format!("removed {} from {:?}", short(&who), info.title)).await;
        }
        GroupCommand::Rename { group, title } => {
            let (client, _) = open_client(dir).await?;
            let info = resolve_group(&client, &group).await?;
            client.rename_group(&info.id, &title).await.map_err(|e| e.to_string())?;
            finish_group_change(&client, format!("renamed {:?} to {title:?}", info.title)).await;
        }
        GroupCommand::Admin { group, member, revoke } => {
            let (client, _) = open_client(dir).await?;
            let info = resolve_group(&client, &group).await?;
            let who = resolve_member(&info, &member)?;
            client
                .set_group_admin(&info.id, &who, !revoke)
                .await
                .map_err(|e| e.to_string())?;
            let role = if revoke { "a member" } else { "an admin" };
            finish_group_change(&client, format!("{} is now {role} of {:?}", short(&who), info.title)).await;
        }
        GroupCommand::Leave { group } => {
            let (client, _) = open_client(dir).await?;
            let info = resolve_group(&client, &group).await?;
            client.leave_group(&info.id).await.map_err(|e| e.to_string())?;
            finish_group_change(&client, format!("left {:?}", info.title)).await;
        }
        GroupCommand::List => {
            let client = open_offline(dir).await?;
            let me = client.account_id();
            for g in client.groups().await {
                let state = if g.active {
                    "active"
                } else {
                    "inactive: left or removed"
                };
                out!("group {} {:?} ({state}, version {})", g.id, g.title, g.version);
                for (a, role) in &g.members {
                    let role = match role {
                        Role::Admin => "admin ",
                        Role::Member => "member",
                    };
                    let this = if *a == me { " (me)" } else { "" };
                    out!("  {role} {a}{this}");
                }
            }
        }
        GroupCommand::Send { group, text } => {
            let (client, mut events) = open_client(dir).await?;
            let info = resolve_group(&client, &group).await?;
            let m = client
                .send_group_text(&info.id, &text.join(" "))
                .await
                .map_err(|e| e.to_string())?;
            finish_send(&client, &mut events, m.id).await?;
        }
        GroupCommand::Chat { group } => {
            let (client, mut events) = open_client(dir).await?;
            let info = resolve_group(&client, &group).await?;
            if !info.active {
                client.shutdown().await;
                return Err(format!("this account is no longer a member of {:?}", info.title));
            }
            let history = client
                .group_messages(&info.id, Page::default())
                .await
                .map_err(|e| e.to_string())?;
            let banner = format!("chatting in {:?} ({})", info.title, n_members(info.members.len()));
            let done = chat(&client, &mut events, ChatWith::Group(info.id), history, banner).await;
            client.shutdown().await;
            done?;
        }
        GroupCommand::Messages { group } => {
            let client = open_offline(dir).await?;
            let info = resolve_group(&client, &group).await?;
            let page = Page {
                before: None,
                limit: 1000,
            };
            let names = names(&client).await;
            for m in client.group_messages(&info.id, page).await.map_err(|e| e.to_string())? {
                out!("{}", show(&m, Some(&info.title), &names));
            }
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
