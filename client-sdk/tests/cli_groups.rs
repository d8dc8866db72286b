//! The `sotto` CLI's group commands, run as a user runs them: three profiles and a
//! `sotto-relay` process on a free port. Alice creates a group with Bob and Carol (from
//! their links, so they become her contacts); every member writes (`group send`, `group
//! chat`) and reads (`receive`, which names the group by its title, and `group
//! messages`); Bob and Carol, who are not each other's contacts, read each other through
//! the group. `group list` shows the members, the admin and whether the group is active.
//! Alice renames the group and removes Carol: Carol learns it and reads nothing sent
//! afterwards. Bob leaves. Errors are messages on stderr and a failure status.
//!
//! The chat commands, the same way: nicknames shown instead of ids, a reaction, an edit, a
//! reply with its quote, a timer, a delete for everyone, ticks (✓ sent, ✓✓ delivered,
//! ✓✓ read), chat-mode `/` commands, block and unblock, and a message request declined.
#![cfg(feature = "native")]

mod common;

use common::{RECEIVE_ATTEMPTS, Relay, Sotto, relay_binary, sotto_binary};

fn short(id: &str) -> &str {
    &id[..8]
}

#[test]
fn groups_from_the_command_line() {
    let bin = sotto_binary();
    let relay_bin = relay_binary(bin.parent().unwrap());
    let work = std::env::temp_dir().join(format!("sotto-cli-groups-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let relay = Relay::start(&relay_bin, &work);
    let sotto = Sotto {
        bin,
        home: work.join("profiles"),
        relay_log: relay.log.clone(),
    };

    // Three accounts (`init` waits for the relay to come up).
    let mut link = std::collections::HashMap::new();
    let mut id = std::collections::HashMap::new();
    for who in ["alice", "bob", "carol"] {
        sotto.ok(who, &["init", "--relay", &relay.url]);
        let l = sotto.ok(who, &["whoami", "--link"]).trim().to_owned();
        id.insert(who, l["sotto:".len()..l.find('.').unwrap()].to_owned());
        link.insert(who, l);
    }

    // Alice creates the group from Bob's and Carol's links.
    let created = sotto.ok("alice", &["group", "create", "team", &link["bob"], &link["carol"]]);
    let group = created
        .lines()
        .find_map(|l| l.strip_prefix("group "))
        .unwrap_or_else(|| panic!("no group id in {created:?}"))
        .to_owned();
    assert_eq!(group.len(), 64, "{group}");
    assert!(group.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert!(created.contains("created \"team\" with 3 members"), "{created}");
    // Both are Alice's contacts now.
    let contacts = sotto.ok("alice", &["contacts"]);
    assert!(
        contacts.contains(&id["bob"]) && contacts.contains(&id["carol"]),
        "{contacts}"
    );

    // Bob and Carol learn of it from `receive`, and list it.
    for who in ["bob", "carol"] {
        sotto.receive_until(who, "(group \"team\"");
        let list = sotto.ok(who, &["group", "list"]);
        assert!(
            list.contains(&format!("group {group} \"team\" (active, version ")),
            "{list}"
        );
        assert!(list.contains(&format!("  admin  {}\n", id["alice"])), "{list}");
        assert!(list.contains(&format!("  member {} (me)\n", id[who])), "{list}");
    }

    // Alice writes by title; Bob and Carol read it with the group's title.
    assert!(
        sotto
            .ok("alice", &["group", "send", "team", "hello", "team"])
            .contains("sent")
    );
    for who in ["bob", "carol"] {
        let line = format!("[#team] {}: hello team", short(&id["alice"]));
        sotto.receive_until(who, &line);
    }

    // Carol names the group by the start of its id and writes to Bob, who is no contact
    // of hers (his access key came through the group).
    assert!(!sotto.ok("carol", &["contacts"]).contains(&id["bob"]));
    assert!(
        sotto
            .ok("carol", &["group", "send", &group[..10], "hi from carol"])
            .contains("sent")
    );
    let line = format!("[#team] {}: hi from carol", short(&id["carol"]));
    sotto.receive_until("bob", &line);
    sotto.receive_until("alice", &line);

    // Bob writes from `group chat`: it prints the history, sends each line, and (with
    // SOTTO_CHAT_EXIT_ON_EOF) exits once its outbox is empty after the end of input.
    let chat = sotto.run_with(
        "bob",
        &["group", "chat", "team"],
        "from bob's chat\n",
        &[("SOTTO_CHAT_EXIT_ON_EOF", "1")],
    );
    assert!(chat.ok, "group chat failed: {}\n{}", chat.stdout, chat.stderr);
    assert!(
        chat.stdout.contains("-- chatting in \"team\" (3 members)"),
        "{}",
        chat.stdout
    );
    assert!(
        chat.stdout
            .contains(&format!("[#team] {}: hello team", short(&id["alice"]))),
        "{}",
        chat.stdout
    );
    let line = format!("[#team] {}: from bob's chat", short(&id["bob"]));
    sotto.receive_until("alice", &line);
    sotto.receive_until("carol", &line);

    // Everyone's history, oldest first.
    let history = sotto.ok("alice", &["group", "messages", "team"]);
    let texts: Vec<&str> = history
        .lines()
        .map(|l| {
            let text = l.split_once(": ").unwrap().1;
            [" ✓✓ read", " ✓✓", " ✓"]
                .iter()
                .find_map(|t| text.strip_suffix(t))
                .unwrap_or(text)
        })
        .collect();
    assert_eq!(texts, ["hello team", "hi from carol", "from bob's chat"], "{history}");
    assert!(history.starts_with("[#team] me: hello team"), "{history}");

    // Alice renames the group; the members see the new title.
    assert!(
        sotto
            .ok("alice", &["group", "rename", "team", "crew"])
            .contains("renamed \"team\" to \"crew\"")
    );
    sotto.receive_until("bob", "(group \"crew\"");

    // Only an admin changes the group: Bob's attempt fails before anything is sent.
    let refused = sotto.fails("bob", &["group", "remove", "crew", &id["carol"]]);
    assert!(refused.contains("admin"), "{refused}");

    // Alice removes Carol (by the start of her id); Carol learns it.
    let removed = sotto.ok("alice", &["group", "remove", "crew", short(&id["carol"])]);
    assert!(
        removed.contains(&format!("removed {} from \"crew\"", short(&id["carol"]))),
        "{removed}"
    );
    sotto.receive_until("carol", "this account is no longer a member");
    let list = sotto.ok("carol", &["group", "list"]);
    assert!(list.contains("\"crew\" (inactive: left or removed"), "{list}");
    sotto.receive_until("bob", "(group \"crew\"");

    // What follows reaches Bob, not Carol; Carol can no longer write.
    assert!(
        sotto
            .ok("alice", &["group", "send", "crew", "after carol"])
            .contains("sent")
    );
    sotto.receive_until("bob", &format!("[#crew] {}: after carol", short(&id["alice"])));
    let carol_got = sotto.ok("carol", &["receive"]);
    assert!(!carol_got.contains("after carol"), "{carol_got}");
    let carol_history = sotto.ok("carol", &["group", "messages", &group]);
    assert_eq!(carol_history.lines().count(), 3, "{carol_history}");
    assert!(!carol_history.contains("after carol"), "{carol_history}");
    sotto.fails("carol", &["group", "send", "crew", "let me in"]);

    // Bob leaves; Alice is then alone in the group.
    assert!(sotto.ok("bob", &["group", "leave", "crew"]).contains("left \"crew\""));
    sotto.receive_until("alice", "(group \"crew\"");
    let list = sotto.ok("alice", &["group", "list"]);
    assert!(list.contains(&format!("  admin  {} (me)\n", id["alice"])), "{list}");
    assert!(!list.contains(&id["bob"]) && !list.contains(&id["carol"]), "{list}");
    assert!(
        sotto
            .ok("bob", &["group", "list"])
            .contains("(inactive: left or removed")
    );

    // Errors name what is wrong.
    assert!(
        sotto
            .fails("alice", &["group", "send", "nosuch", "hi"])
            .contains("no group matches")
    );
    assert!(
        sotto
            .fails("alice", &["group", "messages", &"0".repeat(64)])
            .contains("no group")
    );
    let not_member = sotto.fails("alice", &["group", "remove", "crew", &id["bob"]]);
    assert!(not_member.contains("is not a member"), "{not_member}");

    drop(relay);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn chat_commands_from_the_command_line() {
    let bin = sotto_binary();
    let relay_bin = relay_binary(bin.parent().unwrap());
    let work = std::env::temp_dir().join(format!("sotto-cli-chat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let relay = Relay::start(&relay_bin, &work);
    let sotto = Sotto {
        bin,
        home: work.join("profiles"),
        relay_log: relay.log.clone(),
    };
    let mut link = std::collections::HashMap::new();
    let mut id = std::collections::HashMap::new();
    for who in ["alice", "bob", "carol"] {
        sotto.ok(who, &["init", "--relay", &relay.url]);
        let l = sotto.ok(who, &["whoami", "--link"]).trim().to_owned();
        id.insert(who, l["sotto:".len()..l.find('.').unwrap()].to_owned());
        link.insert(who, l);
    }
    sotto.ok("alice", &["add", &link["bob"]]);
    sotto.ok("bob", &["add", &link["alice"]]);

    // Names instead of ids.
    assert!(
        sotto
            .ok("bob", &["nickname", &id["alice"], "Alice"])
            .contains("shown as \"Alice\"")
    );
    assert!(
        sotto
            .ok("alice", &["nickname", &id["bob"], "Bob"])
            .contains("shown as \"Bob\"")
    );
    assert!(sotto.ok("alice", &["send", "Bob", "hello"]).contains("sent"));
    sotto.receive_until("bob", "[Alice] Alice: hello");

    // A reaction (1: the newest message), and the ticks on Alice's side.
    assert!(sotto.ok("bob", &["react", "Alice", "1", "👍"]).contains("reacted 👍"));
    sotto.receive_until("alice", "(Bob reacted 👍 to \"hello\")");
    let mine = sotto.ok("alice", &["messages", "Bob"]);
    assert!(mine.contains("[Bob] me: hello [👍 Bob] ✓"), "{mine}");

    // An edit, then a reply quoting it.
    assert!(
        sotto
            .ok("alice", &["edit", "Bob", "1", "hello again"])
            .contains("edited")
    );
    sotto.receive_until("bob", "[Alice] Alice: hello again (edited)");
    assert!(
        sotto
            .ok("bob", &["reply", "Alice", "1", "welcome", "back"])
            .contains("sent")
    );
    sotto.receive_until("alice", "[Bob] Bob: (re me: \"hello again\") welcome back");

    // A timer, then a delete for everyone by id.
    assert!(
        sotto
            .ok("alice", &["timer", "Bob", "3600"])
            .contains("disappearing messages: 1h")
    );
    sotto.receive_until("bob", "Alice: (set disappearing messages to 1h)");
    let with_ids = sotto.ok("alice", &["messages", "Bob", "--ids"]);
    let hello = with_ids
        .lines()
        .find(|l| l.contains("me: hello again"))
        .unwrap_or_else(|| panic!("{with_ids}"));
    let hello_id = hello.split(' ').next().unwrap().to_owned();
    assert!(
        sotto
            .ok("alice", &["delete", "Bob", &hello_id])
            .contains("deleted for everyone")
    );
    sotto.receive_until("bob", "(Alice deleted a message)");
    assert!(sotto.ok("bob", &["messages", "Alice"]).contains("Alice: (deleted)"));
    assert!(
        sotto
            .ok("alice", &["timer", "Bob", "0"])
            .contains("disappearing messages: off")
    );

    // Chat mode: history with names, `/` commands, and read ticks going back (texts get
    // read receipts; timer changes and deleted messages do not).
    assert!(sotto.ok("alice", &["send", "Bob", "still", "there?"]).contains("sent"));
    sotto.receive_until("bob", "[Alice] Alice: still there?");
    let chat = sotto.run_with(
        "bob",
        &["chat", "Alice"],
        "/react 1 ❤\n/nick Alice L.\nfrom the chat\n/help\n",
        &[("SOTTO_CHAT_EXIT_ON_EOF", "1")],
    );
    assert!(chat.ok, "chat failed: {}\n{}", chat.stdout, chat.stderr);
    assert!(chat.stdout.contains("-- chatting with Alice;"), "{}", chat.stdout);
    assert!(chat.stdout.contains("(reacted ❤)"), "{}", chat.stdout);
    assert!(chat.stdout.contains("(nickname Alice L.)"), "{}", chat.stdout);
    assert!(chat.stdout.contains("commands: /reply"), "{}", chat.stdout);
    sotto.receive_until("alice", "[Bob] Bob: from the chat");
    // Bob's chat marked Alice's messages read: the receipt reaches her.
    let mut read = String::new();
    for _ in 0..RECEIVE_ATTEMPTS {
        sotto.ok("alice", &["receive"]);
        read = sotto.ok("alice", &["messages", "Bob"]);
        if read.contains("✓✓ read") {
            break;
        }
    }
    assert!(read.contains("✓✓ read"), "{read}");

    // A profile name: contacts see it where they set no nickname.
    assert!(sotto.ok("alice", &["profile"]).contains("no profile name set"));
    assert!(
        sotto
            .ok("alice", &["profile", "Alice", "A."])
            .contains("profile name set to \"Alice A.\"")
    );
    assert!(sotto.ok("alice", &["profile"]).contains("profile name \"Alice A.\""));
    assert!(sotto.ok("bob", &["nickname", "Alice L."]).contains("nickname of"));
    sotto.receive_until("bob", &format!("({} is now called Alice A.)", short(&id["alice"])));
    assert!(
        sotto
            .ok("bob", &["messages", "Alice A."])
            .contains("[Alice A.] Alice A.: ")
    );

    // Block: sending is refused until unblocked.
    assert!(sotto.ok("alice", &["block", "Bob"]).contains("blocked Bob"));
    assert!(sotto.fails("alice", &["send", "Bob", "blocked?"]).contains("blocked"));
    assert!(sotto.ok("alice", &["unblock", "Bob"]).contains("unblocked Bob"));

    // A message request (Carol added Alice by id, without her access key), declined.
    sotto.ok("carol", &["send", &id["alice"], "may I?"]);
    let mut requests = String::new();
    for _ in 0..RECEIVE_ATTEMPTS {
        sotto.ok("alice", &["receive"]);
        requests = sotto.ok("alice", &["requests"]);
        if requests.contains(&id["carol"]) {
            break;
        }
    }
    assert!(
        requests.contains(&format!("request {} \"may I?\"", id["carol"])),
        "{requests}"
    );
    assert!(sotto.ok("alice", &["decline", &id["carol"]]).contains("declined"));
    assert!(!sotto.ok("alice", &["requests"]).contains(&id["carol"]));
    // An unknown message reference is an error.
    assert!(
        sotto
            .fails("alice", &["edit", "Bob", "zzzz", "x"])
            .contains("names no message")
    );

    drop(relay);
    let _ = std::fs::remove_dir_all(&work);
}
